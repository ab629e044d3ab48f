"""Longformer parity with the HF PyTorch oracle: every head, outputs, attentions, global attentions, losses and
parameter gradients, in fp32, random non-default weights.

The cases are the port specification's (``/work/shared/notes/families/longformer.md`` §6): per-layer windows with
padding to the window multiple and slicing back, unequal global counts (a filler slot), the purely local path, an
odd one-sided window, each head's automatic global mask, an all-global row beside a row without globals and a global
flag on padding, left padding (positions from the ids), a window wider than the sequence; plus large-mean
embeddings (a fast-variance LayerNorm fails there). One compile per case: outputs and gradients come from one
jitted ``value_and_grad``, with ``max_global_tokens`` set to the batch's count (HF's shapes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from tests.oracle import assert_close, assert_grads_close, randomize_, require_torch, torch_grads

OUT_TOL = 1e-5
GRAD_TOL = 1e-4
FAST_COMPILE = {"xla_backend_optimization_level": 0}
V, PAD = 71, 1
BASE = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=28,
            max_position_embeddings=48, pad_token_id=PAD, bos_token_id=0, eos_token_id=2, sep_token_id=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2, layer_norm_eps=1e-12)


def _rows(rng, b, length, pad_tail=(), left_pad=()):
    """``<s> x .. </s>`` rows, right-padded (``pad_tail[i]`` pads on row i) or left-padded; pads id 1 / mask 0."""
    x = rng.randint(3, V, (b, length))
    m = np.ones((b, length), np.int64)
    x[:, 0], x[:, -1] = 0, 2
    for r, n in enumerate(pad_tail):
        if n:
            x[r, -n - 1], x[r, -n:], m[r, -n:] = 2, PAD, 0
    for r, n in enumerate(left_pad):
        if n:
            x[r, :n], m[r, :n], x[r, n] = PAD, 0, 0
    return x, m


def _qa_rows(rng, q_lens, length):
    """``<s> Q </s></s> C </s> [pad]`` rows, row r with r pads."""
    x, m = np.full((len(q_lens), length), PAD), np.zeros((len(q_lens), length), np.int64)
    for r, q in enumerate(q_lens):
        row = [0, *rng.randint(3, V, q), 2, 2, *rng.randint(3, V, length - q - 4 - r), 2]
        x[r, :len(row)], m[r, :len(row)] = row, 1
    return x, m


def _inputs(name: str) -> dict:
    rng = np.random.RandomState(5)
    if name == "model-windows48-globals":
        x, m = _rows(rng, 2, 13, pad_tail=(0, 4))
        g = np.zeros_like(x)
        g[0, [0, 5]] = g[1, 0] = 1
        return dict(input_ids=x, attention_mask=m, global_attention_mask=g, token_type_ids=rng.randint(0, 2, x.shape))
    if name == "mlm-window6-local-large_mean":
        x, m = _rows(rng, 2, 10, pad_tail=(3, 0))
        labels = np.where(rng.rand(*x.shape) < 0.4, rng.randint(0, V, x.shape), -100)
        labels[0, 1] = 7
        return dict(input_ids=x, attention_mask=m, labels=labels)
    if name == "seqcls-auto-cls":
        x, m = _rows(rng, 3, 9, pad_tail=(0, 2, 5))
        return dict(input_ids=x, attention_mask=m, labels=np.array([0, 2, 1]))
    if name == "qa-auto-question":
        x, m = _qa_rows(rng, (3, 2), 14)
        return dict(input_ids=x, attention_mask=m, start_positions=np.array([6, 30]), end_positions=np.array([8, 9]))
    if name == "tokcls-all_global-none-pad_global":
        x, m = _rows(rng, 2, 11, pad_tail=(0, 3))
        g = np.zeros_like(x)
        g[0, :] = g[1, -1] = 1  # row 0: every token global; row 1: a global flag on padding only (padding wins)
        return dict(input_ids=x, attention_mask=m, global_attention_mask=g,
                    labels=np.where(m == 1, rng.randint(0, 4, x.shape), -100))
    if name == "mc-auto-choices":
        rows = [_qa_rows(rng, (2, 3), 12) for _ in range(2)]
        return dict(input_ids=np.stack([r[0] for r in rows], 1), attention_mask=np.stack([r[1] for r in rows], 1),
                    labels=np.array([1, 0]))
    if name == "model-left_pad-windows484":
        x, m = _rows(rng, 2, 7, left_pad=(2, 0))
        return dict(input_ids=x, attention_mask=m)
    if name == "mlm-window16-short":
        x, m = _rows(rng, 2, 5, pad_tail=(0, 1))
        return dict(input_ids=x, attention_mask=m, labels=np.where(m == 1, x, -100))
    raise KeyError(name)


# name -> (HF class, config on BASE, embedding mean). Gradients are compared for one case of each head (the last
# two cases are about positions and padding, which the outputs already show).
CASES = {
    "model-windows48-globals": ("LongformerModel", dict(attention_window=[4, 8]), 0.0),
    "mlm-window6-local-large_mean": ("LongformerForMaskedLM", dict(attention_window=6, num_hidden_layers=3), 15.0),
    "seqcls-auto-cls": ("LongformerForSequenceClassification", dict(attention_window=4, num_labels=3), 0.0),
    "qa-auto-question": ("LongformerForQuestionAnswering", dict(attention_window=4, num_labels=2), 0.0),
    "tokcls-all_global-none-pad_global": ("LongformerForTokenClassification",
                                          dict(attention_window=4, num_labels=4), 0.0),
    "mc-auto-choices": ("LongformerForMultipleChoice", dict(attention_window=4), 0.0),
    "model-left_pad-windows484": ("LongformerModel", dict(attention_window=[4, 8, 4], num_hidden_layers=3), 0.0),
    "mlm-window16-short": ("LongformerForMaskedLM", dict(attention_window=16), 0.0),
}
FORWARD_ONLY = ("model-left_pad-windows484", "mlm-window16-short")


def _global_count(module, inputs) -> int:
    """The batch's most global tokens per row, as the module resolves them from concrete masks."""
    from jaxmodels.longformer import modeling

    head = type(module).__name__
    ids = inputs["input_ids"].reshape(-1, inputs["input_ids"].shape[-1])
    mask = inputs["attention_mask"].reshape(ids.shape)
    g = inputs.get("global_attention_mask")
    if g is None:
        sep = module.config.sep_token_id
        g = {"LongformerForSequenceClassification": lambda: np.eye(1, ids.shape[1], dtype=int).repeat(len(ids), 0),
             "LongformerForQuestionAnswering": lambda: modeling.question_global_mask(jnp.asarray(ids), sep),
             "LongformerForMultipleChoice": lambda: modeling.choice_global_mask(jnp.asarray(ids), sep)}.get(
            head, lambda: np.zeros_like(ids))()
    modes = modeling.merged_key_mode(ids.shape, mask, np.asarray(g).reshape(ids.shape))
    return int(np.max(np.sum(np.asarray(modes) == 2, axis=1)))


