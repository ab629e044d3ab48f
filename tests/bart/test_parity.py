"""BART parity with the HF PyTorch oracle: every head's outputs, hidden states, attention weights (self and cross),
losses and parameter gradients (through ``jaxmodels.params_to_hf``) in fp32, random non-default weights.

Cases cross ``scale_embedding`` on / off, encoder and decoder depths and head counts that differ, padded encoder
(and decoder) rows, explicit ``decoder_input_ids``, the default ``shift_tokens_right`` of ``input_ids`` and of
``labels`` (the labels-only path), a length equal to ``max_position_embeddings`` (the last learned position row),
an untied LM head with a non-zero ``final_logits_bias``, sequence classification at the last of two eos per row,
span QA on the decoder states, and ``BartForCausalLM`` with and without encoder states. The untied case also
round-trips through ``save_pretrained`` into HF. One jit per case computes outputs and gradients together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from tests.bart.pairs import BASE, EOS, V, build_pair, rows
from tests.oracle import assert_close, assert_grads_close, require_torch, torch_grads

OUT_TOL = 1e-5
GRAD_TOL = 1e-4


def _labels(rng, shape, ignore_tail=()):
    labels = rng.randint(0, V, shape)
    for r, n in enumerate(ignore_tail):
        if n:
            labels[r, -n:] = -100
    return labels


def _inputs(name: str):
    rng = np.random.RandomState(sum(map(ord, name)))
    if name == "cond_gen-scaled-padded-decoder_ids":
        ids, mask = rows(rng, 3, 9, pad_tail=(0, 3, 1))
        dec, dec_mask = rows(rng, 3, 7, pad_tail=(2, 0, 0))
        dec[:, 0] = EOS
        return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                    labels=_labels(rng, (3, 7), ignore_tail=(2, 0, 0)))
    if name == "cond_gen-labels_only-untied-bias-silu":
        ids, mask = rows(rng, 3, 8, pad_tail=(2, 0, 0))
        return dict(input_ids=ids, attention_mask=mask, labels=_labels(rng, (3, 6), ignore_tail=(0, 2, 0)))
    if name == "model-shift-relu-max_length":
        ids, mask = rows(rng, 2, BASE["max_position_embeddings"], pad_tail=(0, 5))
        return dict(input_ids=ids, attention_mask=mask)
    if name == "seq_cls-two_eos-4labels":
        ids, mask = rows(rng, 3, 10, pad_tail=(0, 2, 0), extra_eos=((4,), (3,), (6,)))
        return dict(input_ids=ids, attention_mask=mask, labels=rng.randint(0, 4, (3,)))
    if name == "qa-decoder_states":
        ids, mask = rows(rng, 3, 11, pad_tail=(3, 0, 0))
        return dict(input_ids=ids, attention_mask=mask, start_positions=np.array([1, 3, 40]),
                    end_positions=np.array([2, 6, 5]))  # 40 is beyond the sequence: clamped and ignored
    if name == "causal_lm-padded":
        ids, mask = rows(rng, 3, 8, pad_tail=(0, 2, 0))
        return dict(input_ids=ids, attention_mask=mask, labels=_labels(rng, (3, 8), ignore_tail=(0, 2, 0)))
    if name == "causal_lm-encoder_states-gelu_new":
        ids, _ = rows(rng, 3, 6)
        enc_mask = np.ones((3, 5), np.int64)
        enc_mask[1, -2:] = 0
        return dict(input_ids=ids, encoder_hidden_states=rng.randn(3, 5, BASE["d_model"]).astype(np.float32),
                    encoder_attention_mask=enc_mask, labels=_labels(rng, (3, 6)))
    raise KeyError(name)


# name -> (head, config changes on BASE, final_logits_bias seed)
CASES = {
    "cond_gen-scaled-padded-decoder_ids": ("BartForConditionalGeneration", dict(scale_embedding=True), 5),
    "cond_gen-labels_only-untied-bias-silu": ("BartForConditionalGeneration",
                                              dict(tie_word_embeddings=False, activation_function="silu"), 3),
    "model-shift-relu-max_length": ("BartModel", dict(activation_function="relu", encoder_layers=1,
                                                      decoder_layers=2), None),
    "seq_cls-two_eos-4labels": ("BartForSequenceClassification", dict(num_labels=4, decoder_layers=2,
                                                                      scale_embedding=True), None),
    "qa-decoder_states": ("BartForQuestionAnswering", {}, None),
    "causal_lm-padded": ("BartForCausalLM", dict(decoder_layers=2, scale_embedding=True), None),
    "causal_lm-encoder_states-gelu_new": ("BartForCausalLM", dict(activation_function="gelu_new"), None),
}
FIELDS = {
    "BartModel": ["last_hidden_state", "encoder_last_hidden_state"],
    "BartForConditionalGeneration": ["logits", "loss", "encoder_last_hidden_state"],
    "BartForSequenceClassification": ["logits", "loss"],
    "BartForQuestionAnswering": ["start_logits", "end_logits", "loss"],
    "BartForCausalLM": ["logits", "loss"],
}


# Per-layer hidden states and attention weights are compared in these cases (each adds outputs to the compile).
PER_LAYER = ("cond_gen-scaled-padded-decoder_ids", "causal_lm-encoder_states-gelu_new")


def _per_layer_fields(head: str, has_cross: bool) -> list[str]:
    if head == "BartForCausalLM":
        return ["hidden_states", "attentions"] + (["cross_attentions"] if has_cross else [])
    return ["encoder_hidden_states", "encoder_attentions", "decoder_hidden_states", "decoder_attentions",
            "cross_attentions"]


@pytest.mark.parametrize("name", list(CASES))
def test_head_parity(tmp_path, name):
    torch = require_torch()
    head, changes, bias_seed = CASES[name]
    hf_model, module, params = build_pair(tmp_path, head, {**BASE, **changes}, logits_bias_seed=bias_seed)
    inputs = _inputs(name)
    tin = {k: torch.tensor(v) for k, v in inputs.items()}
    jin = {k: jnp.asarray(v) for k, v in inputs.items()}

    rng = np.random.RandomState(3)
    probes = None
    if head == "BartModel":  # no loss: a fixed random projection of both outputs
        b, length = inputs["input_ids"].shape
        probes = [rng.randn(b, length, BASE["d_model"]).astype(np.float32) for _ in range(2)]

    def objective(out, probes):
        if probes is None:
            return out.loss
        return (out.last_hidden_state * probes[0]).sum() + (out.encoder_last_hidden_state * probes[1]).sum()

    per_layer = name in PER_LAYER
    hf_model.zero_grad()
    theirs = hf_model(**tin, output_hidden_states=per_layer, output_attentions=per_layer)
    objective(theirs, None if probes is None else [torch.tensor(p) for p in probes]).backward()

    def ours_fn(p):
        out = module.apply({"params": p}, **jin, output_hidden_states=per_layer, output_attentions=per_layer)
        return objective(out, probes), out

    run = jax.jit(jax.value_and_grad(ours_fn, has_aux=True))
    (_, ours), grads = run(params)
    for field in FIELDS[head]:
        assert_close(getattr(ours, field), getattr(theirs, field), OUT_TOL, field)
    for field in _per_layer_fields(head, "encoder_hidden_states" in inputs) if per_layer else ():
        a, b = getattr(ours, field), getattr(theirs, field)
        assert len(a) == len(b), field
        for i, (x, y) in enumerate(zip(a, b)):
            # Attention weights live in [0, 1]: compared on that scale (floor 1).
            assert_close(x, y, OUT_TOL, f"{field}[{i}]", floor=1.0 if "attentions" in field else 1e-30)
    assert_grads_close(jaxmodels.params_to_hf(module, grads), torch_grads(hf_model), GRAD_TOL)

    if name == "cond_gen-labels_only-untied-bias-silu":
        _check_round_trip(tmp_path, module, params, tin, run)


def _check_round_trip(tmp_path, module, params, tin, run):
    """Ours -> save_pretrained -> HF from_pretrained: equal logits (untied lm_head, final_logits_bias and, for HF's
    loader, the untied embed_tokens copies written); back through our doorway: equal params. ``run`` is the
    case's compiled forward and backward."""
    torch = require_torch()
    import transformers

    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.RandomState(8)
    params = jax.tree.unflatten(treedef, [x + 0.1 * jnp.asarray(rng.randn(*x.shape), jnp.float32) for x in leaves])
    jaxmodels.save_pretrained(module, params, str(tmp_path / "ours"))
    hf_model = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        theirs = hf_model(**tin)
    (_, ours), _ = run(params)
    assert_close(ours.logits, theirs.logits, OUT_TOL, "logits after the round trip")
    module2, params2 = jaxmodels.from_pretrained(str(tmp_path / "ours"))
    assert module2.config == module.config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
