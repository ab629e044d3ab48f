"""Extractive span reading over a fixed set of candidate spans, and the marginal log-likelihood over correct ones.

Candidate spans are every ``(start, end)`` with ``end - start + 1 <= max_width`` inside a row of ``length``
positions, enumerated **width-major** (all spans of width 1, then width 2, ...), as REALM's reader does:

    starts = [0 .. L-1,  0 .. L-2, ...]   ends = [0 .. L-1,  1 .. L-1, ...]   S = W*L - W*(W-1)/2 spans

Both are numpy constants of the static ``length`` and ``max_width``, so the span axis has a static size and the
gathers below are plain index arrays. A span's score is
``Dense(LayerNorm(relu(start_proj[start] + end_proj[end])))``, with ``start_proj`` / ``end_proj`` the two halves
of one ``Dense(hidden -> 2 * span_hidden)``; spans whose start or end lies outside ``block_mask`` are masked.

``marginal_log_loss`` is ``-log sum_{correct} softmax(logits)``: the loss of a model that only has to put its mass
on *some* correct entry. With no correct entry it is exactly 0 (and so is its gradient), guarded on the inputs:
masking by adding ``finfo.min`` twice overflows to ``-inf``, and a NaN zeroed after the fact still has NaN gradients.

Reference twins (explicit loops, float64): ``span_candidates_reference``, ``span_logits_reference``,
``marginal_log_loss_reference``, ``correct_spans_reference``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from layers import axes
from layers.dense import Dense
from layers.norms import LayerNorm

Array = jax.Array


@functools.cache
def span_candidates(length: int, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)``, int32 ``[num_spans]`` each, width-major; ``num_spans = W*L - W*(W-1)/2`` for
    ``W = min(max_width, length)``."""
    if length < 1 or max_width < 1:
        raise ValueError(f"span_candidates: length={length} and max_width={max_width} must be positive")
    widths = range(1, min(max_width, length) + 1)
    starts = np.concatenate([np.arange(length - w + 1) for w in widths]).astype(np.int32)
    ends = np.concatenate([np.arange(w - 1, length) for w in widths]).astype(np.int32)
    starts.setflags(write=False)
    ends.setflags(write=False)
    return starts, ends


def span_candidates_reference(length: int, max_width: int) -> list[tuple[int, int]]:
    """Slow twin: the spans as a list of ``(start, end)``, width by width."""
    return [(s, s + w - 1) for w in range(1, max_width + 1) for s in range(length) if s + w - 1 < length]


