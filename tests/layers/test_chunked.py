"""chunked_apply: values and gradients equal the unchunked function; O(chunk) compiled memory; errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.chunked import chunked_apply, chunked_apply_reference

LENGTH, EMBED, MLP = 24, 8, 16


def _ff_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.normal(size=(EMBED, MLP)) / np.sqrt(EMBED), jnp.float32),
        "b1": jnp.asarray(rng.normal(size=(MLP,)), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(MLP, EMBED)) / np.sqrt(MLP), jnp.float32),
        "scale": jnp.asarray(1.0 + 0.1 * rng.normal(size=(EMBED,)), jnp.float32),
    }


def _feed_forward(params: dict, x: jax.Array) -> jax.Array:
    """LayerNorm -> Dense -> gelu -> Dense: per position, closes over nothing but its params."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    h = (x - mean) * jax.lax.rsqrt(var + 1e-12) * params["scale"]
    return jax.nn.gelu(h @ params["w1"] + params["b1"], approximate=False) @ params["w2"]


def _ff_loss(params, x, chunk_size, axis):
    # fn closes over params: their gradient must still flow through the chunk loop.
    out = chunked_apply(lambda v: _feed_forward(params, v), x, chunk_size=chunk_size, axis=axis)
    return jnp.sum(jnp.sin(out) * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape) / out.size), out


_ff_value_and_grad = jax.jit(
    jax.value_and_grad(_ff_loss, argnums=(0, 1), has_aux=True), static_argnames=("chunk_size", "axis")
)


@functools.partial(jax.jit, static_argnames=("chunk_size", "axis"))
def _reference(params, x, chunk_size, axis):
    return chunked_apply_reference(lambda v: _feed_forward(params, v), x, chunk_size=chunk_size, axis=axis)


@settings(max_examples=10, deadline=None)
@given(
    # 0: unchunked; 48 >= LENGTH: unchunked too; 3 and 8 divide LENGTH.
    chunk_size=st.sampled_from([0, 3, 8, 48]),
    seed=st.integers(0, 2**16),
)
def test_feed_forward_values_and_gradients_match_unchunked(chunk_size, seed):
    axis, shape = 1, (2, LENGTH, EMBED)
    params = _ff_params(seed)
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=shape), jnp.float32)
    (loss, out), grads = _ff_value_and_grad(params, x, chunk_size=chunk_size, axis=axis)
    (loss0, out0), grads0 = _ff_value_and_grad(params, x, chunk_size=0, axis=axis)
    assert out.shape == shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(out0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-6)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads0)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # And against the slow twin (HF's slice-and-concatenate loop).
    ref = _reference(params, x, chunk_size=chunk_size, axis=axis)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_other_chunk_axes():
    # Negative axes are normalised per leaf; a position-wise scaling shows where chunks land.
    x = jnp.arange(2 * LENGTH * 3, dtype=jnp.float32).reshape(2, LENGTH, 3)
    weights = jnp.arange(LENGTH, dtype=jnp.float32)
    out = chunked_apply(lambda v: v * v.sum(-1, keepdims=True), x, chunk_size=6, axis=-2)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x * x.sum(-1, keepdims=True)))
    out = chunked_apply(lambda v: v[0][:, None, None] + v[1], (weights, x.transpose(1, 0, 2)), chunk_size=4, axis=0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(weights[:, None, None] + x.transpose(1, 0, 2)))
    axis, shape = 0, (LENGTH, 2, EMBED)
    params = _ff_params(1)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    (_, out), grads = _ff_value_and_grad(params, x, chunk_size=6, axis=axis)
    (_, out0), grads0 = _ff_value_and_grad(params, x, chunk_size=0, axis=axis)
    np.testing.assert_allclose(np.asarray(out), np.asarray(out0), rtol=1e-6, atol=1e-6)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads0)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def _lm_loss(params, hidden, labels, *, chunk_size):
    """A chunked LM head with the loss folded in: per-position NLL over a large vocabulary."""

    def per_position(inputs):
        h, y = inputs
        logits = h @ params["kernel"] + params["bias"]
        log_z = jax.nn.logsumexp(logits, axis=-1)
        return log_z - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]

    return jnp.mean(chunked_apply(per_position, (hidden, labels), chunk_size=chunk_size))


