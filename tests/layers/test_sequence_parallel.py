"""Sequence parallelism: the sharded EMA and local attention against their unsharded twins on 2, 4 and 8 devices
(values and gradients), a 2-D mesh, input errors, and per-device compiled memory falling with the shard count."""

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

from layers import ema
from layers.local import local_attention
from layers.sequence_parallel import sharded_damped_ema, sharded_local_attention

# fp32 against fp32 (the unsharded functions are tested against float64 twins elsewhere); both sides sum the same
# terms in another order, plus the cross-shard carry, so a few ulps of the largest value.
TOL = 1e-5
BATCH, LENGTH, EMBED, NDIM = 2, 32, 3, 4
HEADS, HEAD_DIM = 2, 4
# Compiles dominate the runtime of this file; LLVM's optimisation level changes neither the HLO passes (fusion,
# buffer assignment, so not memory_analysis) nor the arithmetic, only how fast the tiny programs run.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

# Shrinking would retrace the jitted functions for every candidate; the menus below are small enough to read.
SETTINGS = settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.generate))

# One compile per mesh size (all cases, gradients included); the unsharded twins compile once.
# EMA: (bidirectional, truncation, carried state). Local lengths are 16/8/4 on 2/4/8 shards, so truncation 9 takes
# its delayed stream from the own shard and the neighbour (2 shards), from 1 and 2 shards away (4), from 2 and 3
# shards away (8); truncation 4 is exactly one shard on 8 (the delayed stream is the neighbour's whole shard).
EMA_CASES = [(True, 9, False), (False, None, True), (False, 4, False)]
# The sharded side's local algorithm per mesh size (the twin always runs its default fft); scan and chunked also
# cover the zero state they need to carry a varying lax.scan state.
EMA_ALGORITHM = {2: "fft", 4: "chunked", 8: "scan"}
# Local attention: (chunk_length, num_chunks_before, num_chunks_after, causal); every halo fits 8 shards' 4 positions.
ATTENTION_CASES = [(2, 2, 1, False), (4, 1, 0, True), (1, 0, 3, True)]


def _mesh(shards: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:shards]), ("sequence",))


def _ema_params(rng: np.random.Generator, bidirectional: bool, regime: str) -> dict:
    shape = (2 * EMBED if bidirectional else EMBED, NDIM)
    if regime == "q_near_1":  # long memory: the carry dominates the output of later shards
        delta, alpha = rng.uniform(3.0, 6.0, shape), rng.uniform(-14.0, -9.0, shape)
    else:
        delta, alpha = rng.normal(size=shape), rng.normal(size=shape)
    return {
        "damping_factor": jnp.asarray(delta, jnp.float32),
        "decay_factor": jnp.asarray(alpha, jnp.float32),
        "ema_expansion_matrix": jnp.asarray(rng.normal(size=shape), jnp.float32),
        "kernel_projection_matrix": jnp.asarray(rng.normal(size=shape), jnp.float32),
        "residual_weight": jnp.asarray(rng.normal(size=(EMBED,)), jnp.float32),
    }


def _mask(rng: np.random.Generator, kind: str) -> jax.Array:
    if kind == "ones":
        return jnp.ones((BATCH, LENGTH), jnp.int32)
    if kind == "right_pad":
        lengths = rng.integers(1, LENGTH + 1, BATCH)
        return jnp.asarray(np.arange(LENGTH)[None] < lengths[:, None], jnp.int32)
    return jnp.asarray(rng.random((BATCH, LENGTH)) < 0.6, jnp.int32)


