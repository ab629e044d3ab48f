"""Fine-tuning a multiple-choice head: a tiny ALBERT trained from scratch on the shipped sample questions, whose
right choice (of four) is the noun the question repeats. A few minutes on a 2-core CPU.

    python -m train --config configs/finetune_multiple_choice.py --workdir /tmp/choice

Your own data: one {"text", "choices": [...], "label": <index of the right choice>} object a line (README
"Fine-tuning"); every row has the same number of choices.
"""

import os

from jaxmodels.registry import preset
from train.data import SAMPLES
from train.experiment import base_config


def get_config():
    config = base_config(model=dict(preset("albert-tiny"), architectures=["AlbertForMultipleChoice"]))
    config.objective = dict(name="finetune")
    config.data.train_file = os.path.join(SAMPLES, "choice_train.jsonl")
    config.data.eval_file = os.path.join(SAMPLES, "choice_eval.jsonl")
    config.data.vocab_size = 256
    config.batch_size = 16
    config.seq_len = 24
    config.total_steps = 300
    config.log_every = 20
    config.eval_every = 100
    config.checkpoint_every = 100
    config.learning_rate = 2e-3
    config.warmup_steps = 30
    config.rng_impl = "rbg"
    return config
