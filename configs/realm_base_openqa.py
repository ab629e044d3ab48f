"""REALM open-QA fine-tuning at the released model's size (`realm-orqa-nq-openqa`: BERT-base embedder and reader,
searcher beam 5000 in HF, here `beam_size` retrieved blocks per question) over the 13.35M-block index (288-token
blocks), for a TPU slice: the shapes of `train/AOT.md`'s REALM open-QA row. The data options are those of
configs/realm_openqa.py; point `config.data.source` at the corpus of that index, and `config.init_from` at a
pretraining run (configs/realm_base_pretrain.py) or the released checkpoint.

    python -m train.aot --config configs/realm_base_openqa.py --topology v5e:4x4
"""

import os

from train.experiment import load_config


def get_config():
    config = load_config(os.path.join(os.path.dirname(__file__), "realm_openqa.py"))
    with config.ignore_type():  # a preset name instead of the dict
        config.model = "realm-orqa-nq-openqa"
    config.data.vocab_size = 30522
    config.data.block_tokens = 288
    config.data.max_documents = 0
    config.seq_len = 64  # questions ([CLS] q [SEP])
    config.batch_size = 64
    config.dtype = "bfloat16"
    config.remat = True
    # REALM's own fine-tuning: the retrieved top-k (the exact marginal over 13.35M blocks is not affordable), with
    # a frozen index as ORQA and REALM fine-tune (0 = never refreshed).
    config.objective = dict(name="realm_openqa", beam_size=16, refresh_every=0, retriever_loss="beam")
    return config
