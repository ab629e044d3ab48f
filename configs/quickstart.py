"""The quickstart main job: a small Reformer causal LM (local + LSH attention, axial positions) on the
embedded King James Bible, printing its held-out loss in bits per character and a generated sample at the end.
About five minutes on a 2-core CPU, to ~1.7 bits/char with a sample of mostly real words.

    python -m train                      # this config, into ./runs/quickstart
"""

from jaxmodels.registry import preset
from train.experiment import base_config


def get_config():
    # The preset as a dict, so `--config.model.<field>=` can change any of its fields.
    config = base_config(model=dict(preset("reformer-quickstart"), vocab_size=1024))
    config.objective = dict(name="causal_lm")
    # 1024 pieces (mostly whole words of this corpus, ~4 characters a piece): per character, the model then
    # learns faster than with 256 letter-sized pieces (1.75 against 2.32 bits/char after 400 steps), at the
    # price of a 4x larger softmax, and its samples are made of real words.
    config.data.vocab_size = 1024
    config.batch_size = 16
    config.seq_len = 128  # = prod(axial_pos_shape), a multiple of both chunk lengths
    config.total_steps = 600
    config.log_every = 10
    config.eval_every = 200
    config.eval_steps = 4
    config.checkpoint_every = 50
    config.optimizer = "adamw"
    config.learning_rate = 3e-3
    config.warmup_steps = 30
    config.schedule = "cosine"
    config.rng_impl = "rbg"
    config.sample_prompt = "In the beginning"
    config.sample_tokens = 48
    return config
