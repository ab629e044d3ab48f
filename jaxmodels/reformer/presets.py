"""Named Reformer model configs (HF ``config.json`` dicts) that experiment configs can name as ``config.model``."""

PRESETS = {
    # The quickstart causal LM: local + LSH attention, axial positions 8 x 16 = 128 = training length.
    "reformer-quickstart": dict(
        model_type="reformer", architectures=["ReformerModelWithLMHead"], is_decoder=True, vocab_size=1024,
        hidden_size=128, num_attention_heads=2, attention_head_size=64, feed_forward_size=256,
        attn_layers=["local", "lsh", "local", "lsh"], hidden_act="relu", hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0, local_attn_chunk_length=32, local_num_chunks_before=1,
        local_num_chunks_after=0, lsh_attn_chunk_length=32, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
        num_buckets=4, num_hashes=1, hash_seed=None, axial_pos_embds=True, axial_pos_shape=[8, 16],
        axial_pos_embds_dim=[32, 96],
        # HF's default 1.0 makes positions 50x louder than the 0.02-scale word embeddings at init, and a
        # small model then sits at the unigram loss for hundreds of steps before it starts reading tokens.
        axial_norm_std=0.02, max_position_embeddings=128, chunk_size_lm_head=0,
        layer_norm_eps=1e-12, initializer_range=0.02, pad_token_id=0, eos_token_id=3, tie_word_embeddings=False,
    ),
}

# The paper's enwik8 character-level LM (12 layers, d=1024, 8 heads x 128, FF 4096, local + LSH layers, 64K
# positions as 128 x 512 axial positions), over byte ids: `train.data`'s "bytes" tokenizer has 263 of them.
PRESETS["reformer-enwik8"] = dict(
    model_type="reformer", architectures=["ReformerModelWithLMHead"], is_decoder=True, vocab_size=263,
    hidden_size=1024, num_attention_heads=8, attention_head_size=128, feed_forward_size=4096,
    attn_layers=["local", "lsh"] * 6, hidden_act="relu", hidden_dropout_prob=0.2,
    local_attention_probs_dropout_prob=0.2, lsh_attention_probs_dropout_prob=0.1, local_attn_chunk_length=128,
    local_num_chunks_before=1, local_num_chunks_after=0, lsh_attn_chunk_length=256, lsh_num_chunks_before=1,
    lsh_num_chunks_after=0, num_buckets=[16, 32], num_hashes=4, hash_seed=None, axial_pos_embds=True,
    axial_pos_shape=[128, 512], axial_pos_embds_dim=[256, 768], axial_norm_std=1.0, max_position_embeddings=65536,
    chunk_size_lm_head=0, chunk_size_feed_forward=0, layer_norm_eps=1e-12, initializer_range=0.02, pad_token_id=0,
    eos_token_id=3, tie_word_embeddings=False,
)
