"""Banded attention with global tokens (``layers.banded``) against its dense-mask twin: outputs, probabilities and
gradients over windows (w = 1, odd, wider than half the sequence), lengths, global patterns (none, some, every
token global, a row of padding only) and values; the blocked form's FLOPs against the band's; the sequence-sharded
version (``layers.sequence_parallel.sharded_banded_attention``) against the unsharded one, dropout included, and its
per-device compiled memory falling with the shard count."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from layers.banded import GLOBAL, LOCAL, PAD, banded_attention, banded_attention_reference, global_tokens
from layers.sequence_parallel import sharded_banded_attention

TOL = 1e-5
B, HEADS, HEAD_DIM = 2, 2, 4
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# Shrinking would retrace for every candidate; each static configuration compiles once, hypothesis draws the data.
SETTINGS = settings(max_examples=4, deadline=None, phases=(Phase.explicit, Phase.generate))
# (one-sided window w, length, global slots G, chunk_length): w = 1 (HF's attention_window=2, which crashes HF), an
# odd w, a window longer than the sequence's half (two blocks), the purely local path (G = 0); two of them in steps
# of two blocks (a scan whose steps take their neighbours' edge blocks).
CONFIGS = [(1, 8, 8, None), (3, 12, 4, 6), (4, 8, 3, None), (2, 8, 0, 4)]


def dense_probs(probs, slots, w: int, length: int):
    """HF-layout ``[B, H, L, G + 2w + 1]`` weights -> ``[B, H, L, L]`` over the keys' positions."""
    g = probs.shape[-1] - (2 * w + 1)
    rows = jnp.arange(length)[:, None]
    keys = rows + jnp.arange(2 * w + 1)[None, :] - w  # [L, 2w+1]
    inside = (keys >= 0) & (keys < length)
    dense = jnp.zeros(probs.shape[:3] + (length,), probs.dtype)
    band = jnp.where(inside, probs[..., g:], 0.0)
    dense = dense.at[:, :, rows, jnp.clip(keys, 0, length - 1)].add(band)
    if g:
        weights = jnp.where(slots.valid[:, None, None, :], probs[..., :g], 0.0)  # [B, H, L, G]
        owner = jax.nn.one_hot(slots.index, length, dtype=probs.dtype)  # [B, G, L]
        dense = dense + jnp.einsum("bhlg,bgk->bhlk", weights, owner)
    return dense


def _outputs_and_grads(w, g, chunk, fn, q, k, v, qg, kg, vg, mode, cotangent):
    """``((out, dense probs, global probs), grads wrt (q, k, v, qg, kg, vg))`` of a linear loss on ``out``."""
    slots = global_tokens(mode, g) if g else None

    def loss(q, k, v, qg, kg, vg):
        glob = dict(slots=slots, global_query=qg, global_key=kg, global_value=vg) if g else {}
        if chunk:
            glob["chunk_length"] = chunk
        out, probs, global_probs = fn(q, k, v, mode, one_sided_window=w, **glob)
        return jnp.sum(out * cotangent), (out, probs, global_probs)

    return jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True)(q, k, v, qg, kg, vg)


def _banded(q, k, v, mode, **kw):
    out = banded_attention(q, k, v, mode, return_probs=True, **kw)
    global_probs = None if out.global_probs is None else jnp.swapaxes(out.global_probs, 2, 3)
    return out.out, dense_probs(out.probs, kw.get("slots"), kw["one_sided_window"], q.shape[1]), global_probs


@functools.cache
def _jitted(w: int, g: int, chunk: int | None, twin: bool):
    fn = banded_attention_reference if twin else _banded
    return jax.jit(functools.partial(_outputs_and_grads, w, g, None if twin else chunk, fn),
                   compiler_options=FAST_COMPILE)


def _normal(rng, *shape, scale=1.0):
    return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


def _key_mode(rng, length: int, g: int, pattern: str) -> np.ndarray:
    """Row 0 random (at most g globals, some padding); row 1 by ``pattern``."""
    mode = rng.choice([LOCAL, LOCAL, LOCAL, PAD], size=(B, length))
    for row in range(B):
        if g:
            at = rng.choice(length, size=rng.integers(0, g + 1), replace=False)
            mode[row, at] = np.where(mode[row, at] == PAD, PAD, GLOBAL)
    if pattern == "padding_only":
        mode[1] = PAD
    elif pattern == "all_global" and g >= length:
        mode[1] = GLOBAL
    elif pattern == "no_global":
        mode[1] = np.where(mode[1] == GLOBAL, LOCAL, mode[1])
    elif pattern == "right_padded":
        mode[1] = np.where(np.arange(length) < rng.integers(1, length + 1), np.where(mode[1] == PAD, LOCAL, mode[1]),
                           PAD)
    return mode.astype(np.int32)


