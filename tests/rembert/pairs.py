"""Shared pieces of the RemBERT oracle tests: tiny configs, padded inputs, an HF model and ours built from one
checkpoint (cached per config: HF construction, saving and loading are paid once per module), and the output +
gradient comparison in one jit (XLA CPU compiles dominate these tests' time)."""

from __future__ import annotations

import functools
import json
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jaxmodels
from tests.oracle import assert_close, assert_grads_close, randomize_, require_torch, torch_grads

OUT_TOL = 1e-5
GRAD_TOL = 1e-4
V = 83
B, L, C = 3, 10, 2  # batch, length, choices of RemBertForMultipleChoice

# E_in (input_embedding_size) 10 < H 24, and E_out (output_embedding_size) 14 differs from both: a width mix-up
# or a tied decoder cannot pass.
BASE = dict(
    vocab_size=V, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, input_embedding_size=10,
    output_embedding_size=14, intermediate_size=36, max_position_embeddings=40, type_vocab_size=2, pad_token_id=0,
    bos_token_id=1, eos_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    classifier_dropout_prob=0.0, num_labels=3,
)
HEADS = [
    "RemBertModel", "RemBertForMaskedLM", "RemBertForCausalLM", "RemBertForSequenceClassification",
    "RemBertForMultipleChoice", "RemBertForTokenClassification", "RemBertForQuestionAnswering",
]


def config_for(head: str, cfg: dict) -> dict:
    """``cfg`` with what ``head`` needs: QA's two logits; a causal LM is a decoder (with cross-attention when the
    config asks for ``cross``)."""
    cfg = dict(cfg)
    cross = cfg.pop("cross", False)
    if head == "RemBertForQuestionAnswering":
        cfg["num_labels"] = 2
    if head == "RemBertForCausalLM":
        cfg.update(is_decoder=True, add_cross_attention=cross)
    return cfg


@functools.cache
def _pair(head: str, cfg_json: str, embedding_mean: float):
    torch = require_torch()
    import transformers

    torch.manual_seed(0)
    hf_model = getattr(transformers, head)(transformers.RemBertConfig(**json.loads(cfg_json))).eval()
    randomize_(hf_model, seed=1, embedding_mean=embedding_mean)
    directory = tempfile.mkdtemp(prefix="rembert_pair_")
    hf_model.save_pretrained(directory)
    module, params = jaxmodels.from_pretrained(directory)
    assert type(module).__name__ == head
    return hf_model, module, params


def build_pair(head: str, cfg: dict, embedding_mean: float = 0.0):
    """HF ``head`` with random non-default weights, saved, and ours loaded from that directory (cached)."""
    return _pair(head, json.dumps(cfg, sort_keys=True), embedding_mean)


def make_inputs(head: str, cfg: dict, seed: int, problem: str = "single"):
    """Padded ids (pad id in the padding), mask, token types, the head's labels; a cross-attending decoder also gets
    padded encoder states."""
    rng = np.random.RandomState(seed)
    lead = (B, C) if head == "RemBertForMultipleChoice" else (B,)
    ids = rng.randint(3, V, lead + (L,))
    mask = np.ones(lead + (L,), np.int64)
    mask[1, ..., 7:] = 0
    mask[2, ..., 4:] = 0
    ids = np.where(mask == 1, ids, cfg["pad_token_id"])
    inputs = dict(input_ids=ids, attention_mask=mask,
                  token_type_ids=rng.randint(0, cfg["type_vocab_size"], lead + (L,)))
    n = cfg["num_labels"]
    if head in ("RemBertForMaskedLM", "RemBertForCausalLM"):
        labels = np.where((rng.rand(B, L) < 0.5) & (mask == 1), rng.randint(0, V, (B, L)), -100)
        labels[0, 3] = 5
        inputs["labels"] = labels
        if cfg.get("add_cross_attention"):
            inputs["encoder_hidden_states"] = rng.randn(B, 5, cfg["hidden_size"]).astype(np.float32)
            inputs["encoder_attention_mask"] = (np.arange(5) < np.array([[5], [3], [4]])).astype(np.int64)
    elif head == "RemBertForSequenceClassification":
        inputs["labels"] = {"single": lambda: rng.randint(0, n, (B,)),
                            "regression": lambda: rng.randn(B).astype(np.float32),
                            "multi": lambda: (rng.rand(B, n) < 0.5).astype(np.float32)}[problem]()
    elif head == "RemBertForTokenClassification":
        inputs["labels"] = np.where(mask == 1, rng.randint(0, n, (B, L)), -100)
    elif head == "RemBertForMultipleChoice":
        inputs["labels"] = rng.randint(0, C, (B,))
    elif head == "RemBertForQuestionAnswering":
        inputs["start_positions"] = np.array([1, 3, 40])  # 40 is beyond the sequence: clamped and ignored
        inputs["end_positions"] = np.array([2, 6, 5])
    return inputs


