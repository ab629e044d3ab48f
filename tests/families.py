"""Per family: a tiny HF config, its masked-LM and sequence-classification heads, and fields of each type to misuse.

Shared by the test modules that cover every family the same way (the bad-input catalogue, checkpoints, the model
laws of ``tests/property/test_model_laws.py``); a new family adds its entry here and is covered by all of them.

An entry (keys of the dict):
  config: a tiny HF config dict (``model_type`` and the sizes); fp32, no dropout needed (the laws run
    ``deterministic``). Keep every width different from the law inputs' batch 4, choices 2 and length 12, and
    ``max_position_embeddings`` >= 12.
  mlm, cls: the masked-LM and sequence-classification architectures (HF class names).
  bool_field, int_field, float_field, act_field: config fields of each type, for the bad-input catalogue.
Optional, read by the model laws (every architecture of the family's registry record is covered unless skipped):
  inputs: architecture -> {argument: kind}, the token arguments of heads whose inputs are not one ``input_ids``
    of ``[batch, length]``: kinds ``"tokens"`` ``[batch, length]``, ``"choices"`` ``[batch, 2, length]``,
    ``"candidates"`` ``[batch, config.num_candidates, length]`` (each with its ``*attention_mask``), and
    ``"candidate_scores"`` (float ``[batch, num_candidates]``). ``*ForMultipleChoice`` defaults to choices.
  heavy: the head the compile-heavy laws (eager, mesh, bf16, gradients) run on; default ``mlm``.
  skip: architecture -> why the laws do not apply to it (say what covers it instead).
  causal: architecture -> config overrides under which that head is a causal decoder (checked for causality).
  module_fields: architecture -> module fields (``module.clone(**fields)``) a jitted call of that head needs.
  breaks: architecture -> {law: why}: laws a head legitimately breaks (their narrower form is checked), as for
    ``extra`` cases.
  extra: name -> dict(architecture=..., config=overrides, breaks={law: why}): more cases (another attention
    kind); ``breaks`` names the laws the case legitimately breaks, whose narrower form is then checked.
Optional, read by the bad-input catalogue:
  cls_eos: the classifier pools at each row's last occurrence of this id (BART), so its classification inputs end
    with it once.
"""

_POSITIONS_FROM_IDS = ("positions are counted from the ids, as HF's RoBERTa-style position ids are (non-pad ids "
                       "before a token), so a non-pad id under the mask shifts the positions of later real tokens")
_BART_SHIFTED = ("its decoder reads input_ids shifted right with no decoder mask (HF's rule), so a padded id "
                 "inside a row reaches that row's later decoder positions")

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
        int_field="hidden_size", float_field="layer_norm_eps", act_field="hidden_act",
        causal={"ReformerModelWithLMHead": dict(is_decoder=True)},
        # LSH attention with fixed rotations (hash_seed): the batch law must hold (one row's hashes never move
        # another row's sort).
        extra={"lsh": dict(architecture="ReformerForMaskedLM",
                           config=dict(attn_layers=["lsh", "local"], lsh_attn_chunk_length=4, num_buckets=2,
                                       num_hashes=2, hash_seed=0), breaks={})}),
    "rembert": dict(
        config=dict(model_type="rembert", vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    input_embedding_size=8, output_embedding_size=12, intermediate_size=24,
                    max_position_embeddings=16),
        mlm="RemBertForMaskedLM", cls="RemBertForSequenceClassification", bool_field="is_decoder",
        int_field="hidden_size", float_field="layer_norm_eps", act_field="hidden_act",
        causal={"RemBertForCausalLM": dict(is_decoder=True)}),
    "mega": dict(
        config=dict(model_type="mega", vocab_size=40, hidden_size=8, num_hidden_layers=1, intermediate_size=12,
                    ema_projection_size=2, shared_representation_size=4, nffn_hidden_size=12, max_positions=16),
        mlm="MegaForMaskedLM", cls="MegaForSequenceClassification", bool_field="bidirectional",
        int_field="hidden_size", float_field="dropout_prob", act_field="activation",
        causal={"MegaForCausalLM": dict(is_decoder=True, bidirectional=False)}),
    "longformer": dict(
        config=dict(model_type="longformer", vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=12, attention_window=4, max_position_embeddings=16),
        mlm="LongformerForMaskedLM", cls="LongformerForSequenceClassification", bool_field=None,
        int_field="hidden_size", float_field="layer_norm_eps", act_field="hidden_act",
        # QA and multiple choice make question tokens global: a static bound keeps their global rows narrow under jit.
        module_fields={"LongformerForQuestionAnswering": dict(max_global_tokens=12),
                       "LongformerForMultipleChoice": dict(max_global_tokens=12)},
        breaks={arch: {"padding": _POSITIONS_FROM_IDS}
                for arch in ("LongformerModel", "LongformerForMaskedLM", "LongformerForTokenClassification",
                             "LongformerForQuestionAnswering", "LongformerForSequenceClassification",
                             "LongformerForMultipleChoice")}),
    # An encoder-decoder: "mlm" is the LM head (labels shift right into the decoder inputs). Its classifier reads
    # the decoder state at each row's last eos, so its classification inputs end with eos_token_id once (cls_eos).
    "bart": dict(
        config=dict(model_type="bart", vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24,
                    max_position_embeddings=16, num_labels=2),
        mlm="BartForConditionalGeneration", cls="BartForSequenceClassification", bool_field="scale_embedding",
        int_field="d_model", float_field="dropout", act_field="activation_function", cls_eos=2,
        breaks={arch: {"padding": _BART_SHIFTED}
                for arch in ("BartModel", "BartForConditionalGeneration", "BartForQuestionAnswering")}),
}
NAMES = sorted(FAMILIES)

# Families with no masked-LM / classification pair (so not in the catalogue above) still obey the model laws.
REALM = dict(
    heavy="RealmScorer",
    config=dict(model_type="realm", vocab_size=40, hidden_size=16, retriever_proj_size=8, num_hidden_layers=1,
                num_attention_heads=2, num_candidates=3, intermediate_size=24, max_position_embeddings=16,
                span_hidden_size=10, max_span_width=3, reader_beam_size=2, reader_seq_len=12,
                num_block_records=5, searcher_beam_size=2),
    inputs={"RealmScorer": {"input_ids": "tokens", "candidate_input_ids": "candidates"},
            "RealmKnowledgeAugEncoder": {"input_ids": "candidates", "relevance_score": "candidate_scores"}},
    skip={"RealmReader": "its inputs are a retrieved block batch with block_mask and relevance scores, not padded "
                         "text: tests/realm/test_parity.py and test_open_qa.py cover it",
          "RealmForOpenQA": "retrieval over a block index (one question at a time, as in HF): "
                            "tests/realm/test_open_qa.py covers batching and sharded retrieval"},
)
# Every family of the registry, for the tests that need only a config (the model laws).
MODEL_FAMILIES = {**FAMILIES, "realm": REALM}
