"""REALM pretraining at BERT-base size over the released 13.35M-block index (288-token blocks), for a TPU slice:
the shapes of `train/AOT.md`'s REALM rows. The data options are those of configs/realm_pretrain.py; point
`config.data.source` at a corpus large enough for that index.

    python -m train.aot --config configs/realm_base_pretrain.py --topology v5e:4x4
"""

import os

from train.experiment import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(__file__), "realm_pretrain.py"))
    with config.ignore_type():  # a preset name instead of the dict
        config.model = "realm-base-pretrain"
    config.data.vocab_size = 30522
    config.data.block_tokens = 288
    config.data.max_documents = 0
    config.seq_len = 64  # sentences; encoder rows are 64 + 288 + 1 tokens
    config.batch_size = 64
    config.dtype = "bfloat16"
    config.remat = True
    config.objective = dict(name="realm_pretrain", refresh_every=500, mask_token_id=4, ict_weight=0.0)
    return config