def _lm_inputs(length: int, embed: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "kernel": jnp.asarray(rng.normal(size=(embed, vocab)) / np.sqrt(embed), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(vocab,)), jnp.float32),
    }
    hidden = jnp.asarray(rng.normal(size=(2, length, embed)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, vocab, (2, length)), jnp.int32)
    return params, hidden, labels


def test_lm_head_pytree_inputs_values_and_gradients_match_unchunked():
    params, hidden, labels = _lm_inputs(LENGTH, EMBED, 64)
    grad = jax.jit(jax.value_and_grad(_lm_loss, argnums=(0, 1)), static_argnames=("chunk_size",))
    loss, grads = grad(params, hidden, labels, chunk_size=6)
    loss0, grads0 = grad(params, hidden, labels, chunk_size=0)
    np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-6)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads0)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def _temp_bytes(chunk_size: int) -> int:
    params, hidden, labels = _lm_inputs(2048, 64, 4096)
    fn = jax.value_and_grad(functools.partial(_lm_loss, chunk_size=chunk_size), argnums=(0, 1))
    return jax.jit(fn).lower(params, hidden, labels).compile().memory_analysis().temp_size_in_bytes


def test_chunked_lm_head_compiled_temp_memory_is_o_chunk():
    # [2, 2048] positions x 4096 vocab: unchunked value_and_grad holds [4096, 4096] fp32 logits (64 MiB) and their
    # cotangent; with chunks of 128 only [256, 4096] at a time, in the forward and (thanks to the checkpointed
    # chunk body) in the backward scan.
    unchunked, chunked = _temp_bytes(0), _temp_bytes(128)
    print(f"temp bytes: unchunked {unchunked / 2**20:.1f} MiB, chunk 128 {chunked / 2**20:.1f} MiB")
    assert unchunked > 64 * 2**20
    assert chunked < 0.2 * unchunked


def test_bf16_runs_and_keeps_dtype():
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), _ff_params(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, LENGTH, EMBED)), jnp.bfloat16)

    @jax.jit
    def run(v):
        out, vjp = jax.vjp(lambda u: chunked_apply(lambda c: _feed_forward(params, c), u, chunk_size=8), v)
        return out, vjp(jnp.ones_like(out))[0], _feed_forward(params, v)

    out, grads, full = run(x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(full, np.float32), atol=5e-2)
    assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))


def test_errors():
    x = jnp.zeros((2, LENGTH, EMBED))
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        chunked_apply(lambda v: v, x, chunk_size=5)
    with pytest.raises(ValueError, match="chunk_size must be a non-negative int"):
        chunked_apply(lambda v: v, x, chunk_size=-1)
    with pytest.raises(ValueError, match="same size along axis"):
        chunked_apply(lambda v: v, (x, jnp.zeros((2, LENGTH + 1))), chunk_size=4)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        chunked_apply(lambda v: v, x, chunk_size=4, axis=3)
    with pytest.raises(ValueError, match="must keep the chunked axis"):
        chunked_apply(lambda v: v.sum(axis=1), x, chunk_size=4)


@pytest.mark.parametrize("length,chunk,min_chunk,expected", [(24, 4, 10, 12), (20, 4, 12, 20), (24, 4, 0, 4),
                                                             (24, 8, 8, 8), (24, 0, 16, 24)])
def test_min_chunk_coarsens_to_a_dividing_multiple(length, chunk, min_chunk, expected):
    """min_chunk picks the smallest multiple of chunk_size >= min_chunk dividing the length (else unchunked);
    values are unchanged."""
    seen = []
    x = jnp.arange(2 * length * 3, dtype=jnp.float32).reshape(2, length, 3)

    def fn(t):
        seen.append(t.shape[1])
        return jnp.tanh(t) * 2.0

    out = chunked_apply(fn, x, chunk_size=chunk, min_chunk=min_chunk)
    assert seen[-1] == expected
    np.testing.assert_allclose(np.asarray(out), np.asarray(jnp.tanh(x) * 2.0), rtol=1e-6)


def test_min_chunk_does_not_hide_a_chunk_size_that_does_not_divide_the_length():
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        chunked_apply(lambda t: t, jnp.zeros((1, 20, 2)), chunk_size=6, min_chunk=12)