def _normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _assert_close(actual, expected, tol=TOL, what=""):
    leaves = jax.tree_util.tree_leaves_with_path(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for (path, e), a in zip(leaves, jax.tree.leaves(actual)):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        where = f"{what} {jax.tree_util.keystr(path)}"
        assert a.shape == e.shape and np.all(np.isfinite(a)), where
        scale = max(1.0, float(np.abs(e).max(initial=0.0)))
        err = float(np.abs(a - e).max(initial=0.0)) / scale
        assert err <= tol, f"{where}: max error {err:.3g} (scale {scale:.3g}) > {tol}"


def _loss(out, cotangent):
    return jnp.sum(out.astype(jnp.float32) * cotangent)


def _ema_outputs_and_grads(fn, cases, params_per_case, x, mask, state, cotangent, state_cotangent):
    """For the ``EMA_CASES`` indexed by ``cases``: ((out, new_state), grads wrt (params, x, state)) of a linear loss."""
    results = []
    for index in cases:
        params, (bidirectional, truncation, carried) = params_per_case[index], EMA_CASES[index]

        def loss(params, x, state, bidirectional=bidirectional, truncation=truncation, carried=carried):
            out, new_state = fn(params, x, mask, bidirectional=bidirectional, truncation=truncation,
                                state=state if carried else None, return_state=carried)
            total = _loss(out, cotangent) + (_loss(new_state, state_cotangent) if carried else 0.0)
            return total, (out, new_state)

        (_, outputs), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, state)
        results.append((outputs, grads))
    return results


@functools.cache
def _ema_jit(shards: int | None):
    """Jitted ``_ema_outputs_and_grads`` of the sharded EMA on ``shards`` devices (None: the unsharded twin)."""
    if shards is None:
        fn, cases = ema.damped_ema, range(len(EMA_CASES))
    else:
        fn = functools.partial(sharded_damped_ema, mesh=_mesh(shards), algorithm=EMA_ALGORITHM[shards],
                               chunk_size=4)
        cases = range(len(EMA_CASES))
    return jax.jit(functools.partial(_ema_outputs_and_grads, fn, tuple(cases)), compiler_options=FAST_COMPILE)


def _ema_inputs(seed: int, regime: str, mask_kind: str):
    rng = np.random.default_rng(seed)
    params = [_ema_params(rng, bidirectional, regime) for bidirectional, _, _ in EMA_CASES]
    x, cotangent = _normal(rng, BATCH, LENGTH, EMBED), _normal(rng, BATCH, LENGTH, EMBED)
    state, state_cotangent = _normal(rng, BATCH, EMBED, NDIM), _normal(rng, BATCH, EMBED, NDIM)
    return params, x, _mask(rng, mask_kind), state, cotangent, state_cotangent


@pytest.mark.parametrize("shards", [2, 4, 8])
@SETTINGS
@given(regime=st.sampled_from(["normal", "q_near_1"]), mask_kind=st.sampled_from(["ones", "right_pad", "random"]),
       seed=st.integers(0, 2**31 - 1))
def test_sharded_ema_matches_unsharded(shards, regime, mask_kind, seed):
    inputs = _ema_inputs(seed, regime, mask_kind)
    results, expected = _ema_jit(shards)(*inputs), _ema_jit(None)(*inputs)
    for case, (outputs, grads), (expected_outputs, expected_grads) in zip(EMA_CASES, results, expected):
        _assert_close(outputs, expected_outputs, what=f"(out, state) {case}")
        _assert_close(grads, expected_grads, what=f"grads (params, x, state) {case}")


def _attention_outputs_and_grads(fn, cases, query, key, value, mask, cotangent):
    """For the ``ATTENTION_CASES`` indexed by ``cases``: ((out, probs), grads wrt (query, key, value))."""
    results = []
    for index in cases:
        chunk_length, before, after, causal = ATTENTION_CASES[index]

        def loss(q, k, v, chunk_length=chunk_length, before=before, after=after, causal=causal):
            out, probs = fn(q, k, v, chunk_length=chunk_length, num_chunks_before=before, num_chunks_after=after,
                            attention_mask=mask, causal=causal, return_probs=True)
            return _loss(out, cotangent), (out, probs)

        (_, outputs), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(query, key, value)
        results.append((outputs, grads))
    return results


