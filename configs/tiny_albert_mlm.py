"""A few steps of masked LM on a tiny ALBERT: the CLI's end-to-end test config (seconds on a CPU).

    python -m train --config configs/tiny_albert_mlm.py --workdir /tmp/tiny
"""

import os

from train.experiment import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(__file__), "albert_pretrain.py"))
    with config.ignore_type():  # a preset name instead of the dict
        config.model = "albert-tiny"
    config.objective = dict(name="mlm", mask_prob=0.15, max_predictions=8)
    config.data.vocab_size = 256
    config.batch_size = 4
    config.seq_len = 32
    config.total_steps = 6
    config.log_every = 1
    config.eval_every = 3
    config.eval_steps = 1
    config.checkpoint_every = 2
    config.optimizer = "adamw"
    config.learning_rate = 1e-3
    config.warmup_steps = 2
    config.rng_impl = "rbg"
    return config
