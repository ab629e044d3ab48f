"""The static KV cache (``layers.kv_cache``) against its loop twins, attention through it against the full causal
pass and against HF's concatenation of past and new keys (decoding in steps of random sizes, spare slots, padding),
and BERT's post-LN layer (``layers.post_ln_layer``) against its float64 twin, with cross-attention and cache."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers import attention, kv_cache
from layers.activations import get_activation
from layers.post_ln_layer import PostLNLayer, post_ln_layer_reference

SETTINGS = settings(max_examples=10, deadline=None)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(0, 5), st.integers(0, 10**6))
def test_write_and_masks_match_twins(batch, new, index, seed):
    rng = np.random.RandomState(seed)
    slots = index + new + rng.randint(0, 3)
    cache = (rng.randn(batch, slots, 2, 3).astype(np.float32), rng.randn(batch, slots, 2, 3).astype(np.float32))
    key, value = rng.randn(batch, new, 2, 3).astype(np.float32), rng.randn(batch, new, 2, 3).astype(np.float32)
    got = kv_cache.write_kv(tuple(map(jnp.asarray, cache)), jnp.asarray(key), jnp.asarray(value), jnp.int32(index))
    want = kv_cache.write_kv_reference(cache, key, value, index)
    chex.assert_trees_all_equal(tuple(np.asarray(g) for g in got), want)
    slot_mask = rng.rand(batch, slots) < 0.7
    new_mask = rng.rand(batch, new) < 0.7
    got = kv_cache.decoding_masks(jnp.asarray(slot_mask), jnp.int32(index), jnp.asarray(new_mask))
    want = kv_cache.decoding_masks_reference(slot_mask, index, new_mask)
    chex.assert_trees_all_equal(tuple(np.asarray(g) for g in got), want)


def _random_params(params, rng, scale=0.3):
    return jax.tree.map(lambda p: p + scale * jnp.asarray(rng.randn(*p.shape), p.dtype), params)


def test_attention_through_the_cache_equals_the_full_causal_pass():
    """Prefill 3 tokens, then one at a time, into a cache with spare slots; a padded token in the middle of row 1
    stays invisible to later queries, as in the full pass."""
    rng = np.random.RandomState(0)
    b, length, hidden, slots = 2, 7, 8, 10
    x = jnp.asarray(rng.randn(b, length, hidden) + 2.0, jnp.float32)
    keep = np.ones((b, length), bool)
    keep[1, 4] = False
    module = attention.Attention(num_heads=2, head_dim=4)
    params = _random_params(module.init(jax.random.PRNGKey(0), x)["params"], rng)
    causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
    full, _, _ = module.apply({"params": params}, x, attention.padding_mask(jnp.asarray(keep)) & causal)

    cache = kv_cache.init_kv_cache(1, b, slots, 2, 4)
    layer = (cache.key[0], cache.value[0])
    slot_mask, index, outs = cache.mask, 0, []
    step = jax.jit(lambda p, x, layer, m, slot_mask, i: module.apply(
        {"params": p}, x, kv_cache.decoding_masks(slot_mask, i, m)[0], kv_cache=layer, cache_index=i))
    for start, stop in ((0, 3),) + tuple((t, t + 1) for t in range(3, length)):
        new_mask = jnp.asarray(keep[:, start:stop])
        out, weights, layer = step(params, x[:, start:stop], layer, new_mask, slot_mask, jnp.int32(index))
        slot_mask = kv_cache.decoding_masks(slot_mask, jnp.int32(index), new_mask)[1]
        assert weights.shape == (b, 2, stop - start, slots)
        assert float(jnp.max(weights[..., stop:])) == 0.0  # unfilled slots get no weight
        outs.append(out)
        index = stop
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def layer_and_params():
    rng = np.random.RandomState(1)
    module = PostLNLayer(num_heads=2, intermediate_size=12, hidden_act="gelu", layer_norm_eps=1e-12)
    dummy = jnp.zeros((1, 1, 8))
    params = nn.unbox(module.init(jax.random.PRNGKey(1), dummy, None, encoder_states=dummy)["params"])
    return module, _random_params(params, rng)


def test_post_ln_layer_matches_twin_with_cross_attention(layer_and_params):
    module, params = layer_and_params
    rng = np.random.RandomState(2)
    x = rng.randn(2, 6, 8) * 0.5 + 20.0  # large mean: the LayerNorms need the two-pass variance
    enc = rng.randn(2, 4, 8)
    mask = np.tril(np.ones((6, 6), bool))[None, None] & (np.arange(6) < np.array([[6], [4]]))[:, None, None, :]
    enc_mask = (np.arange(4) < np.array([[4], [2]]))[:, None, None, :]
    act = get_activation("gelu")
    for with_cross in (False, True):
        kw = dict(encoder_states=jnp.asarray(enc, jnp.float32), encoder_mask=jnp.asarray(enc_mask)) if with_cross else {}
        y, weights, cross_weights, cache = module.apply({"params": params}, jnp.asarray(x, jnp.float32),
                                                        jnp.asarray(mask), **kw)
        want = post_ln_layer_reference(x, params, mask, num_heads=2, activation=act, epsilon=1e-12,
                                       **({"encoder_states": enc, "encoder_mask": enc_mask} if with_cross else {}))
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
        assert weights.shape == (2, 2, 6, 6) and cache is None
        assert (cross_weights is None) != with_cross


def test_post_ln_layer_stores_and_reuses_the_encoder_keys(layer_and_params):
    """The first cached call projects the encoder's keys; later calls reuse them without encoder_states."""
    module, params = layer_and_params
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.randn(2, 5, 8), jnp.float32)
    enc = jnp.asarray(rng.randn(2, 4, 8), jnp.float32)
    causal = jnp.tril(jnp.ones((5, 5), bool))[None, None]
    full = module.apply({"params": params}, x, causal, encoder_states=enc)[0]
    cache = kv_cache.init_kv_cache(1, 2, 5, 2, 4)
    layer_cache = (cache.key[0], cache.value[0], None, None)
    mask, slots = kv_cache.decoding_masks(cache.mask, jnp.int32(0), jnp.ones((2, 3), bool))
    first, _, _, layer_cache = module.apply({"params": params}, x[:, :3], mask, encoder_states=enc,
                                            cache=layer_cache, cache_index=jnp.int32(0))
    assert layer_cache[2].shape == (2, 4, 2, 4)
    mask, _ = kv_cache.decoding_masks(slots, jnp.int32(3), jnp.ones((2, 2), bool))
    rest, _, _, _ = module.apply({"params": params}, x[:, 3:], mask, cache=layer_cache, cache_index=jnp.int32(3))
    chex.assert_trees_all_close(jnp.concatenate([first, rest], axis=1), full, rtol=1e-5, atol=1e-5)


def test_relative_positions_refuse_a_cache():
    x = jnp.zeros((1, 2, 8))
    module = attention.Attention(num_heads=2, head_dim=4, position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="position_embedding_type"):
        module.init(jax.random.PRNGKey(0), x, keys_from=x)


@jax.jit
def _attend(cache_k, cache_v, cache_valid, k, v, valid, q, index):
    cache_k, cache_v, cache_valid = (kv_cache.kv_cache_write(c, x, index)
                                     for c, x in ((cache_k, k), (cache_v, v), (cache_valid, valid)))
    mask = kv_cache.kv_cache_mask(cache_valid, index, q.shape[1])
    return attention.dot_product_attention(q, cache_k, cache_v, mask=mask)[0], cache_k, cache_v, cache_valid


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
        ref = kv_cache.cached_attention_reference(keys[:, :start], values[:, :start], valid[:, :start],
                                                  keys[:, new], values[:, new], valid[:, new], queries[:, new])
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
        start += t
    np.testing.assert_array_equal(np.asarray(cache[2])[:, :total], valid)
    assert not np.asarray(cache[2])[:, total:].any()
