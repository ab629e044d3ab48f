"""A Mega-chunk causal LM (the `mega-lm-base` model: d=512, 12 layers, attention in 1024-token chunks, the EMA over
the whole 2048-token row) on the embedded corpus. Sized for a TPU slice (`python -m train.aot --config
configs/mega_lm.py --topology v5e:2x2`); on a CPU, shrink it:

    python -m train --config configs/mega_lm.py --workdir runs/mega --config.model.num_hidden_layers=2 \
        --config.model.hidden_size=128 --config.seq_len=256 --config.model.chunk_size=128
"""

from jaxmodels.registry import preset
from train.experiment import base_config


def get_config():
    config = base_config(model=preset("mega-lm-base"))
    config.objective = dict(name="causal_lm")
    config.data.vocab_size = 8000
    config.seq_len = 2048
    config.batch_size = 32
    config.total_steps = 50_000
    config.optimizer = "adamw"
    config.learning_rate = 5e-4
    config.warmup_steps = 1000
    config.schedule = "cosine"
    config.weight_decay = 0.1
    config.log_every = 50
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.dtype = "bfloat16"
    config.sample_prompt = "In the beginning"
    config.sample_tokens = 64
    return config
