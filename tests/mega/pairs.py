"""Shared pieces of the MEGA oracle tests: tiny configs, padded inputs, HF model <-> ours built from one checkpoint,
and the output + gradient comparison (one jit for both: XLA CPU compiles dominate these tests' time)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxmodels
from tests.oracle import assert_close, assert_grads_close, randomize_, require_torch, torch_grads

OUT_TOL = 1e-5
GRAD_TOL = 1e-4
V = 40
PAD = 1

BASE = dict(
    vocab_size=V, hidden_size=16, num_hidden_layers=2, intermediate_size=24, ema_projection_size=4,
    shared_representation_size=8, nffn_hidden_size=20, max_positions=32, dropout_prob=0.0, hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0, nffn_activation_dropout_prob=0.0, classifier_dropout=0.0, pad_token_id=PAD,
    num_labels=3,
)
B, L = 3, 12


C = 2  # choices of MegaForMultipleChoice


def make_inputs(cfg: dict, seed: int, causal: bool, head: str = "MegaForMaskedLM"):
    """Padded ids (pad id in the padding), mask, optional token types and the head's labels."""
    rng = np.random.RandomState(seed)
    lead = (B, C) if head == "MegaForMultipleChoice" else (B,)
    ids = rng.randint(0, V, lead + (L,))  # includes the pad id: its embedding row must get no gradient
    mask = np.ones(lead + (L,), np.int64)
    mask[1, ..., 9:] = 0
    mask[2, ..., 7:] = 0  # with chunk 4: positions 8..11 form a fully padded chunk
    if not causal:
        mask[0, ..., :2] = 0  # left padding too (an encoder sees every key)
    ids = np.where(mask == 1, ids, PAD)
    inputs = dict(input_ids=ids, attention_mask=mask)
    if cfg.get("add_token_type_embeddings"):
        inputs["token_type_ids"] = rng.randint(0, cfg["type_vocab_size"], lead + (L,))
    n = cfg["num_labels"]
    if head in ("MegaForMaskedLM", "MegaForCausalLM"):
        labels = np.where(rng.rand(B, L) < 0.5, rng.randint(0, V, (B, L)), -100)
        labels[0, 3] = 5
        inputs["labels"] = labels
    elif head == "MegaForSequenceClassification":
        inputs["labels"] = rng.randint(0, n, (B,))
    elif head == "MegaForTokenClassification":
        inputs["labels"] = np.where(mask == 1, rng.randint(0, n, (B, L)), -100)
    elif head == "MegaForMultipleChoice":
        inputs["labels"] = rng.randint(0, C, (B,))
    elif head == "MegaForQuestionAnswering":
        inputs["start_positions"] = np.array([1, 3, 40])  # 40 is beyond the sequence: clamped and ignored
        inputs["end_positions"] = np.array([2, 6, 5])
    return inputs


def build_pair(tmp_path, head: str, cfg: dict, seed: int = 1, qk_gain: float = 1.0):
    """HF model with random weights saved to ``tmp_path`` and ours loaded from there; ``qk_gain`` scales the query /
    key weights (larger attention scores, where a wrong normaliser shows)."""
    torch = require_torch()
    import transformers

    hf_config = transformers.MegaConfig(**cfg)
    torch.manual_seed(0)
    hf_model = getattr(transformers, head)(hf_config).eval()
    randomize_(hf_model, seed=seed)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith("qk_weight"):
                p.mul_(qk_gain)
    hf_model.save_pretrained(tmp_path)
    module, params = jaxmodels.from_pretrained(str(tmp_path))
    assert type(module).__name__ == head
    return hf_model, module, params


def check_parity(tmp_path, head: str, cfg: dict, causal: bool):
    torch = require_torch()
    hf_model, module, params = build_pair(tmp_path, head, cfg)
    inputs = make_inputs(cfg, seed=2, causal=causal, head=head)
    tin = {k: torch.tensor(v) for k, v in inputs.items()}
    jin = {k: jnp.asarray(v) for k, v in inputs.items()}
    extra = dict(use_cache=False) if causal else {}  # HF's default use_cache path ignores truncation

    probe = np.random.RandomState(3).randn(B, L, cfg["hidden_size"]).astype(np.float32)
    probe2 = np.random.RandomState(4).randn(B, cfg["hidden_size"]).astype(np.float32)

    def objective(out, pr, pr2):
        if head == "MegaModel":
            return (out.last_hidden_state * pr).sum() + (out.pooler_output * pr2).sum()
        return out.loss

    hf_model.zero_grad()
    theirs = hf_model(**tin, output_hidden_states=True, output_attentions=True, **extra)
    objective(theirs, torch.tensor(probe), torch.tensor(probe2)).backward()

    def ours_fn(p):
        out = module.apply({"params": p}, **jin, output_hidden_states=True, output_attentions=True)
        return objective(out, probe, probe2), out

    # One compile for outputs and gradients: XLA CPU compiles dominate this test's time.
    (_, ours), grads = jax.jit(jax.value_and_grad(ours_fn, has_aux=True))(params)
    fields = {"MegaModel": ["last_hidden_state", "pooler_output"],
              "MegaForQuestionAnswering": ["start_logits", "end_logits", "loss"]}.get(head, ["logits", "loss"])
    errs = {f: assert_close(getattr(ours, f), getattr(theirs, f), OUT_TOL, f) for f in fields}
    assert len(ours.hidden_states) == len(theirs.hidden_states) == cfg["num_hidden_layers"] + 1
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
        assert_close(a, b, OUT_TOL, f"hidden_states[{i}]")
    assert len(ours.attentions) == len(theirs.attentions)
    for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions)):
        # Weights live in [0, 1]; laplace's 0.5 * (1 + erf(x)) cancels in fp32 where erf ~ -1 (HF's formula too), so
        # rows of tiny weights carry ~1e-7 absolute noise: compare on the [0, 1] scale (floor 1), not their max.
        assert_close(a, b, OUT_TOL, f"attentions[{i}]", floor=1.0)
    errs["grads"] = assert_grads_close(jaxmodels.params_to_hf(module, grads), torch_grads(hf_model), GRAD_TOL)
    return errs
