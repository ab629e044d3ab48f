"""A static-shape key/value cache for incremental (autoregressive) decoding with causal self-attention.

The cache holds ``max_length`` slots per row, of which the first ``index`` are filled; ``t`` new tokens are written
at slots ``index .. index + t - 1`` with ``lax.dynamic_update_slice`` (no concatenation, so every decoding step has
the same shapes and one compiled program serves all of them). A new token at slot ``index + i`` attends to the
filled slots up to and including its own, and only to slots that hold a real (non-padding) token. Unfilled slots are
never visible, so a cache may be longer than the sequence decoded into it.

Layouts: slot validity ``[batch, max_length]`` bool, ``index`` an int32 scalar; keys/values either in the key layout
of ``layers.attention.dot_product_attention`` ``[batch, max_length, heads, head_dim]`` or heads-major ``[batch, heads,
max_length, head_dim]`` (``axis=2``). A decoding loop keeps the heads-major one: the attention matmuls batch over
(batch, heads), and with those axes leading XLA reads the cache in place, where the other layout costs a transposed
copy of every layer's cache at every step.

``cached_attention_reference`` is the slow twin: HF's way, concatenating the past keys with the new ones and
attending causally over the concatenation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def kv_cache_write(cache: Array, new: Array, index: Array, axis: int = 1) -> Array:
    """``cache`` with ``new`` written at slots ``index .. index + t - 1`` of its length axis ``axis`` (``new`` has
    ``t`` there and the cache's sizes elsewhere).

    The same write serves keys and values (either layout) and slot validity (``[batch, max_length]`` bool, False for
    padding). The caller keeps ``index + t <= max_length`` (a traced index cannot be checked)."""
    zero = jnp.zeros((), jnp.int32)
    start = [zero] * cache.ndim
    start[axis] = jnp.asarray(index, jnp.int32)
    return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), tuple(start))


def kv_cache_mask(cache_valid: Array, index: Array, length: int) -> Array:
    """Boolean ``[batch, 1, length, max_length]`` mask of ``length`` new tokens (written at slots ``index ..``) over
    the cache slots: slot j is visible to new token i iff ``j <= index + i`` and ``cache_valid[b, j]``."""
    max_length = cache_valid.shape[1]
    query_slot = jnp.asarray(index, jnp.int32) + jnp.arange(length, dtype=jnp.int32)
    causal = jnp.arange(max_length, dtype=jnp.int32)[None, :] <= query_slot[:, None]  # [length, max_length]
    return causal[None, None] & cache_valid[:, None, None, :]


def cached_attention_reference(past_key, past_value, past_valid, key, value, valid, query):
    """Slow twin (tests only): attention of ``query [b, t, h, d]`` over ``concat(past, new)`` keys, causal over the
    concatenation, padding keys masked, as HF's cached decoding computes it. Returns ``[b, t, h, d]`` float64."""
    import numpy as np

    from layers.attention import dot_product_attention_reference

    keys = np.concatenate([np.asarray(past_key), np.asarray(key)], axis=1)
    values = np.concatenate([np.asarray(past_value), np.asarray(value)], axis=1)
    valid_all = np.concatenate([np.asarray(past_valid, bool), np.asarray(valid, bool)], axis=1)
    past, t = past_key.shape[1], key.shape[1]
    causal = np.arange(past + t)[None, :] <= (past + np.arange(t))[:, None]
    mask = causal[None, None] & valid_all[:, None, None, :]
    return dot_product_attention_reference(query, keys, values, mask=mask)[0]
