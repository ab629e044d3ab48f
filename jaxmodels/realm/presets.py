"""Named REALM model configs (HF ``config.json`` dicts) that experiment configs can name as ``config.model``."""

# google/realm-orqa-nq-openqa: BERT-base embedder and reader over the 13.35M-block Wikipedia index (HF's defaults).
_OPENQA = dict(
    model_type="realm", architectures=["RealmForOpenQA"], vocab_size=30522, hidden_size=768, retriever_proj_size=128,
    num_hidden_layers=12, num_attention_heads=12, num_candidates=8, intermediate_size=3072, hidden_act="gelu_new",
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
    layer_norm_eps=1e-12, span_hidden_size=256, max_span_width=10, reader_layer_norm_eps=1e-3, reader_beam_size=5,
    reader_seq_len=320, num_block_records=13353718, searcher_beam_size=5000, pad_token_id=1, bos_token_id=0,
    eos_token_id=2,
)

# REALM pretraining (Guu et al. 2020) at BERT-base size over the same 13.35M-block index: the retriever and the
# knowledge-augmented encoder, 8 retrieved blocks + the null block per sentence (RealmForRetrievalPretraining).
_PRETRAIN = dict(_OPENQA, architectures=["RealmForRetrievalPretraining"], num_candidates=9, hidden_dropout_prob=0.1)

PRESETS = {"realm-orqa-nq-openqa": _OPENQA, "realm-base-pretrain": _PRETRAIN}
