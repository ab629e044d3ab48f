"""The quickstart main job: a small Reformer causal LM (local + LSH attention, axial positions) on the
embedded King James Bible, printing a generated sample at the end. A few minutes on a 2-core CPU.

    python -m train                      # this config, into ./runs/quickstart
"""

from jaxmodels.registry import preset
from train.experiment import base_config


def get_config():
    # The preset as a dict, so `--config.model.<field>=` can change any of its fields.
    config = base_config(model=dict(preset("reformer-quickstart"), vocab_size=256))
    config.objective = dict(name="causal_lm")
    # 256 pieces (letters and short fragments): a cheap softmax, and within-word structure a small model
    # picks up in a few hundred steps, which is what gets a 2-core machine well below the unigram entropy.
    config.data.vocab_size = 256
    config.batch_size = 16
    config.seq_len = 128  # = prod(axial_pos_shape), a multiple of both chunk lengths
    config.total_steps = 300
    config.log_every = 10
    config.eval_every = 100
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
