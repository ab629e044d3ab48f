"""layers.kv_cache against its twin (HF's concatenation of past and new keys): decoding in steps of random sizes
through a static cache with spare slots and padding gives the attention of the concatenated sequence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.attention import dot_product_attention
from layers.kv_cache import cached_attention_reference, kv_cache_mask, kv_cache_write


@jax.jit
def _attend(cache_k, cache_v, cache_valid, k, v, valid, q, index):
    cache_k, cache_v, cache_valid = (kv_cache_write(c, x, index) for c, x in ((cache_k, k), (cache_v, v),
                                                                             (cache_valid, valid)))
    out, _ = dot_product_attention(q, cache_k, cache_v, mask=kv_cache_mask(cache_valid, index, q.shape[1]))
    return out, cache_k, cache_v, cache_valid


@settings(max_examples=6, deadline=None)
@given(steps=st.lists(st.integers(1, 3), min_size=1, max_size=4), spare=st.integers(0, 3), seed=st.integers(0, 99))
def test_cached_attention_equals_concatenation(steps, spare, seed):
    rng = np.random.RandomState(seed)
    b, h, d = 2, 2, 4
    total = sum(steps)
    keys, values, queries = (rng.randn(b, total, h, d).astype(np.float32) for _ in range(3))
    valid = rng.rand(b, total) > 0.3
    valid[:, 0] = True  # every query sees at least one key (a fully masked row has no defined softmax)
    slots = total + spare
    cache = (np.zeros((b, slots, h, d), np.float32), np.zeros((b, slots, h, d), np.float32), np.zeros((b, slots), bool))
    start = 0
    for t in steps:
        new = slice(start, start + t)
        out, *cache = _attend(*cache, keys[:, new], values[:, new], valid[:, new], queries[:, new], jnp.int32(start))
        ref = cached_attention_reference(keys[:, :start], values[:, :start], valid[:, :start], keys[:, new],
                                         values[:, new], valid[:, new], queries[:, new])
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
        start += t
    np.testing.assert_array_equal(np.asarray(cache[2])[:, :total], valid)
    assert not np.asarray(cache[2])[:, total:].any()
