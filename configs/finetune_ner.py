"""Fine-tuning a token-classification head (named entities): a tiny ALBERT trained from scratch on the shipped
sample sentences, where capitalised words are entities (names PER, cities LOC), scored by entity F1 (seqeval).
About a minute on a 2-core CPU; entity F1 reaches 1.0.

    python -m train --config configs/finetune_ner.py --workdir /tmp/ner

Your own data: one {"tokens": [...], "tags": [...]} object a line (README "Fine-tuning"); tags are read as names
(sorted) unless config.data.labels orders them; --config.data.label_all_tokens=True labels every sub-token.
"""

import os

from train.data import SAMPLES
from train.experiment import load_config


def get_config():
    # The classification preset's model, optimizer and schedule, with a token-classification head.
    config = load_config(os.path.join(os.path.dirname(__file__), "finetune_classification.py"))
    config.model.architectures = ["AlbertForTokenClassification"]
    config.model.num_labels = 4
    config.model.classifier_dropout_prob = 0.0
    config.data.train_file = os.path.join(SAMPLES, "ner_train.jsonl")
    config.data.eval_file = os.path.join(SAMPLES, "ner_eval.jsonl")
    config.data.labels = ("O", "B-PER", "I-PER", "B-LOC")  # id order of the head's outputs
    config.seq_len = 64  # words split into several pieces with this small vocabulary
    return config