def _pair(name: str, tmp: str):
    """(HF model, our module with the batch's global slots, params): HF saves, our doorway loads."""
    torch = require_torch()
    import transformers

    head, overrides, embedding_mean = CASES[name]
    torch.manual_seed(0)
    hf = getattr(transformers, head)(transformers.LongformerConfig(**{**BASE, **overrides})).eval()
    randomize_(hf, seed=1, embedding_mean=embedding_mean)
    hf.save_pretrained(tmp)
    module, params = jaxmodels.from_pretrained(tmp)
    return hf, module.clone(max_global_tokens=_global_count(module, _inputs(name))), params


def _objective(out, probe):
    """The loss when the head has one, else a fixed random projection of the outputs (the bare model)."""
    if probe is None:
        return out.loss
    return (out.last_hidden_state * probe[0]).sum() + (out.pooler_output * probe[1]).sum()


@pytest.mark.parametrize("name", list(CASES))
def test_head_parity(name, tmp_path):
    torch = require_torch()
    hf, module, params = _pair(name, str(tmp_path))
    inputs = _inputs(name)
    probe = None
    if CASES[name][0] == "LongformerModel":
        rng = np.random.RandomState(3)
        shape = inputs["input_ids"].shape
        probe = (rng.randn(*shape, 16).astype(np.float32), rng.randn(shape[0], 16).astype(np.float32))

    with_grads = name not in FORWARD_ONLY
    hf.zero_grad()
    with torch.set_grad_enabled(with_grads):
        theirs = hf(**{k: torch.tensor(v) for k, v in inputs.items()}, output_attentions=True,
                    output_hidden_states=True)
    if with_grads:
        _objective(theirs, None if probe is None else [torch.tensor(p) for p in probe]).backward()

    def loss(p, x):
        out = module.apply({"params": p}, **x, output_attentions=True, output_hidden_states=True)
        return _objective(out, probe), out

    run = jax.value_and_grad(loss, has_aux=True) if with_grads else lambda p, x: ((None, loss(p, x)[1]), None)
    (_, ours), grads = jax.jit(run, compiler_options=FAST_COMPILE)(params, {k: jnp.asarray(v) for k, v in
                                                                            inputs.items()})

    fields = {"LongformerModel": ["last_hidden_state", "pooler_output"],
              "LongformerForQuestionAnswering": ["start_logits", "end_logits", "loss"]}.get(CASES[name][0],
                                                                                          ["logits", "loss"])
    for field in fields:
        assert_close(getattr(ours, field), getattr(theirs, field), OUT_TOL, field)
    for what in ("hidden_states", "attentions", "global_attentions"):
        a, b = getattr(ours, what), getattr(theirs, what)
        assert (a is None) == (b is None), what
        for i, (x, y) in enumerate(zip(a or (), b or ())):
            assert_close(x, y, OUT_TOL, f"{what}[{i}]")
    if with_grads:
        assert_grads_close(jaxmodels.params_to_hf(module, grads), torch_grads(hf), GRAD_TOL)