class SpanReader(nn.Module):
    """Span logits of rows of hidden states. Params (HF ``RealmReaderProjection`` names): ``dense_intermediate``
    (hidden -> 2 * span_hidden_size), ``layer_normalization`` (span_hidden_size), ``dense_output`` (-> 1).

    ``hidden [..., L, H]``, ``block_mask [..., L]`` bool -> ``(logits [..., S], span_mask [..., S])``: logits of
    the width-major spans of :func:`span_candidates`; a span whose start or end is outside ``block_mask`` gets
    ``finfo(float32).min`` (its logit otherwise). Logits are fp32.
    """

    span_hidden_size: int
    max_width: int
    layer_norm_eps: float = 1e-3
    dtype: Any = jnp.float32
    init_std: float = 0.02  # the dense kernels' normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, hidden: Array, block_mask: Array) -> tuple[Array, Array]:
        starts, ends = span_candidates(hidden.shape[-2], self.max_width)
        init = nn.initializers.normal(self.init_std)
        both = Dense(2 * self.span_hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=init,
                     name="dense_intermediate")(hidden)
        start_proj, end_proj = jnp.split(both, 2, axis=-1)
        span = jax.nn.relu(jnp.take(start_proj, starts, axis=-2) + jnp.take(end_proj, ends, axis=-2))
        span = LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, axis_name=axes.MLP,
                         name="layer_normalization")(span)
        logits = Dense(1, (axes.MLP, axes.VOCAB), dtype=self.dtype, kernel_init=init, name="dense_output")(span)[..., 0]
        block_mask = block_mask.astype(bool)
        span_mask = jnp.take(block_mask, starts, axis=-1) & jnp.take(block_mask, ends, axis=-1)
        logits = jnp.where(span_mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        return logits, span_mask


def span_logits_reference(hidden, block_mask, params, max_width: int, epsilon: float) -> np.ndarray:
    """Slow twin of :class:`SpanReader` in float64 from its unboxed params: loops over rows and spans."""
    from layers.norms import layer_norm_reference

    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    hidden, block_mask = f64(hidden), np.asarray(block_mask, bool)
    rows, length, _ = hidden.shape
    half = params["dense_intermediate"]["kernel"].shape[1] // 2
    spans = span_candidates_reference(length, max_width)
    out = np.zeros((rows, len(spans)))
    for r in range(rows):
        proj = hidden[r] @ f64(params["dense_intermediate"]["kernel"]) + f64(params["dense_intermediate"]["bias"])
        for j, (s, e) in enumerate(spans):
            v = np.maximum(proj[s, :half] + proj[e, half:], 0.0)
            v = layer_norm_reference(v, params["layer_normalization"]["scale"], params["layer_normalization"]["bias"],
                                     epsilon=epsilon)
            logit = float(v @ f64(params["dense_output"]["kernel"])[:, 0] + f64(params["dense_output"]["bias"])[0])
            out[r, j] = logit if block_mask[r, s] and block_mask[r, e] else np.finfo(np.float32).min
    return out


def marginal_log_loss(logits: Array, correct: Array) -> Array:
    """``logsumexp(logits) - logsumexp(logits[correct])`` over the last axis; 0 where no entry is correct.

    ``logits [..., n]`` (fp32; masked entries may hold ``finfo.min``), ``correct [..., n]`` bool -> ``[...]``.
    """
    logits = logits.astype(jnp.float32)
    correct = correct.astype(bool)
    any_correct = jnp.any(correct, axis=-1, keepdims=True)
    # With no correct entry the numerator takes every entry (finite, so no inf * 0 in the backward), and the
    # outer `where` makes the loss and its gradient exactly 0.
    numerator = jnp.where(correct | ~any_correct, logits, jnp.finfo(jnp.float32).min)
    loss = jax.nn.logsumexp(logits, axis=-1) - jax.nn.logsumexp(numerator, axis=-1)
    return jnp.where(any_correct[..., 0], loss, 0.0)


def marginal_log_loss_reference(logits, correct) -> np.ndarray:
    """Slow twin in float64: per row, log of the total softmax mass over correct entries (0 if none)."""
    logits, correct = np.asarray(logits, np.float64), np.asarray(correct, bool)
    flat_l, flat_c = logits.reshape(-1, logits.shape[-1]), correct.reshape(-1, correct.shape[-1])
    out = []
    for row, ok in zip(flat_l, flat_c):
        if not ok.any():
            out.append(0.0)
            continue
        top = row.max()
        total = sum(np.exp(v - top) for v in row)
        good = sum(np.exp(v - top) for v, c in zip(row, ok) if c)
        out.append(float(np.log(total) - np.log(good)))
    return np.asarray(out).reshape(logits.shape[:-1])


def correct_spans(starts, ends, gold_starts: Array, gold_ends: Array) -> Array:
    """Spans equal to a gold ``(start, end)``: ``gold_* [..., A]`` int (-1 = none) -> ``[..., num_spans]`` bool."""
    hit = (gold_starts[..., :, None] == jnp.asarray(starts)) & (gold_ends[..., :, None] == jnp.asarray(ends))
    return jnp.any(hit, axis=-2)


def correct_spans_reference(length: int, max_width: int, gold_starts, gold_ends) -> np.ndarray:
    """Slow twin for one row set ``gold_* [R, A]``: loops over rows, spans and answers."""
    spans = span_candidates_reference(length, max_width)
    gs, ge = np.asarray(gold_starts), np.asarray(gold_ends)
    return np.array([[any(gs[r, a] == s and ge[r, a] == e for a in range(gs.shape[1])) for s, e in spans]
                     for r in range(gs.shape[0])], bool).reshape(gs.shape[0], len(spans))
