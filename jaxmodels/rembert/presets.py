"""Named RemBERT model configs (HF ``config.json`` dicts) that experiment configs can name as ``config.model``."""

# google/rembert's shapes (HF RemBertConfig defaults): 32 layers of width 1152, 250,300 pieces.
_BASE = dict(
    model_type="rembert", architectures=["RemBertForMaskedLM"], vocab_size=250300, hidden_size=1152,
    num_hidden_layers=32, num_attention_heads=18, input_embedding_size=256, output_embedding_size=1664,
    intermediate_size=4608, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    classifier_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
    pad_token_id=0, bos_token_id=312, eos_token_id=313,
)

PRESETS = {
    "rembert-base": _BASE,
    # Trains for minutes on a CPU (configs/rembert_mlm.py): the same narrow-in / wide-out embedding shape.
    "rembert-small": {**_BASE, "vocab_size": 8000, "hidden_size": 128, "num_hidden_layers": 4,
                      "num_attention_heads": 4, "input_embedding_size": 64, "output_embedding_size": 192,
                      "intermediate_size": 512, "max_position_embeddings": 128},
}