@functools.cache
def _attention_jit(shards: int | None):
    if shards is None:
        fn, cases = local_attention, range(len(ATTENTION_CASES))
    else:
        fn, cases = functools.partial(sharded_local_attention, mesh=_mesh(shards)), range(len(ATTENTION_CASES))
    return jax.jit(functools.partial(_attention_outputs_and_grads, fn, tuple(cases)), compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("shards", [2, 4, 8])
@SETTINGS
@given(mask_kind=st.sampled_from(["ones", "right_pad", "random"]), seed=st.integers(0, 2**31 - 1))
def test_sharded_local_attention_matches_unsharded(shards, mask_kind, seed):
    rng = np.random.default_rng(seed)
    # Scaled up so that the attention is far from uniform; the random mask leaves some windows with no valid key.
    query, key, value = (2.0 * _normal(rng, BATCH, LENGTH, HEADS, HEAD_DIM) for _ in range(3))
    inputs = (query, key, value, _mask(rng, mask_kind), _normal(rng, BATCH, LENGTH, HEADS, HEAD_DIM))
    results, expected = _attention_jit(shards)(*inputs), _attention_jit(None)(*inputs)
    for case, (outputs, grads), (expected_outputs, expected_grads) in zip(ATTENTION_CASES, results, expected):
        _assert_close(outputs, expected_outputs, what=f"(out, probs) {case}")
        _assert_close(grads, expected_grads, what=f"grads (q, k, v) {case}")


def test_two_dimensional_mesh_with_batch_axis_and_no_mask():
    # batch over "data", length over "sequence"; the twins' outputs come from the (cached) unsharded jits.
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "sequence"))
    params, x, _, state, cotangent, state_cotangent = _ema_inputs(5, "normal", "ones")
    rng = np.random.default_rng(5)
    query, key, value = (_normal(rng, BATCH, LENGTH, HEADS, HEAD_DIM) for _ in range(3))
    ones = jnp.ones((BATCH, LENGTH), jnp.int32)
    (bidirectional, truncation, _), (chunk_length, before, after, causal) = EMA_CASES[0], ATTENTION_CASES[0]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def sharded(params, x, query, key, value):
        out_ema, _ = sharded_damped_ema(params, x, mesh=mesh, batch_axis="data", bidirectional=bidirectional,
                                        truncation=truncation)
        out_attention, _ = sharded_local_attention(query, key, value, mesh=mesh, batch_axis="data",
                                                   chunk_length=chunk_length, num_chunks_before=before,
                                                   num_chunks_after=after, causal=causal)
        return out_ema, out_attention

    out_ema, out_attention = sharded(params[0], x, query, key, value)
    expected_ema = _ema_jit(None)(params, x, ones, state, cotangent, state_cotangent)[0][0][0]
    expected_attention = _attention_jit(None)(query, key, value, ones, query)[0][0][0]  # any cotangent
    _assert_close(out_ema, expected_ema, what="ema")
    _assert_close(out_attention, expected_attention, what="attention")
    assert out_ema.sharding.spec == P("data", "sequence")


