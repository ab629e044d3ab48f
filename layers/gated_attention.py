"""Attention weights of MEGA's single-head gated attention: softmax, laplace or relu2 on biased scores.

Shapes: ``query [..., q, z]``, ``key [..., k, z]``, ``bias [..., q, k]`` (broadcastable), masks broadcastable to
``[..., q, k]``; the leading axes are typically ``[batch, chunks]``. Returns weights ``[..., q, k]`` in fp32.

- ``softmax``: ``softmax(q k^T / sqrt(z) + bias)`` over the keys that are ``visible`` (causal / same chunk / filled
  cache slot) and not padding. When every visible key of a row is padding, the padding mask is dropped for that row:
  HF drops it when a whole chunk is padding (so a fully padded chunk attends uniformly instead of producing NaN);
  restricting the rule to visible keys gives the same result wherever HF is finite and keeps it causal, so cached
  decoding (which cannot see future padding) agrees with the full pass.
- ``laplace`` / ``relu2`` (element attention): ``f(q k^T / n + bias) * key_mask * visible``, with ``n`` the number of
  visible keys in the causal case (HF: ``causal_mask.sum(-1)``, i.e. position in chunk + 1) and the number of
  non-padding keys (at least 1) otherwise. No scaling by sqrt(z). Rows need not sum to 1.

Masks use ``jnp.where`` with the dtype's most negative finite value, never -inf, so no NaN can appear.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from layers.activations import laplace, relu2

Array = jax.Array

ATTENTION_FUNCTIONS = ("softmax", "laplace", "relu2")
_ELEMENT = {"laplace": laplace, "relu2": relu2}


def gated_attention_weights(query: Array, key: Array, bias: Array, *, activation: str, causal: bool,
                            key_mask: Array | None = None, visible: Array | None = None) -> Array:
    """Attention weights ``[..., q, k]`` fp32 (see the module docstring).

    Args:
      query / key: ``[..., q, z]`` / ``[..., k, z]``.
      bias: relative position bias, broadcastable to ``[..., q, k]``.
      activation: ``softmax``, ``laplace`` or ``relu2``.
      causal: element attention normalises by the number of visible keys (True) or of non-padding keys (False).
      key_mask: bool, True for real keys, broadcastable to ``[..., q, k]`` (typically ``[..., 1, k]``).
      visible: bool, True where query i may see key j, broadcastable to ``[..., q, k]``.
    """
    if activation not in ATTENTION_FUNCTIONS:
        raise ValueError(f"attention_activation={activation!r}; expected one of {ATTENTION_FUNCTIONS}")
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
    shape = jnp.broadcast_shapes(query.shape[:-1] + (key.shape[-2],), jnp.shape(bias))
    vis = jnp.ones(shape, bool) if visible is None else jnp.broadcast_to(visible, shape)
    keep = vis if key_mask is None else vis & jnp.broadcast_to(key_mask, shape)
    scores = jnp.einsum("...qz,...kz->...qk", query, key, precision=jax.lax.Precision.HIGHEST)
    if activation == "softmax":
        scores = scores * (query.shape[-1] ** -0.5) + bias
        if key_mask is not None:
            keep = jnp.where(jnp.any(keep, axis=-1, keepdims=True), keep, vis)
        scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(scores, axis=-1)
    if causal:
        lengths = jnp.sum(vis, axis=-1, keepdims=True)
    else:
        lengths = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
    weights = _ELEMENT[activation](scores / lengths.astype(jnp.float32) + bias)
    return jnp.where(keep, weights, 0.0)


def gated_attention_weights_reference(query, key, bias, *, activation, causal, key_mask=None):
    """Slow twin (tests only), float64 numpy over one ``[q, k]`` block of a full pass (visible = causal or all).

    ``query [q, z]``, ``key [k, z]``, ``bias [q, k]``, ``key_mask [k]``; rows loop explicitly.
    """
    query, key, bias = (np.asarray(a, np.float64) for a in (query, key, bias))
    nq, nk = bias.shape
    mask = np.ones(nk, bool) if key_mask is None else np.asarray(key_mask, bool)
    out = np.zeros((nq, nk))
    for i in range(nq):
        vis = np.arange(nk) <= i if causal else np.ones(nk, bool)
        keep = vis & mask
        s = query[i] @ key.T
        if activation == "softmax":
            if not keep.any():
                keep = vis
            s = s / math.sqrt(query.shape[-1]) + bias[i]
            e = np.where(keep, np.exp(s - s[keep].max()), 0.0)
            out[i] = e / e.sum()
        else:
            n = vis.sum() if causal else max(keep.sum(), 1)
            x = s / n + bias[i]
            if activation == "relu2":
                w = np.maximum(x, 0.0) ** 2
            else:
                from scipy.special import erf

                w = 0.5 * (1.0 + erf((x - 0.707107) / (0.282095 * math.sqrt(2.0))))
            out[i] = np.where(keep, w, 0.0)
    return out