@pytest.mark.parametrize("w,length,g,chunk", CONFIGS)
@SETTINGS
@given(pattern=st.sampled_from(["padding_only", "all_global", "no_global", "right_padded"]),
       scale=st.sampled_from([0.5, 3.0]), seed=st.integers(0, 2**31 - 1))
def test_equals_dense_twin(w, length, g, chunk, pattern, scale, seed):
    rng = np.random.default_rng(seed)
    q, k, v, kg, vg, cotangent = (_normal(rng, B, length, HEADS, HEAD_DIM, scale=scale) for _ in range(6))
    qg = _normal(rng, B, max(g, 1), HEADS, HEAD_DIM, scale=scale)
    mode = jnp.asarray(_key_mode(rng, length, g, pattern))
    args = (q, k, v, qg, kg, vg, mode, cotangent)
    (_, got), got_grads = _jitted(w, g, chunk, False)(*args)
    (_, want), want_grads = _jitted(w, g, chunk, True)(*args)
    for name, a, b in zip(("out", "probs", "global_probs"), got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL * max(1.0, float(jnp.abs(b).max())), err_msg=name)
    for name, a, b in zip(("q", "k", "v", "qg", "kg", "vg"), got_grads, want_grads):
        assert np.all(np.isfinite(a)), f"grad {name} not finite"  # padded rows carry no NaN back
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL * max(1.0, float(jnp.abs(b).max())), err_msg=name)


def test_blocked_band_costs_at_most_one_and_a_half_times_the_band():
    """XLA's count of the compiled attention's FLOPs against the band's own products (2w + 1 keys per query,
    two matmuls): the [w, 3w] blocks do 3w / (2w + 1) of that, plus the softmax's elementwise work."""
    batch, length, heads, head_dim, w = 1, 2048, 4, 64, 128
    spec = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.float32)
    mode = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    fn = lambda q, k, v, m: banded_attention(q, k, v, m, one_sided_window=w).out  # noqa: E731
    flops = jax.jit(fn).lower(spec, spec, spec, mode).compile().cost_analysis()["flops"]
    band = 2 * 2 * batch * heads * length * (2 * w + 1) * head_dim
    print(f"banded attention: {flops / band:.3f} x the band's FLOPs")
    assert flops <= 1.55 * band, flops / band


# ---------------------------------------------------------------------------------------------------------------
# Sequence-sharded
SHARDED_LENGTH, SHARDED_W, SHARDED_G = 32, 2, 5  # 4 positions (two blocks) per shard on 8 shards


def _mesh(shards: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:shards]), ("sequence",))


def _sharded_inputs(seed: int = 3):
    rng = np.random.default_rng(seed)
    shape = (B, SHARDED_LENGTH, HEADS, HEAD_DIM)
    q, k, v, kg, vg, cotangent = (_normal(rng, *shape, scale=2.0) for _ in range(6))
    qg = _normal(rng, B, SHARDED_G, HEADS, HEAD_DIM)
    mode = np.full((B, SHARDED_LENGTH), LOCAL, np.int32)
    mode[0, [0, 3, 17, 30]] = GLOBAL  # globals in three shards' ranges
    mode[1, [9]] = GLOBAL
    mode[1, 25:] = PAD
    return q, k, v, qg, kg, vg, jnp.asarray(mode), cotangent


def _sharded_step(fn, q, k, v, qg, kg, vg, mode, cotangent):
    slots = global_tokens(mode, SHARDED_G)

    def loss(q, k, v, qg, kg, vg):
        out = fn(q, k, v, mode, one_sided_window=SHARDED_W, slots=slots, global_query=qg, global_key=kg,
                 global_value=vg, dropout_rate=0.2, dropout_rng=jax.random.PRNGKey(4), deterministic=False,
                 return_probs=True, chunk_length=SHARDED_W)
        return jnp.sum(out.out * cotangent) + jnp.sum(out.probs) + jnp.sum(out.global_probs), out

    return jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True)(q, k, v, qg, kg, vg)