def output_fields(head: str) -> list[str]:
    return {"RemBertModel": ["last_hidden_state", "pooler_output"],
            "RemBertForQuestionAnswering": ["start_logits", "end_logits", "loss"]}.get(head, ["logits", "loss"])


def check_parity(head: str, cfg: dict, embedding_mean: float = 0.0) -> dict:
    """Outputs, hidden states, attentions (and cross-attentions), loss and every parameter gradient against HF.
    Returns the largest relative errors: ``{"outputs": ..., "grads": ...}``."""
    torch = require_torch()
    hf_model, module, params = build_pair(head, cfg, embedding_mean)
    inputs = make_inputs(head, cfg, seed=2)
    tin = {k: torch.tensor(v) for k, v in inputs.items()}
    jin = {k: jnp.asarray(v) for k, v in inputs.items()}
    lead = (B * C,) if head == "RemBertForMultipleChoice" else (B,)
    rng = np.random.RandomState(3)
    probe = (rng.randn(*lead, L, cfg["hidden_size"]).astype(np.float32),
             rng.randn(*lead, cfg["hidden_size"]).astype(np.float32))

    def objective(out, probe):
        if head == "RemBertModel":  # no loss: a fixed random projection of both outputs
            return (out.last_hidden_state * probe[0]).sum() + (out.pooler_output * probe[1]).sum()
        return out.loss

    hf_model.zero_grad()
    theirs = hf_model(**tin, output_hidden_states=True, output_attentions=True)
    objective(theirs, [torch.tensor(p) for p in probe]).backward()

    def ours_fn(p):
        out = module.apply({"params": p}, **jin, output_hidden_states=True, output_attentions=True)
        return objective(out, probe), out

    (_, ours), grads = jax.jit(jax.value_and_grad(ours_fn, has_aux=True))(params)
    errs = [assert_close(getattr(ours, f), getattr(theirs, f), OUT_TOL, f) for f in output_fields(head)]
    assert len(ours.hidden_states) == len(theirs.hidden_states) == cfg["num_hidden_layers"] + 1
    assert ours.hidden_states[0].shape[-1] == cfg["hidden_size"]  # after embedding_hidden_mapping_in
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        errs.append(assert_close(a, b, OUT_TOL, f"hidden_states[{i}]"))
    weights = [("attentions", ours.attentions, theirs.attentions)]
    if getattr(theirs, "cross_attentions", None) is not None:
        weights.append(("cross_attentions", ours.cross_attentions, theirs.cross_attentions))
    for name, a_all, b_all in weights:
        assert len(a_all) == len(b_all) == cfg["num_hidden_layers"]
        errs += [assert_close(a, b, OUT_TOL, f"{name}[{i}]") for i, (a, b) in enumerate(zip(a_all, b_all))]
    grad_err = assert_grads_close(jaxmodels.params_to_hf(module, grads), torch_grads(hf_model), GRAD_TOL)
    return {"outputs": max(errs), "grads": grad_err}
