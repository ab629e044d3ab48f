"""ALBERT-base (E=128, H=768, 12 shared layers) MLM + SOP pretraining for real hardware (a TPU slice / GPUs).

The paper's recipe: LAMB, learning rate 1.76e-3 at batch 4096, sequence 512, 125k steps, 3125 warm-up steps.
Point `data.source` at a prepared TFDS corpus for real runs; the embedded corpus is far too small.

    python -m train --config configs/albert_base_pretrain.py --workdir gs://bucket/albert-base \
        --config.data.source=wikipedia/20230601.en --config.mesh=data=-1,fsdp=4
"""

import os

from train.experiment import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(__file__), "albert_pretrain.py"))
    with config.ignore_type():  # a preset name instead of the dict
        config.model = "albert-base-v2"
    config.data.vocab_size = 30000
    config.batch_size = 4096
    config.seq_len = 512
    config.objective.max_predictions = 20
    config.total_steps = 125_000
    config.warmup_steps = 3125
    config.learning_rate = 1.76e-3
    config.dtype = "bfloat16"
    config.remat = True
    config.log_every = 100
    config.eval_every = 5000
    config.checkpoint_every = 5000
    config.mesh = "data=-1,fsdp=1,tensor=1"
    config.rng_impl = "threefry2x32"
    return config
