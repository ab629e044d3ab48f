"""Defaults of every experiment key; experiment files start from `base_config()` here and change what differs.

Not an experiment itself (it names no model). `train/experiment.py` validates the result: unknown keys and bad
values fail at start-up with the key named.
"""

import ml_collections


def base_config(model=""):
    """`model`: an HF-style config dict (model_type, architectures, fields) or a name from configs/presets.py.

    Its type is fixed here (ml_collections is type-safe), so a file switching between a dict and a preset name
    does it inside `config.ignore_type()`.
    """
    config = ml_collections.ConfigDict()
    config.model = model
    # Objective name from train.objectives plus its options, e.g. dict(name="mlm", mask_prob=0.15).
    config.objective = ml_collections.ConfigDict({"name": "causal_lm"})
    config.data = ml_collections.ConfigDict(dict(
        source="kjv",          # "kjv", a local text path, or a prepared TFDS name
        vocab_size=8000,       # SentencePiece pieces trained on the source on first use
        tokenizer="",          # a .model path instead of training one
        data_dir="",           # TFDS data dir ("" = TFDS default)
        cache_dir="",          # tokenizer cache ("" = ~/.cache/jaxmodels/sentencepiece)
        eval_split="validation",
        shards=0,              # document shards making each global batch (0 = one per process); keep it
                               # fixed to get the same batches, and resume, under any number of processes
    ))
    config.batch_size = 8      # global batch (rows per optimizer step)
    config.seq_len = 128
    config.total_steps = 1000
    config.log_every = 50
    config.eval_every = 500    # 0 disables evaluation
    config.eval_steps = 8
    config.checkpoint_every = 500
    config.keep_checkpoints = 3
    config.seed = 0
    config.rng_impl = "threefry2x32"  # "rbg" compiles much faster on CPU; both resume exactly
    config.optimizer = "adamw"  # adamw | lamb | adafactor | sgd
    config.learning_rate = 1e-3
    config.warmup_steps = 100
    config.schedule = "cosine"  # cosine | linear | constant (after warm-up)
    config.end_learning_rate_factor = 0.0
    config.weight_decay = 0.01
    config.b1 = 0.9
    config.b2 = 0.999
    config.eps = 1e-6
    config.grad_clip_norm = 1.0  # 0 disables clipping
    config.grad_accum_steps = 1  # micro-batches per optimizer step (batch_size must divide)
    config.mesh = "data=-1"      # axes data/fsdp/sequence/tensor; -1 fills the rest of the devices
    config.axis_rules = "default"  # logical -> mesh axis rules: a name from configs/axis_rules.py RULE_SETS
    config.dtype = "float32"     # compute dtype; params stay float32
    config.remat = False
    config.init_from = ""        # an HF checkpoint directory to start from
    config.async_checkpointing = True
    config.sample_prompt = ""    # causal LMs: text to continue at the end of the run ("" = none)
    config.sample_tokens = 32
    return config
