"""Named Longformer model configs (HF ``config.json`` dicts) that experiment configs can name as ``config.model``."""

# allenai/longformer-base-4096's shapes (RoBERTa-base with 4098 positions, windows of 512 in every layer). The
# vocabulary follows the tokenizer an experiment trains.
_BASE = dict(
    model_type="longformer", architectures=["LongformerForMaskedLM"], attention_window=[512] * 12,
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=4098,
    type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, sep_token_id=2,
)

PRESETS = {
    "longformer-base-4096": _BASE,
    "longformer-large-4096": {**_BASE, "attention_window": [512] * 24, "hidden_size": 1024, "num_hidden_layers": 24,
                              "num_attention_heads": 16, "intermediate_size": 4096},
    # Small enough for a CPU test: two layers of width 64, windows of 16.
    "longformer-tiny": {**_BASE, "attention_window": 16, "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 130},
}
