"""Fine-tuning an extractive question-answering head: a tiny MEGA trained from scratch on the shipped sample
contexts, whose answer is the word after "the code is"; contexts longer than a row are read in windows
(config.data.doc_stride), answers mapped back to the context's characters and scored by SQuAD exact match / F1.
About a minute on a 2-core CPU; exact match reaches 100. (MEGA's moving average reads "the word after the marker"
at once; a tiny ALBERT from scratch takes far longer to learn where a word stands.)

    python -m train --config configs/finetune_qa.py --workdir /tmp/qa

Your own data: one {"question", "context", "answers": {"text": [...], "answer_start": [...]}} object a line
(SQuAD's fields; README "Fine-tuning").
"""

import os

from train.data import SAMPLES
from train.experiment import load_config


def get_config():
    # The classification preset's optimizer and schedule, with a MEGA question-answering model.
    config = load_config(os.path.join(os.path.dirname(__file__), "finetune_classification.py"))
    with config.ignore_type():
        config.model = dict(
            model_type="mega", architectures=["MegaForQuestionAnswering"], vocab_size=256, hidden_size=32,
            num_hidden_layers=2, intermediate_size=64, ema_projection_size=4, shared_representation_size=16,
            nffn_hidden_size=64, max_positions=64, pad_token_id=0, dropout_prob=0.0, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
    config.data.train_file = os.path.join(SAMPLES, "qa_train.jsonl")
    config.data.eval_file = os.path.join(SAMPLES, "qa_eval.jsonl")
    config.data.doc_stride = 16
    config.seq_len = 48
    return config
