"""A character-level Reformer LM at 64K tokens per sequence: the paper's enwik8 setting (the 12-layer d=1024
`reformer-enwik8` model, local + LSH attention, 4 hash rounds), on the bytes of the embedded corpus. For a TPU
slice with 32 GiB chips or more: one 64K row needs ~16.3 GiB per chip, just over a v5e chip's 16 GiB (train/AOT.md;
check with `python -m train.aot --config configs/reformer_enwik8.py --topology v4:2x2x1`). On a CPU, shrink it:

    python -m train --config configs/reformer_enwik8.py --workdir runs/enwik8 \
        --config.model.attn_layers='["local","lsh"]' --config.batch_size=1
"""

from jaxmodels.registry import preset
from train.experiment import base_config


def get_config():
    config = base_config(model=preset("reformer-enwik8"))
    config.objective = dict(name="causal_lm")
    config.data.tokenizer = "bytes"  # UTF-8 bytes: a character-level model, no tokenizer to train
    config.data.vocab_size = 263
    config.seq_len = 65536  # = prod(axial_pos_shape): Reformer trains at its full axial length
    config.batch_size = 8
    config.total_steps = 100_000
    config.optimizer = "adafactor"
    config.learning_rate = 1e-3
    config.warmup_steps = 1000
    config.schedule = "cosine"
    config.weight_decay = 0.0
    config.log_every = 50
    config.eval_every = 2000
    config.eval_steps = 2
    config.checkpoint_every = 1000
    config.dtype = "bfloat16"
    config.mesh = "data=-1"
    config.sample_prompt = "In the beginning"
    config.sample_tokens = 256
    return config
