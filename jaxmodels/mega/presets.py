"""Named MEGA model configs (HF ``config.json`` dicts) that experiment configs can name as ``config.model``."""

PRESETS = {
    # A Mega-chunk causal LM of the paper's language-modelling kind (wikitext-103 used d=1024, 16 layers): d=512,
    # 12 layers, attention in chunks of 1024 with the EMA over the whole sequence, rotary bias, softmax.
    "mega-lm-base": dict(
        model_type="mega", architectures=["MegaForCausalLM"], is_decoder=True, bidirectional=False,
        vocab_size=8000, hidden_size=512, num_hidden_layers=12, intermediate_size=1024, ema_projection_size=16,
        shared_representation_size=128, nffn_hidden_size=1024, use_chunking=True, chunk_size=1024,
        max_positions=1024, attention_activation="softmax", relative_positional_bias="rotary",
        normalization_type="scalenorm", normalize_before_mega=True, normalize_before_ffn=True, dropout_prob=0.1,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, nffn_activation_dropout_prob=0.1,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    ),
}
