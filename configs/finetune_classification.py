"""Fine-tuning a sequence-classification head: a tiny ALBERT trained from scratch on the shipped sample reviews
(a review's label is the polarity of its one sentiment keyword), with a SentencePiece tokenizer trained on the
file. About a minute on a 2-core CPU; eval accuracy reaches 1.0.

    python -m train --config configs/finetune_classification.py --workdir /tmp/classification

Your own data: --config.data.train_file=train.jsonl --config.data.eval_file=dev.jsonl (one {"text", "label"}
object a line; README "Fine-tuning"), --config.model.num_labels=<classes>; start from an HF checkpoint with
--config.init_from=DIR (its tokenizer is used).
"""

import os

from jaxmodels.registry import preset
from train.data import SAMPLES
from train.experiment import base_config


def get_config():
    config = base_config(model=dict(preset("albert-tiny"), architectures=["AlbertForSequenceClassification"],
                                    num_labels=2))
    config.objective = dict(name="finetune")  # the head's kind, from its class name
    config.data.train_file = os.path.join(SAMPLES, "classification_train.jsonl")
    config.data.eval_file = os.path.join(SAMPLES, "classification_eval.jsonl")
    config.data.vocab_size = 256
    config.batch_size = 16
    config.seq_len = 32
    config.total_steps = 200
    config.log_every = 20
    config.eval_every = 50
    config.checkpoint_every = 50
    config.learning_rate = 2e-3
    config.warmup_steps = 20
    config.rng_impl = "rbg"
    return config
