"""Static key/value cache for decoding with dot-product attention: fixed shapes, a fill index, masks by slot.

Decoding under ``jax.jit`` needs every shape fixed before the first token, so the cache holds ``max_length`` slots
per layer and an ``index`` (tokens written so far). A call with ``t`` new tokens writes their keys and values at
slots ``index .. index + t - 1`` (``lax.dynamic_update_slice``, no concatenation, so every decoding step has the
same shapes and one compiled program serves all of them) and lets new token ``i`` (at position ``index + i``) see
slot ``j`` when ``j <= index + i`` and slot ``j`` holds a non-padding token. Unfilled slots are therefore never
visible, whatever they contain, and a cache may be longer than the sequence decoded into it. Cross-attention (a
decoder attending to encoder states) keeps the encoder's keys and values, projected once, beside them.

    cache = init_kv_cache(num_layers, batch, max_length, num_heads, head_dim)
    mask, slots = decoding_masks(cache.mask, cache.index, new_mask)    # [b, 1, t, T] bool, [b, T] bool
    key, value = write_kv((layer_key, layer_value), new_key, new_value, cache.index)   # per layer

The pieces underneath serve caches of other layouts: ``kv_cache_write`` writes along any length axis (keys and
values in the key layout of ``layers.attention.dot_product_attention`` ``[batch, max_length, heads, head_dim]``, or
heads-major ``[batch, heads, max_length, head_dim]`` with ``axis=2``, the layout BART's decoding loop keeps: the
attention matmuls batch over (batch, heads), and with those axes leading XLA reads the cache in place, where the
other layout costs a transposed copy of every layer's cache at every step), and ``kv_cache_mask`` is the mask of
``t`` new tokens over filled slots.

The caller keeps ``index + t <= max_length`` (a traced index cannot be checked; ``dynamic_update_slice`` would
clamp the start and overwrite the last slots). Twins (tests only): ``write_kv_reference`` and
``decoding_masks_reference`` (loops), ``cached_attention_reference`` (HF's way: concatenating the past keys with the
new ones and attending causally over the concatenation).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class KVCache:
    """Decoding state of a stack of attention layers.

    ``key``, ``value`` ``[layers, batch, max_length, heads, head_dim]``; ``mask [batch, max_length]`` bool (slot
    holds a non-padding token); ``index []`` int32 (tokens written so far). ``cross_key``, ``cross_value``
    ``[layers, batch, source_length, heads, head_dim]`` and ``cross_mask [batch, source_length]`` hold the
    encoder's keys and values once a cross-attending decoder has seen them, else None.
    """

    key: Array
    value: Array
    mask: Array
    index: Array
    cross_key: Array | None = None
    cross_value: Array | None = None
    cross_mask: Array | None = None


def init_kv_cache(num_layers: int, batch_size: int, max_length: int, num_heads: int, head_dim: int,
                  dtype: Any = jnp.float32) -> KVCache:
    """An empty cache (every slot unfilled, ``index`` 0, no cross-attention entries)."""
    for name, value in (("num_layers", num_layers), ("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    shape = (num_layers, batch_size, max_length, num_heads, head_dim)
    return KVCache(key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype),
                   mask=jnp.zeros((batch_size, max_length), bool), index=jnp.zeros((), jnp.int32))


def kv_cache_write(cache: Array, new: Array, index: Array, axis: int = 1) -> Array:
    """``cache`` with ``new`` written at slots ``index .. index + t - 1`` of its length axis ``axis`` (``new`` has
    ``t`` there and the cache's sizes elsewhere).

    The same write serves keys and values (either layout) and slot validity (``[batch, max_length]`` bool, False for
    padding)."""
    return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), jnp.asarray(index, jnp.int32), axis)


def kv_cache_mask(cache_valid: Array, index: Array, length: int) -> Array:
    """Boolean ``[batch, 1, length, max_length]`` mask of ``length`` new tokens (written at slots ``index ..``) over
    the cache slots: slot j is visible to new token i iff ``j <= index + i`` and ``cache_valid[b, j]`` (the
    validity after the write)."""
    max_length = cache_valid.shape[1]
    query_slot = jnp.asarray(index, jnp.int32) + jnp.arange(length, dtype=jnp.int32)
    causal = jnp.arange(max_length, dtype=jnp.int32)[None, :] <= query_slot[:, None]  # [length, max_length]
    return causal[None, None] & cache_valid[:, None, None, :]


def write_kv(cache: tuple[Array, Array], key: Array, value: Array, index: Array) -> tuple[Array, Array]:
    """One layer's cache ``(key, value) [batch, slots, heads, head_dim]`` with ``key``/``value [batch, t, heads,
    head_dim]`` written at slots ``index .. index + t - 1``."""
    cache_key, cache_value = cache
    return kv_cache_write(cache_key, key, index), kv_cache_write(cache_value, value, index)


def decoding_masks(slot_mask: Array, index: Array, new_mask: Array) -> tuple[Array, Array]:
    """Masks for ``t`` new tokens after ``index`` filled slots.

    ``slot_mask [batch, slots]`` bool (the cache's ``mask``), ``new_mask [batch, t]`` bool (the new tokens that are
    not padding) -> ``(attention mask [batch, 1, t, slots], new slot mask [batch, slots])``: new token ``i`` sees
    slot ``j`` iff ``j <= index + i`` and the slot holds a non-padding token after the write.
    """
    filled = kv_cache_write(slot_mask, new_mask.astype(bool), index)
    return kv_cache_mask(filled, index, new_mask.shape[1]), filled


def write_kv_reference(cache, key, value, index):
    """Slow twin of :func:`write_kv`: a copy and a Python loop over the new positions (tests only)."""
    import numpy as np

    out_key, out_value = (np.array(c) for c in cache)
    for i in range(key.shape[1]):
        out_key[:, int(index) + i] = np.asarray(key)[:, i]
        out_value[:, int(index) + i] = np.asarray(value)[:, i]
    return out_key, out_value


def decoding_masks_reference(slot_mask, index, new_mask):
    """Slow twin of :func:`decoding_masks`: explicit loops over queries and slots (tests only)."""
    import numpy as np

    slot_mask, new_mask = np.asarray(slot_mask, bool), np.asarray(new_mask, bool)
    batch, slots = slot_mask.shape
    t = new_mask.shape[1]
    filled = slot_mask.copy()
    filled[:, int(index):int(index) + t] = new_mask
    mask = np.zeros((batch, 1, t, slots), bool)
    for b in range(batch):
        for i in range(t):
            for j in range(slots):
                mask[b, 0, i, j] = filled[b, j] and j <= int(index) + i
    return mask, filled


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
