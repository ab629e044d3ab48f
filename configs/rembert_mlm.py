"""RemBERT masked-LM pretraining on the embedded King James Bible: a small RemBERT (`rembert-small`: narrow 64-wide
input embeddings projected to 128, a 192-wide output embedding before the untied vocabulary projection) that trains
for minutes on one CPU host.

    python -m train --config configs/rembert_mlm.py --workdir runs/rembert
    python -m train.aot --config configs/rembert_mlm.py --topology v5e:4x4 --config.model=rembert-base ...
"""

from train.experiment import base_config


def get_config():
    config = base_config(model="rembert-small")
    # BERT masking: 15% of tokens, at most 20 per 128-token row.
    config.objective = dict(name="mlm", mask_prob=0.15, max_predictions=20)
    config.data.vocab_size = 8000
    config.batch_size = 16
    config.seq_len = 128
    config.total_steps = 600
    config.log_every = 20
    config.eval_every = 500
    config.checkpoint_every = 500
    config.learning_rate = 1e-3
    config.warmup_steps = 20  # short enough that `--config.total_steps=20` (a smoke run) is valid
    config.schedule = "linear"
    config.weight_decay = 0.01
    config.rng_impl = "rbg"  # compiles much faster on CPU
    return config
