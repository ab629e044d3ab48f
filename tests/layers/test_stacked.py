"""The layer stack (``layers.stacked.scan_layers``) against its Python-loop twin: values, per-layer outputs, the
decode cache, per-layer keys, shared rows (ALBERT's groups), several layer kinds (Reformer's local / LSH), and the
residual policies and unroll factors, which may change what is stored but never a value or a gradient."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.stacked import SCAN_RESIDUALS, PerLayer, layer_key, scan_layers, scan_layers_reference, split_layers

WIDTH = 6


def body(params, h, *, key, cache, index):
    """A layer that uses everything the stack hands it: params, a key (noise), its cache slice and its index."""
    y = jnp.tanh(h @ params["w"] + params["b"]) + h
    if key is not None:
        y = y + 0.1 * jax.random.normal(key, y.shape)
    y = y + 0.01 * index.astype(y.dtype)
    new_cache = None if cache is None else cache + jnp.mean(y, axis=0)
    return y, {"mean": jnp.mean(y), "h": y}, new_cache


def _params(rows, seed):
    rng = np.random.RandomState(seed)
    return {"w": jnp.asarray(0.5 * rng.randn(rows, WIDTH, WIDTH), jnp.float32),
            "b": jnp.asarray(rng.randn(rows, WIDTH), jnp.float32)}


def _assert_outputs_equal(got, want, tol=1e-6):
    assert len(got.outputs) == len(want.outputs)
    chex.assert_trees_all_close(got.carry, want.carry, rtol=tol, atol=tol)
    chex.assert_trees_all_close(got.outputs, want.outputs, rtol=tol, atol=tol)
    chex.assert_trees_all_close(got.cache, want.cache, rtol=tol, atol=tol)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 5), st.sampled_from([1, 2, 5]), st.sampled_from(sorted(SCAN_RESIDUALS)), st.booleans(),
       st.booleans(), st.integers(0, 10**6))
def test_equals_the_loop_twin(depth, unroll, residuals, with_key, with_cache, seed):
    params = _params(depth, seed)
    h = jnp.asarray(np.random.RandomState(seed + 1).randn(3, WIDTH), jnp.float32)
    key = jax.random.PRNGKey(seed) if with_key else None
    cache = jnp.zeros((depth, WIDTH)) if with_cache else None
    got = scan_layers(body, params, h, key=key, residuals=residuals, unroll=unroll, cache=cache)
    want = scan_layers_reference(body, params, h, key=key, cache=cache)
    _assert_outputs_equal(got, want)


def test_residual_policies_and_unroll_change_no_gradient():
    params, h, key = _params(4, 0), jnp.ones((3, WIDTH)), jax.random.PRNGKey(1)

    def loss(params, residuals, unroll):
        out = scan_layers(body, params, h, key=key, residuals=residuals, unroll=unroll)
        return jnp.sum(out.carry ** 2) + sum(o["mean"] for o in out.outputs)

    want = jax.grad(lambda p: jnp.sum(scan_layers_reference(body, p, h, key=key).carry ** 2)
                    + sum(o["mean"] for o in scan_layers_reference(body, p, h, key=key).outputs))(params)
    for residuals in SCAN_RESIDUALS:
        for unroll in (1, 4):
            got = jax.jit(jax.grad(loss), static_argnums=(1, 2))(params, residuals, unroll)
            chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_shared_rows_follow_param_index():
    """ALBERT's groups: layer l runs row param_index[l]; keys still per layer, so shared rows draw apart."""
    params, h, key = _params(2, 3), jnp.ones((2, WIDTH)), jax.random.PRNGKey(0)
    index = [0, 0, 1, 1, 1]
    got = scan_layers(body, params, h, key=key, param_index=index)
    want = scan_layers_reference(body, params, h, key=key, param_index=index)
    _assert_outputs_equal(got, want)
    # One row for every layer: indexed statically (loop-invariant), same values.
    shared = scan_layers(body, params, h, key=key, param_index=[1] * 3)
    _assert_outputs_equal(shared, scan_layers_reference(body, params, h, key=key, param_index=[1] * 3))
    # The layers of one row still use different keys (else every layer's noise would be the same).
    a, b = (layer_key(key, i) for i in (0, 1))
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_several_layer_kinds_interleave_like_a_loop():
    """P kinds: layer l is kind l % P on row l // P, keyed by its global index l (as layers.reversible)."""
    p0, p1 = _params(3, 4), _params(3, 5)

    def twice(params, h, *, key, cache, index):
        y, out, new_cache = body(params, h, key=key, cache=cache, index=index)
        return 2.0 * y, out, new_cache

    h, key = jnp.ones((2, WIDTH)), jax.random.PRNGKey(2)
    cache = (jnp.zeros((3, WIDTH)), jnp.ones((3, WIDTH)))
    got = scan_layers((body, twice), (p0, p1), h, key=key, cache=cache)
    carry, outputs, caches = h, [], [[], []]
    for layer in range(6):
        kind, row = layer % 2, layer // 2
        fn, params = (body, p0) if kind == 0 else (twice, p1)
        carry, out, c = fn(jax.tree.map(lambda p: p[row], params), carry, key=jax.random.fold_in(key, layer),
                           cache=cache[kind][row], index=jnp.int32(layer))
        outputs.append(out)
        caches[kind].append(c)
    chex.assert_trees_all_close(got.carry, carry, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(got.outputs, tuple(outputs), rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(got.cache, tuple(jnp.stack(c) for c in caches), rtol=1e-6, atol=1e-6)


def test_first_layer_offsets_keys_and_indices():
    """A stack run in two parts (ALBERT's last layer apart) keys its layers as one run would."""
    params, h, key = _params(4, 6), jnp.ones((2, WIDTH)), jax.random.PRNGKey(3)
    whole = scan_layers(body, params, h, key=key)
    first = scan_layers(body, jax.tree.map(lambda p: p[:3], params), h, key=key)
    last = scan_layers(body, jax.tree.map(lambda p: p[3:], params), first.carry, key=key, first_layer=3)
    chex.assert_trees_all_close(last.carry, whole.carry, rtol=1e-6, atol=1e-6)


def test_bad_arguments_name_the_rule():
    params, h = _params(2, 0), jnp.ones((2, WIDTH))
    with pytest.raises(ValueError, match="residuals='most'"):
        scan_layers(body, params, h, residuals="most")
    with pytest.raises(ValueError, match="unroll=0"):
        scan_layers(body, params, h, unroll=0)
    with pytest.raises(ValueError, match="same leading"):
        scan_layers(body, {"w": params["w"], "b": params["b"][:1]}, h)
    with pytest.raises(ValueError, match="param_index needs a single body"):
        scan_layers((body, body), (params, params), h, param_index=[0, 1])
    with pytest.raises(ValueError, match="2 bodies need 2 stacked param trees"):
        scan_layers((body, body), (params,), h)
    with pytest.raises(ValueError, match="param_index has 2 entries for 3 layers"):
        scan_layers(body, params, h, param_index=[0, 1], num_layers=3)


def test_per_layer_params_run_unrolled_with_the_same_results():
    """Split params (and caches) run as a Python loop: the values, keys, outputs, cache and gradients of the scan."""
    params, h, key, residuals = _params(3, 5), jnp.ones((2, WIDTH)), jax.random.PRNGKey(2), "dots"
    cache = jnp.asarray(np.random.RandomState(6).randn(3, WIDTH), jnp.float32)
    got = scan_layers(body, split_layers(params), h, key=key, residuals=residuals, first_layer=2,
                      cache=PerLayer(cache[l] for l in range(3)))
    want = scan_layers(body, params, h, key=key, first_layer=2, cache=cache)
    assert isinstance(got.cache, PerLayer)
    _assert_outputs_equal(got._replace(cache=jnp.stack(got.cache)), want)
    grad = lambda split: jax.grad(lambda p: jnp.sum(scan_layers(body, split(p), h, key=key,
                                                                residuals=residuals).carry ** 2))(params)
    chex.assert_trees_all_close(grad(split_layers), grad(lambda p: p), rtol=1e-5, atol=1e-6)
