"""Model presets: names a config may give as ``model`` instead of a full HF-style config dict.

Each value is exactly what an HF ``config.json`` would hold (``model_type``, ``architectures`` and the family's
fields), so ``jaxmodels.from_config(MODELS[name])`` builds it and ``save_pretrained`` round-trips it.
"""

# HF albert-base-v2 / albert-large-v2 shapes; the vocabulary follows the tokenizer an experiment trains.
_ALBERT_BASE = dict(
    model_type="albert", architectures=["AlbertForPreTraining"], vocab_size=30000, embedding_size=128,
    hidden_size=768, num_hidden_layers=12, num_hidden_groups=1, num_attention_heads=12, intermediate_size=3072,
    inner_group_num=1, hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    max_position_embeddings=512, type_vocab_size=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
)

MODELS = {
    "albert-base-v2": _ALBERT_BASE,
    "albert-large-v2": {**_ALBERT_BASE, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                        "intermediate_size": 4096},
    # Small enough for a CPU test: two shared layers of width 64.
    "albert-tiny": {**_ALBERT_BASE, "architectures": ["AlbertForMaskedLM"], "vocab_size": 256,
                    "embedding_size": 32, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "max_position_embeddings": 128},
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
