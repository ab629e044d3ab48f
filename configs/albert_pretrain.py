"""ALBERT pretraining (masked LM + sentence-order prediction) on the embedded King James Bible.

A small model that trains on one CPU host in tens of minutes; `albert_base_pretrain.py` is the real-size
version of the same recipe.

    python -m train --config configs/albert_pretrain.py --workdir runs/albert
"""

from train.experiment import base_config


def get_config():
    config = base_config(model=dict(
        model_type="albert", architectures=["AlbertForPreTraining"], vocab_size=8000, embedding_size=64,
        hidden_size=256, num_hidden_layers=4, num_hidden_groups=1, num_attention_heads=4, intermediate_size=1024,
        hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=128, type_vocab_size=2,
    ))
    # ALBERT: 15% of tokens, at most 20 per 512-token sequence (scaled to our length), n-gram masking omitted.
    config.objective = dict(name="mlm_sop", mask_prob=0.15, max_predictions=20)
    config.data.vocab_size = 8000
    config.batch_size = 32
    config.seq_len = 128
    config.total_steps = 5000
    config.optimizer = "lamb"
    config.learning_rate = 1.76e-3 * 32 / 4096 * 8  # ALBERT's LAMB rate, scaled down to a small batch
    config.warmup_steps = 500
    config.schedule = "linear"
    config.weight_decay = 0.01
    return config