def test_sharded_equals_unsharded_dropout_included():
    """On 8 shards: the neighbours' blocks, the slots gathered across shards (globals in several shards' ranges),
    the global rows' softmax over all shards, and the dropout masks (hashed from global indices); the local rows in
    steps of one block, each step's edges from the next step or shard."""
    args = _sharded_inputs()
    (_, want), want_grads = jax.jit(functools.partial(_sharded_step, banded_attention),
                                    compiler_options=FAST_COMPILE)(*args)
    mesh = _mesh(8)
    step = functools.partial(_sharded_step, functools.partial(sharded_banded_attention, mesh=mesh))
    assert "shard_map" in str(jax.make_jaxpr(step)(*args))
    (_, got), got_grads = jax.jit(step, compiler_options=FAST_COMPILE)(*args)
    # Dropout really acted: row 1's unused slots hold the uniform 1 / length, kept ones scaled by 1 / (1 - 0.2).
    filler = np.asarray(want.global_probs[1, :, :, 1:])
    assert np.any(filler == 0) and np.allclose(filler[filler > 0], 1 / (SHARDED_LENGTH * 0.8))
    for name, a, b in [("out", got.out, want.out), ("probs", got.probs, want.probs),
                       ("global_probs", got.global_probs, want.global_probs)] + \
            list(zip(("q", "k", "v", "qg", "kg", "vg"), got_grads, want_grads)):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL * max(1.0, float(jnp.abs(b).max())), err_msg=name)
    assert got.out.sharding.spec[1] == "sequence"


def test_sharded_refuses_a_shard_of_partial_blocks():
    q = jnp.zeros((B, 24, HEADS, HEAD_DIM))
    with pytest.raises(ValueError, match=r"one_sided_window: the local length \(length / shards\) 3 must be a "
                                         r"multiple of one_sided_window=2"):
        sharded_banded_attention(q, q, q, jnp.ones((B, 24), jnp.int32), mesh=_mesh(8), one_sided_window=2)
    with pytest.raises(ValueError, match=r"key_mode: expected shape \(2, 24\)"):
        banded_attention(q, q, q, jnp.ones((B, 23), jnp.int32), one_sided_window=2)


def test_compiled_memory_per_device_falls_with_shards():
    """Forward and backward of the attention at 8192 positions with 8 global slots, compiled for 1-8 shards (in
    one step per shard: steps bound the memory of the scores anyway, which would hide what the shards save)."""
    batch, length, heads, head_dim, w, g = 1, 8192, 2, 16, 64, 8
    seq = P(None, "sequence", None, None)

    def step(q, k, v, qg, kg, vg, mode, *, mesh):
        slots = global_tokens(mode, g)

        def loss(*x):
            q, k, v, qg, kg, vg = x
            fn = banded_attention if mesh is None else functools.partial(sharded_banded_attention, mesh=mesh)
            return jnp.sum(fn(q, k, v, mode, one_sided_window=w, slots=slots, global_query=qg, global_key=kg,
                              global_value=vg, chunk_length=None).out)

        return jax.grad(loss, argnums=tuple(range(6)))(q, k, v, qg, kg, vg)

    totals = {}
    for shards in (1, 2, 4, 8):
        mesh = _mesh(shards)
        named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
        full = jax.ShapeDtypeStruct((batch, length, heads, head_dim), jnp.float32, sharding=named(seq))
        slot_rows = jax.ShapeDtypeStruct((batch, g, heads, head_dim), jnp.float32, sharding=named(P()))
        mode = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=named(P(None, "sequence")))
        compiled = jax.jit(functools.partial(step, mesh=mesh if shards > 1 else None),
                           compiler_options=FAST_COMPILE).lower(full, full, full, slot_rows, full, full, mode).compile()
        stats = compiled.memory_analysis()
        totals[shards] = stats.argument_size_in_bytes + stats.temp_size_in_bytes
        print(f"banded attention, {shards} shards: {totals[shards] / 2**20:.2f} MiB per device")
    sizes = [totals[s] for s in (1, 2, 4, 8)]
    assert all(a > b for a, b in itertools.pairwise(sizes)), totals
    assert totals[8] <= 0.3 * totals[1], totals
