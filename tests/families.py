"""Per family: a tiny HF config, its masked-LM and sequence-classification heads, and fields of each type to misuse.

Shared by the test modules that cover every family the same way (the bad-input catalogue, checkpoints); a new
family adds its entry here and is covered by all of them.
"""

FAMILIES = {
    "albert": dict(
        config=dict(model_type="albert", vocab_size=40, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=24, max_position_embeddings=16),
        mlm="AlbertForMaskedLM", cls="AlbertForSequenceClassification", bool_field=None,
        int_field="hidden_size", float_field="layer_norm_eps", act_field="hidden_act"),
    "reformer": dict(
        config=dict(model_type="reformer", vocab_size=40, hidden_size=8, num_attention_heads=2, attention_head_size=4,
                    feed_forward_size=12, attn_layers=["local", "local"], local_attn_chunk_length=4,
                    axial_pos_embds=False, max_position_embeddings=16, is_decoder=False),
        mlm="ReformerForMaskedLM", cls="ReformerForSequenceClassification", bool_field="axial_pos_embds",
        int_field="hidden_size", float_field="layer_norm_eps", act_field="hidden_act"),
    "rembert": dict(
        config=dict(model_type="rembert", vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    input_embedding_size=8, output_embedding_size=12, intermediate_size=24,
                    max_position_embeddings=16),
        mlm="RemBertForMaskedLM", cls="RemBertForSequenceClassification", bool_field="is_decoder",
        int_field="hidden_size", float_field="layer_norm_eps", act_field="hidden_act"),
    "mega": dict(
        config=dict(model_type="mega", vocab_size=40, hidden_size=8, num_hidden_layers=1, intermediate_size=12,
                    ema_projection_size=2, shared_representation_size=4, nffn_hidden_size=12, max_positions=16),
        mlm="MegaForMaskedLM", cls="MegaForSequenceClassification", bool_field="bidirectional",
        int_field="hidden_size", float_field="dropout_prob", act_field="activation"),
}
NAMES = sorted(FAMILIES)
