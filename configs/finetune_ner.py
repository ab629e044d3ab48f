"""Fine-tuning a token-classification head (named entities): a tiny ALBERT trained from scratch on the shipped
sample sentences, where capitalised words are entities (names PER, cities LOC), scored by entity F1 (seqeval).
About a minute on a 2-core CPU.

    python -m train --config configs/finetune_ner.py --workdir /tmp/ner

Your own data: one {"tokens": [...], "tags": [...]} object a line (README "Fine-tuning"); tags are read as names
(sorted) unless config.data.labels orders them; --config.data.label_all_tokens=True labels every sub-token.
"""

import os

from jaxmodels.registry import preset
from train.data import SAMPLES
from train.experiment import base_config


def get_config():
    config = base_config(model=dict(preset("albert-tiny"), architectures=["AlbertForTokenClassification"],
                                    num_labels=4, classifier_dropout_prob=0.0))
    config.objective = dict(name="finetune")
    config.data.train_file = os.path.join(SAMPLES, "ner_train.jsonl")
    config.data.eval_file = os.path.join(SAMPLES, "ner_eval.jsonl")
    config.data.labels = ("O", "B-PER", "I-PER", "B-LOC")  # id order of the head's outputs
    config.data.vocab_size = 256
    config.batch_size = 16
    config.seq_len = 64
    config.total_steps = 200
    config.log_every = 20
    config.eval_every = 50
    config.checkpoint_every = 50
    config.learning_rate = 2e-3
    config.warmup_steps = 20
    config.rng_impl = "rbg"
    return config
