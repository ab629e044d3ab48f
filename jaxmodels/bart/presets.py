"""Named BART model configs (HF ``config.json`` dicts) that experiment configs can name as ``config.model``."""

# facebook/bart-base and facebook/bart-large shapes; everything else is BartConfig's default.
_BASE = dict(
    model_type="bart", architectures=["BartForConditionalGeneration"], vocab_size=50265, max_position_embeddings=1024,
    d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12,
    encoder_ffn_dim=3072, decoder_ffn_dim=3072,
)

PRESETS = {
    "bart-base": _BASE,
    "bart-large": {**_BASE, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
                   "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096,
                   "decoder_ffn_dim": 4096},
    # Small enough for a CPU test: two layers each side of width 64.
    "bart-tiny": {**_BASE, "vocab_size": 256, "max_position_embeddings": 128, "d_model": 64, "encoder_layers": 2,
                  "decoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
                  "encoder_ffn_dim": 128, "decoder_ffn_dim": 128},
}