def test_sharded_attention_dropout_is_the_unsharded_mask():
    """Dropout hashes each probability's global index, so every shard draws its block of the unsharded mask: equal
    values and gradients, with the batch split over a second axis too (the mask offsets of both axes)."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "sequence"))
    rng = np.random.default_rng(7)
    query, key, value = (_normal(rng, BATCH, LENGTH, HEADS, HEAD_DIM) for _ in range(3))
    mask = jnp.asarray(rng.random((BATCH, LENGTH)) < 0.9, jnp.int32)
    dropout_key = jax.random.PRNGKey(11)
    options = dict(chunk_length=4, num_chunks_before=1, num_chunks_after=1, causal=False, dropout_rate=0.3,
                   dropout_rng=dropout_key, deterministic=False, attention_mask=mask, return_probs=True)

    def run(fn):
        def loss(q, k, v):
            out, probs = fn(q, k, v, **options)
            return jnp.sum(out * value) + jnp.sum(probs), (out, probs)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), compiler_options=FAST_COMPILE)(
            query, key, value)

    (grads, (out, probs)) = run(functools.partial(sharded_local_attention, mesh=mesh, batch_axis="data"))
    (want_grads, (want_out, want_probs)) = run(local_attention)
    assert float(jnp.mean(want_probs == 0)) > 0.2  # dropout really acted
    _assert_close(probs, want_probs, what="probs")
    _assert_close(out, want_out, what="out")
    _assert_close(grads, want_grads, what="grads")
    # Another key, another mask: the key really drives the sharded mask.
    other = sharded_local_attention(query, key, value, mesh=mesh, batch_axis="data",
                                    **{**options, "dropout_rng": jax.random.PRNGKey(12)})[1]
    assert not np.allclose(np.asarray(other), np.asarray(want_probs))


@pytest.mark.parametrize("call, match", [
    (lambda m, x, q: sharded_damped_ema(_ema_params(np.random.default_rng(0), False, "normal"), x[:, :30], mesh=m),
     "length: 30 must be a multiple"),
    (lambda m, x, q: sharded_damped_ema(_ema_params(np.random.default_rng(0), False, "normal"), x, mesh=m,
                                        algorithm="chunked", chunk_size=16), "chunk_size: .*local length 8"),
    (lambda m, x, q: sharded_damped_ema(_ema_params(np.random.default_rng(0), False, "normal"), x, mesh=m,
                                        axis="length"), "axis: 'length' is not an axis"),
    (lambda m, x, q: sharded_damped_ema(_ema_params(np.random.default_rng(0), False, "normal"), x, mesh=m,
                                        truncation=4, return_state=True), "truncation must be None"),
    (lambda m, x, q: sharded_damped_ema(_ema_params(np.random.default_rng(0), False, "normal"), x, mesh=m,
                                        batch_axis="sequence"), "batch_axis"),
    (lambda m, x, q: sharded_local_attention(q, q, q, mesh=m, chunk_length=4, num_chunks_before=3),
     "num_chunks_before: the halo 3"),
    (lambda m, x, q: sharded_local_attention(q, q, q, mesh=m, chunk_length=3), "length: 32 must be a multiple"),
    (lambda m, x, q: sharded_local_attention(q[:, :24], q[:, :24], q[:, :24], mesh=m, chunk_length=4),
     "chunk_length: the local length 6"),
    (lambda m, x, q: sharded_local_attention(q, q, q, mesh=m, chunk_length=32), "length: 32 must exceed"),
])
def test_invalid_inputs_fail_before_tracing(call, match):
    x = jnp.zeros((BATCH, LENGTH, EMBED))
    q = jnp.zeros((BATCH, LENGTH, HEADS, HEAD_DIM))
    with pytest.raises(ValueError, match=match):
        call(_mesh(4), x, q)


def _per_device_bytes(fn, *shapes_and_specs, shards: int) -> tuple[int, int]:
    """(argument bytes, temp bytes) of one device's compiled program for arguments split as ``specs``."""
    mesh = _mesh(shards)
    args = [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, spec))
            for shape, spec in shapes_and_specs]
    stats = jax.jit(functools.partial(fn, mesh=mesh), compiler_options=FAST_COMPILE).lower(*args).compile()
    stats = stats.memory_analysis()
    return stats.argument_size_in_bytes, stats.temp_size_in_bytes


@pytest.mark.parametrize("primitive", ["ema", "local_attention"])
def test_compiled_memory_per_device_falls_with_shards(primitive):
    if primitive == "ema":
        batch, length, embed, ndim = 2, 8192, 16, 4

        def fn(x, mask, *leaves, mesh):
            return sharded_damped_ema(dict(zip(ema.PARAM_NAMES, leaves)), x, mask, mesh=mesh)[0]

        # Params (replicated, a few KiB) are arguments too, so that nothing large is constant-folded at compile time.
        shapes = [((batch, length, embed), P(None, "sequence", None)), ((batch, length), P(None, "sequence"))]
        shapes += [((embed, ndim), P())] * 4 + [((embed,), P())]
    else:
        batch, length, heads, head_dim = 1, 4096, 2, 16
        seq = P(None, "sequence", None, None)
        shape = (batch, length, heads, head_dim)

        def fn(q, k, v, mask, *, mesh):
            return sharded_local_attention(q, k, v, mesh=mesh, chunk_length=64, num_chunks_before=1,
                                           num_chunks_after=1, attention_mask=mask, causal=True).out

        shapes = [(shape, seq)] * 3 + [((batch, length), P(None, "sequence"))]
    totals = {}
    for shards in (1, 2, 4, 8):
        argument, temp = _per_device_bytes(fn, *shapes, shards=shards)
        totals[shards] = argument + temp
        print(f"{primitive} shards={shards}: argument {argument / 2**20:.3f} MiB + temp {temp / 2**20:.3f} MiB "
              f"= {totals[shards] / 2**20:.3f} MiB per device")
    sizes = [totals[s] for s in (1, 2, 4, 8)]
    assert all(a > b for a, b in itertools.pairwise(sizes)), totals
    assert totals[8] <= 0.35 * totals[1], totals
