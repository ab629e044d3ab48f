"""BART denoising pretraining (text infilling + sentence permutation) on the embedded King James Bible.

The BART paper's best setting: each document's sentences (here its lines: one verse each) shuffled, then 30% of
the tokens masked in spans of Poisson(3) length, one `[MASK]` per span (a zero-length span inserts one); the
decoder rebuilds the original. A small model that trains on one CPU host; `model="bart-base"` with
`vocab_size=50265` and a byte-level BPE tokenizer is the real-size recipe.

    python -m train --config configs/bart_denoise.py --workdir runs/bart_denoise
"""

from train.experiment import base_config


def get_config():
    config = base_config(model=dict(
        model_type="bart", architectures=["BartForConditionalGeneration"], vocab_size=8000,
        max_position_embeddings=128, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, dropout=0.1, attention_dropout=0.0,
        activation_function="gelu",
        # train.data's special ids (<pad>=0, <s>=2, </s>=3); decoding starts with </s>, as BART's does.
        pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=3,
    ))
    config.objective = dict(name="denoising", mask_ratio=0.3, poisson_lambda=3.0, permute_sentence_ratio=1.0)
    config.data.vocab_size = 8000
    config.batch_size = 32
    config.seq_len = 128  # tokens per side: encoder and decoder
    config.total_steps = 5000
    config.log_every = 25
    config.eval_every = 500
    config.optimizer = "adamw"
    config.learning_rate = 5e-4
    config.warmup_steps = 250
    config.schedule = "linear"  # BART: polynomial (linear) decay after warm-up
    config.weight_decay = 0.01
    config.rng_impl = "rbg"
    return config
