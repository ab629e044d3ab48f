"""Fine-tuning an encoder-decoder on source -> target pairs (summarisation-style): a tiny BART trained from scratch
on the shipped sample pairs, whose target is the source's words in reverse order, with a SentencePiece tokenizer
trained on the file. Evaluation decodes the eval sources by beam search (config.data.num_beams) and scores them
by ROUGE-L (Google's rouge-score) and exact match: about a minute on a 2-core CPU, both 100 at step 300 (measured
on one CPU device: ROUGE-L 87 / 99.8 / 100 and exact match 41 / 99 / 100 at steps 100 / 200 / 300). The weights
start at std 0.1 (model.init_std, about 1/sqrt(d_model); BART's 0.02 is for d_model=768): at 0.02 this narrow
model's attention logits start near zero, and its loss sat at the words' frequencies for 400-600 steps (at lr
1e-3; 3e-3 alone did not shorten it) before the decoder found which source word to read.

    python -m train --config configs/finetune_seq2seq.py --workdir /tmp/seq2seq

Your own data: one {"source", "target"} object a line (or a CSV with those columns; README "Fine-tuning"); targets
are cut to config.data.max_target_length tokens. From an HF checkpoint: --config.init_from=DIR (its tokenizer is
used, and config.model only needs what changes).
"""

import os

from train.data import SAMPLES
from train.experiment import load_config


def get_config():
    # The classification preset's optimizer and schedule, with a BART conditional-generation model.
    config = load_config(os.path.join(os.path.dirname(__file__), "finetune_classification.py"))
    with config.ignore_type():
        # The special ids are the trained SentencePiece tokenizer's: <pad> 0, [CLS] 4 starts and [SEP] 5 ends
        # every text; the decoder starts from [SEP], as BART's from </s>.
        config.model = dict(
            model_type="bart", architectures=["BartForConditionalGeneration"], vocab_size=256,
            max_position_embeddings=64, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, dropout=0.0, init_std=0.1,
            pad_token_id=0, bos_token_id=4, eos_token_id=5, decoder_start_token_id=5, forced_eos_token_id=5)
    config.data.train_file = os.path.join(SAMPLES, "reverse_train.jsonl")
    config.data.eval_file = os.path.join(SAMPLES, "reverse_eval.jsonl")
    config.data.max_target_length = 16
    config.data.num_beams = 4
    config.seq_len = 16
    config.learning_rate = 5e-3
    config.total_steps = 300
    config.eval_every = 100
    config.checkpoint_every = 100
    config.warmup_steps = 20
    return config
