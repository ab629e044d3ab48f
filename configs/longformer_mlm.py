"""Longformer masked-LM pretraining on 4096-token windows of the embedded King James Bible.

Sliding-window attention (256 positions, 128 to each side) over whole 4096-token rows, no global tokens (masked-LM
pretraining has none, as in the Longformer paper). A small model (d=256, 4 layers) that trains on one CPU host; the
base-size shapes (`longformer-base-4096`: d=768, 12 layers, windows of 512) are the overrides under train/AOT.md.

    python -m train --config configs/longformer_mlm.py --workdir runs/longformer_mlm
"""

from jaxmodels.registry import preset
from train.experiment import base_config


def get_config():
    # The preset's dict with small shapes, so `--config.model.<field>=` can change any of them. The ids are the
    # data pipeline's: <pad>=0 (padding positions count from pad_token_id + 1), [CLS]=4, [SEP]=5.
    config = base_config(model=dict(
        preset("longformer-base-4096"), vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=1024, attention_window=256, max_position_embeddings=4098, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, pad_token_id=0, bos_token_id=4, eos_token_id=5, sep_token_id=5,
    ))
    config.objective = dict(name="mlm", mask_prob=0.15, max_predictions=640)  # 15% of a 4096-token row
    config.data.vocab_size = 8000
    config.batch_size = 2
    config.seq_len = 4096
    config.total_steps = 2000
    config.log_every = 10
    config.eval_every = 500
    config.eval_steps = 2
    config.checkpoint_every = 500
    config.optimizer = "adamw"
    config.learning_rate = 5e-4
    # Short, so that a smoke run (--config.total_steps=5) still validates (warm-up must not outlast the run).
    config.warmup_steps = 5
    config.schedule = "linear"
    config.weight_decay = 0.01
    config.rng_impl = "rbg"
    return config
