"""layers.dropout: the hashed keep-mask against its numpy twin, its statistics, and Dropout's flax semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.dropout import Dropout, dropout, keep_mask, keep_mask_reference


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.lists(st.integers(1, 7), min_size=1, max_size=4), st.floats(0.0, 1.0))
def test_keep_mask_matches_numpy_twin(seed, shape, rate):
    key = jax.random.key(seed)
    seeds = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
    np.testing.assert_array_equal(np.asarray(keep_mask(key, shape, rate)), keep_mask_reference(seeds, shape, rate))


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5, 0.9])
def test_keep_rate_and_no_correlation(rate):
    n = 1 << 20
    a = np.asarray(keep_mask(jax.random.key(0), (n,), rate), np.float64)
    b = np.asarray(keep_mask(jax.random.key(1), (n,), rate), np.float64)
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(a.mean() - (1 - rate)) < 6 * sigma
    # neighbours within one mask and the same element under two keys are uncorrelated
    for u, v in ((a[:-1], a[1:]), (a, b), (a[: n // 2], a[n // 2:])):
        assert abs(np.corrcoef(u, v)[0, 1]) < 6 / np.sqrt(u.size), (u.size, np.corrcoef(u, v)[0, 1])


def test_rbg_and_threefry_keys_both_work_and_same_key_same_mask():
    for impl in ("threefry2x32", "rbg"):
        key = jax.random.key(3, impl=impl)
        m1, m2 = keep_mask(key, (64, 33), 0.3), jax.jit(lambda k: keep_mask(k, (64, 33), 0.3))(key)
        np.testing.assert_array_equal(np.asarray(m1), np.asarray(m2))
        assert not np.array_equal(np.asarray(m1), np.asarray(keep_mask(jax.random.fold_in(key, 1), (64, 33), 0.3)))


def test_dropout_scales_kept_entries_and_broadcasts():
    x = jnp.asarray(np.random.RandomState(0).rand(4, 16, 8) + 1.0, jnp.float32)
    y = np.asarray(dropout(x, 0.25, jax.random.key(0), broadcast_dims=(2,)))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert np.all(kept == kept[..., :1])  # one draw shared along the broadcast axis
    assert 0 < kept.mean() < 1
    np.testing.assert_array_equal(np.asarray(dropout(x, 0.0, None)), np.asarray(x))
    assert not np.any(np.asarray(dropout(x, 1.0, jax.random.key(0))))
    with pytest.raises(ValueError, match="rate"):
        dropout(x, 1.5, jax.random.key(0))


def test_module_follows_flax_dropout_semantics():
    x = jnp.ones((2, 5, 3))
    layer = Dropout(0.5)
    np.testing.assert_array_equal(np.asarray(layer.apply({}, x, deterministic=True)), np.asarray(x))
    y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0}
    with pytest.raises(Exception):  # no "dropout" stream: flax's own error
        layer.apply({}, x, deterministic=False)
    with pytest.raises(Exception):  # deterministic given nowhere: flax's merge_param error
        layer.apply({}, x)


def test_mask_is_sharding_invariant():
    """A function of the global index: the same mask whatever the mesh lays it out on."""
    mesh = jax.make_mesh((8,), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    key = jax.random.key(5)
    f = jax.jit(lambda x, k: dropout(x, 0.3, k), out_shardings=sharding)
    x = jax.device_put(jnp.ones((64, 16)), sharding)
    np.testing.assert_array_equal(np.asarray(f(x, key)), np.asarray(dropout(jnp.ones((64, 16)), 0.3, key)))


def test_masks_beyond_the_uint32_counter(monkeypatch):
    """A mask with more elements than the uint32 counter (LSH dropout at 64K tokens: 8.6e9) hashes each leading
    position into its own seed. Shown with the limit lowered to 64 elements: equal to the twin, blocks equal to
    slices of the whole, rows distinct, the keep rate as asked; within the limit the mask is unchanged."""
    import layers.dropout as module

    key = jax.random.key(7)
    seeds = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
    small = np.asarray(keep_mask(key, (4, 4, 4), 0.4))
    monkeypatch.setattr(module, "_MAX_ELEMENTS", 64)
    np.testing.assert_array_equal(np.asarray(keep_mask(key, (4, 4, 4), 0.4)), small)  # at the limit: as before
    shape = (3, 5, 8, 8)  # 960 elements: the trailing (8, 8) block is counted, (3, 5) positions are seeded
    whole = np.asarray(keep_mask(key, shape, 0.4))
    np.testing.assert_array_equal(whole, keep_mask_reference(seeds, shape, 0.4))
    block = module.keep_mask_block(jnp.asarray(seeds), (2, 3, 8, 4), 0.4, global_shape=shape, offset=(1, 2, 0, 4))
    np.testing.assert_array_equal(np.asarray(block), whole[1:3, 2:5, :, 4:8])
    rows = whole.reshape(15, 64)
    assert len({r.tobytes() for r in rows}) == 15
    big = np.asarray(keep_mask(key, (16, 4, 64), 0.4))
    assert abs(big.mean() - 0.6) < 6 * np.sqrt(0.24 / big.size)
    with pytest.raises(ValueError, match=r"leading dimensions \(4096, 2\) have more than 2\*\*32"):
        monkeypatch.setattr(module, "_MAX_ELEMENTS", 1)
        keep_mask(key, (4096, 2), 0.4)
