"""Named ALBERT model configs (HF ``config.json`` dicts) that experiment configs can name as ``config.model``."""

# HF albert-base-v2 / albert-large-v2 shapes; the vocabulary follows the tokenizer an experiment trains.
_BASE = dict(
    model_type="albert", architectures=["AlbertForPreTraining"], vocab_size=30000, embedding_size=128,
    hidden_size=768, num_hidden_layers=12, num_hidden_groups=1, num_attention_heads=12, intermediate_size=3072,
    inner_group_num=1, hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    max_position_embeddings=512, type_vocab_size=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
)

PRESETS = {
    "albert-base-v2": _BASE,
    "albert-large-v2": {**_BASE, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                        "intermediate_size": 4096},
    # Small enough for a CPU test: two shared layers of width 64.
    "albert-tiny": {**_BASE, "architectures": ["AlbertForMaskedLM"], "vocab_size": 256, "embedding_size": 32,
                    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                    "max_position_embeddings": 128},
}
