"""Reversible stack: outputs and gradients equal plain autodiff of the python-loop twin; inputs are rebuilt from
outputs; compiled activation memory does not grow with depth; F's aux (hash buckets) is saved and reused."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.dropout import dropout_block, mask_seeds
from layers.reversible import SplitF, reversible_stack, reversible_stack_reference
from layers.stacked import layer_key

DEPTH, BATCH, LENGTH, EMBED, MLP = 3, 2, 8, 16, 32
DROPOUT = 0.25


def _dropout(key, x):
    """Dropout whose mask is a cheap integer hash of the key bits and the element index.

    The stack only needs the mask to be a deterministic function of the key it hands out; this compiles several
    times faster on CPU than ``jax.random.bernoulli`` (threefry), and compile time is what these tests spend.
    """
    if key is None:
        return x
    bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    h = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape) * jnp.uint32(2654435761) ^ bits[0]
    h = (h ^ (h >> 15)) * jnp.uint32(2246822519) + bits[1]
    keep = (h ^ (h >> 13)) < jnp.uint32(int((1.0 - DROPOUT) * 2**32))
    return jnp.where(keep, x / (1.0 - DROPOUT), 0.0)


def f_mlp(p, x, key, context):
    """F: tanh MLP with dropout; context is an additive [length] bias (non-differentiable side input)."""
    h = _dropout(key, jnp.tanh(x @ p["w1"] + p["b1"]))
    out = h @ p["w2"]
    return out if context is None else out + context[:, None]


def f_hashing(p, x, key, context, aux):
    """F with aux: int32 'buckets' from its input (argmax of a projection), used through a bucket embedding."""
    if aux is None:
        aux = jnp.argmax(x @ p["rotation"], axis=-1).astype(jnp.int32)
    return f_mlp(p, x, key, context) + p["bucket_embedding"][aux], aux


def g_norm(p, y, key, context):
    """G: LayerNorm-like normalisation (exact variance, learned scale) -> dense -> tanh, with dropout."""
    mean = y.mean(-1, keepdims=True)
    var = ((y - mean) ** 2).mean(-1, keepdims=True)
    h = (y - mean) * jax.lax.rsqrt(var + 1e-6) * p["scale"] + p["bias"]
    return _dropout(key, jnp.tanh(h @ p["w"]))


def _params(seed: int, depth: int = DEPTH, embed: int = EMBED, mlp: int = MLP, buckets: int = 4):
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)

    f_params = {
        "w1": normal(depth, embed, mlp, scale=embed**-0.5),
        "b1": normal(depth, mlp, scale=0.1),
        "w2": normal(depth, mlp, embed, scale=mlp**-0.5),
        "rotation": normal(depth, embed, buckets),
        "bucket_embedding": normal(depth, buckets, embed, scale=0.5),
    }
    g_params = {
        "scale": 1.0 + normal(depth, embed, scale=0.1),
        "bias": normal(depth, embed, scale=0.1),
        "w": normal(depth, embed, embed, scale=embed**-0.5),
    }
    return f_params, g_params


def _inputs(seed: int, shape=(BATCH, LENGTH, EMBED)):
    rng = np.random.default_rng(seed + 1000)
    return jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.asarray(rng.normal(size=shape), jnp.float32)


def _loss(stack, f, has_aux, f_params, g_params, x1, x2, key, context):
    y1, y2, aux = stack(f, g_norm, f_params, g_params, x1, x2, key=key, context=context, has_aux=has_aux)
    # Non-uniform weights so every output element gets a distinct cotangent.
    w = jnp.linspace(-1.0, 2.0, y1.size).reshape(y1.shape)
    return jnp.sum(jnp.sin(y1) * w) + jnp.sum(y2**2 * w) * 0.1, (y1, y2, aux)


# Two configurations, each compiled once for both implementations and shared by the tests below (compilation is
# what costs time here): "hashing" = F with aux + dropout keys + a context; "plain" = F without aux, no key.
CONFIGS = {"hashing": (f_hashing, True), "plain": (f_mlp, False)}
_run = {
    (config, stack): jax.jit(jax.value_and_grad(
        functools.partial(_loss, stack, f, has_aux), argnums=(0, 1, 2, 3), has_aux=True))
    for config, (f, has_aux) in CONFIGS.items() for stack in (reversible_stack, reversible_stack_reference)
}


def _call(config, stack, seed, key=None):
    f_params, g_params = _params(seed)
    x1, x2 = _inputs(seed)
    context = jnp.linspace(-0.5, 0.5, LENGTH) if config == "hashing" else None
    if config == "hashing" and key is None:
        key = jax.random.PRNGKey(seed)
    (_, outputs), grads = _run[(config, stack)](f_params, g_params, x1, x2, key, context)
    return outputs, grads


def _max_relative_error(got, want) -> float:
    """max |got - want| / max |want| per leaf, worst leaf."""
    errors = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
              for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))]
    return max(errors)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_outputs_match_reference(config):
    (y1, y2, aux), _ = _call(config, reversible_stack, 0)
    (r1, r2, raux), _ = _call(config, reversible_stack_reference, 0)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(r1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(r2), rtol=1e-5, atol=1e-5)
    if config == "hashing":
        assert aux.shape == (DEPTH, BATCH, LENGTH) and aux.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(aux), np.asarray(raux))
        # The buckets are not trivially constant (the test would not see a wrong aux otherwise).
        assert len(np.unique(np.asarray(aux))) > 1
    else:
        assert aux is None and raux is None


def test_dropout_keys_change_outputs():
    outs = [_call("hashing", reversible_stack, 1, key=jax.random.PRNGKey(k))[0][0] for k in (0, 1)]
    assert not np.allclose(outs[0], outs[1])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), config=st.sampled_from(list(CONFIGS)))
def test_gradients_match_plain_autodiff_of_reference(seed, config):
    _, got = _call(config, reversible_stack, seed)
    _, want = _call(config, reversible_stack_reference, seed)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert _max_relative_error(got, want) < 1e-5


def reversible_stack_inverse(f, g, f_params, g_params, y1, y2, *, key=None, context=None, aux=None):
    """The stack run backwards (one layer kind, F with the aux protocol): rebuilds ``(x1, x2)`` from the outputs,
    as the backward pass does, layer by layer from the last, with each layer's saved aux and its own keys."""
    depth = jax.tree_util.tree_leaves(f_params)[0].shape[0]
    for layer in reversed(range(depth)):
        fp, gp, a = (jax.tree_util.tree_map(lambda t: t[layer], tree) for tree in (f_params, g_params, aux))
        k = layer_key(key, layer)
        f_key, g_key = (None, None) if k is None else (jax.random.fold_in(k, 0), jax.random.fold_in(k, 1))
        x2 = y2 - g(gp, y1, g_key, context)
        y1, y2 = y1 - f(fp, x2, f_key, context, a)[0], x2
    return y1, y2


def test_inputs_are_reconstructed_from_outputs():
    f_params, g_params = _params(2)
    x1, x2 = _inputs(2)
    key = jax.random.PRNGKey(2)
    (y1, y2, aux), _ = _call("hashing", reversible_stack, 2, key=key)
    context = jnp.linspace(-0.5, 0.5, LENGTH)
    inverse = jax.jit(functools.partial(reversible_stack_inverse, f_hashing, g_norm))
    r1, r2 = inverse(f_params, g_params, y1, y2, key=key, context=context, aux=aux)
    assert float(jnp.max(jnp.abs(r1 - x1))) < 1e-5
    assert float(jnp.max(jnp.abs(r2 - x2))) < 1e-5
    # Without the right dropout keys the inverse is wrong: the keys really are part of the layer.
    w1, _ = inverse(f_params, g_params, y1, y2, key=jax.random.PRNGKey(4), context=context, aux=aux)
    assert float(jnp.max(jnp.abs(w1 - x1))) > 1e-2


def test_heterogeneous_layer_kinds_match_reference():
    # Two kinds alternate (like Reformer's local / LSH layers): kind 0 hashes, kind 1 does not.
    def f_plain(p, x, key, context, aux):
        return f_mlp(p, x, key, context), jnp.zeros((), jnp.int32)

    fp0, gp0 = _params(5, depth=2)
    fp1, gp1 = _params(6, depth=2)
    fp1 = {k: v for k, v in fp1.items() if k in ("w1", "b1", "w2")}
    args = ((f_hashing, f_plain), (g_norm, g_norm), (fp0, fp1), (gp0, gp1))
    x1, x2 = _inputs(5)
    key = jax.random.PRNGKey(11)  # layer l = 2 * group + kind must get fold_in(key, l) in both

    def loss(stack, fps, gps, x1, x2):
        y1, y2, aux = stack(args[0], args[1], fps, gps, x1, x2, key=key, has_aux=True)
        return jnp.sum(jnp.sin(y1)) + 0.1 * jnp.sum(y2**2), aux

    (value, aux), grads = jax.jit(jax.value_and_grad(
        functools.partial(loss, reversible_stack), argnums=(0, 1, 2, 3), has_aux=True))(*args[2:], x1, x2)
    (rvalue, raux), rgrads = jax.jit(jax.value_and_grad(
        functools.partial(loss, reversible_stack_reference), argnums=(0, 1, 2, 3), has_aux=True))(
        *args[2:], x1, x2)
    np.testing.assert_allclose(float(value), float(rvalue), rtol=1e-6)
    assert aux[0].shape == (2, BATCH, LENGTH) and aux[1].shape == (2,)
    np.testing.assert_array_equal(np.asarray(aux[0]), np.asarray(raux[0]))
    assert _max_relative_error(grads, rgrads) < 1e-5


def test_saved_aux_beats_rehashing_reconstructed_inputs():
    """The failure mode the aux exists for: a hash near a decision boundary flips on the rebuilt input.

    x2[..., 0] = 1e-6 hashes to 1 (x > 0). G adds ~1000, so y2 = x2 + G(y1) rounds the 1e-6 away (fp32 spacing near
    1000 is 6e-5) and the rebuilt x2[..., 0] is 0 or +-6e-5: re-hashing it gives other buckets, and the bucket
    embedding gets its gradient on the wrong rows. With the saved aux the gradient equals plain autodiff.
    """
    seen = []  # what F receives, per trace: None (forward: compute the buckets) or the saved buckets' type

    def f_threshold(p, x, key, context, aux):
        seen.append(None if aux is None else (aux.shape, aux.dtype))
        if aux is None:
            aux = (x[..., 0] > 0).astype(jnp.int32)
        return jnp.tanh(x @ p["w"]) + p["bucket_embedding"][aux], aux

    def f_rehash(p, x, key, context, aux):  # negative control: ignores the saved aux
        return f_threshold(p, x, key, context, None)

    def g_big(p, y, key, context):
        return 1000.0 + jnp.tanh(y @ p["w"])

    rng = np.random.default_rng(0)
    f_params = {"w": jnp.asarray(rng.normal(size=(1, EMBED, EMBED)) * 0.3, jnp.float32),
                "bucket_embedding": jnp.asarray(rng.normal(size=(1, 2, EMBED)), jnp.float32)}
    g_params = {"w": jnp.asarray(rng.normal(size=(1, EMBED, EMBED)) * 0.3, jnp.float32)}
    x1 = jnp.asarray(rng.normal(size=(BATCH, LENGTH, EMBED)), jnp.float32)
    x2 = jnp.asarray(rng.normal(size=(BATCH, LENGTH, EMBED)), jnp.float32).at[..., 0].set(1e-6)

    def grads(stack, f):
        def loss(fp):
            y1, y2, _ = stack(f, g_big, fp, g_params, x1, x2, has_aux=True)
            return jnp.sum(jnp.sin(y1) * jnp.arange(EMBED)) + jnp.sum(jnp.cos(y2 - 1000.0))
        return jax.jit(jax.grad(loss))(f_params)["bucket_embedding"]

    want = grads(reversible_stack_reference, f_threshold)
    seen.clear()
    saved = grads(reversible_stack, f_threshold)
    # The forward computed the buckets; the backward's recomputation was handed the saved [batch, length] int32.
    assert None in seen and ((BATCH, LENGTH), jnp.int32) in seen
    rehashed = grads(reversible_stack, f_rehash)
    # Rebuilt activations carry ~1e-4 absolute error here (that is the G ~ 1000 rounding), hence the tolerance.
    assert _max_relative_error(saved, want) < 1e-3
    assert _max_relative_error(rehashed, want) > 0.1


def _scanned_plain_stack(f, g, f_params, g_params, x1, x2, *, key=None, context=None, has_aux=False):
    """Negative control for the memory test: the same stack as a lax.scan under plain autodiff (it keeps every
    layer's residuals). A scan rather than the python-loop twin so that depth 24 compiles in about a second."""

    def layer(carry, params):
        a, b = carry
        a = a + f(params[0], b, None, context)
        return (a, b + g(params[1], a, None, context)), None

    (y1, y2), _ = jax.lax.scan(layer, (x1, x2), (f_params, g_params))
    return y1, y2, None


def _temp_bytes(stack, depth: int) -> int:
    # Activations dominate: [1, 2048, 128] fp32 streams (1 MiB) with a 256-wide MLP vs ~0.2 MiB of params a layer.
    length, embed, mlp = 2048, 128, 256
    f_params, g_params = _params(0, depth=depth, embed=embed, mlp=mlp)
    x1, x2 = _inputs(0, shape=(1, length, embed))
    grad = jax.grad(lambda *a: _loss(stack, f_mlp, False, *a)[0], argnums=(0, 1, 2, 3))
    compiled = jax.jit(grad).lower(f_params, g_params, x1, x2, None, None).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_backward_activation_memory_does_not_grow_with_depth():
    ours = {d: _temp_bytes(reversible_stack, d) for d in (6, 24)}
    plain = {d: _temp_bytes(_scanned_plain_stack, d) for d in (6, 24)}
    print(f"temp MiB: reversible {ours[6] / 2**20:.2f} (6) {ours[24] / 2**20:.2f} (24); "
          f"plain autodiff {plain[6] / 2**20:.2f} (6) {plain[24] / 2**20:.2f} (24)")
    assert ours[24] <= 1.2 * ours[6]
    # The same measurement does see depth when activations are stored: the test can fail.
    assert plain[24] > 2 * plain[6]
    assert ours[24] < plain[6]


def test_bf16_runs():
    f_params, g_params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), _params(4))
    x1, x2 = (x.astype(jnp.bfloat16) for x in _inputs(4))

    def loss(fp, gp, x1, x2):
        y1, y2, aux = reversible_stack(f_hashing, g_norm, fp, gp, x1, x2, has_aux=True)
        return jnp.sum(y1.astype(jnp.float32)) + jnp.sum(y2.astype(jnp.float32)), (y1, aux)

    (value, (y1, aux)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        f_params, g_params, x1, x2)
    assert np.isfinite(float(value)) and y1.dtype == jnp.bfloat16 and aux.dtype == jnp.int32
    for leaf in jax.tree_util.tree_leaves(grads):
        assert leaf.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(leaf)))
    assert float(jnp.max(jnp.abs(grads[2].astype(jnp.float32)))) > 0


def test_errors():
    f_params, g_params = _params(0)
    x1, x2 = _inputs(0)
    with pytest.raises(ValueError, match="same leading layers size"):
        reversible_stack(f_mlp, g_norm, f_params, {**g_params, "w": g_params["w"][:2]}, x1, x2)
    with pytest.raises(ValueError, match="both be callables"):
        reversible_stack(f_mlp, (g_norm,), f_params, (g_params,), x1, x2)
    with pytest.raises(ValueError, match="one stacked tree per layer kind"):
        reversible_stack((f_mlp, f_mlp), (g_norm, g_norm), (f_params,), (g_params,), x1, x2)
    with pytest.raises(ValueError, match="x1 must be a floating array"):
        reversible_stack(f_mlp, g_norm, f_params, g_params, x1.astype(jnp.int32), x2)
    with pytest.raises(ValueError, match="hold no arrays"):
        reversible_stack(f_mlp, g_norm, {}, {}, x1, x2)


# -- sequence chunks: F = post(core(pre(x))) and G run chunk by chunk, streams updated in place -----------------
def _chunk_dropout(key, x, start):
    """Dropout of positions ``start ..`` of a ``[batch, LENGTH, ...]`` array: the block of the whole-length mask."""
    if key is None:
        return x
    return dropout_block(x, DROPOUT, mask_seeds(key), global_shape=(x.shape[0], LENGTH) + x.shape[2:],
                         offset=(0, start) + (0,) * (x.ndim - 2))


def split_pre(p, x, key, context, start):
    return (jnp.tanh(x @ p["w1"] + p["b1"]),)


def split_core(p, a, key, context, aux):
    """Mixes positions (a causal running mean, what attention would do) and hashes its input into an aux."""
    (h,) = a
    if aux is None:
        aux = jnp.argmax(h @ p["rotation"][:MLP], axis=-1).astype(jnp.int32)
    mixed = jnp.cumsum(h, axis=1) / jnp.arange(1, h.shape[1] + 1, dtype=h.dtype)[:, None]
    return mixed + p["bucket_embedding"][aux] * 0.1, aux


def split_post(p, c, key, context, start):
    out = _chunk_dropout(None if key is None else jax.random.fold_in(key, 1), c, start) @ p["w2"]
    return out if context is None else out + jax.lax.dynamic_slice_in_dim(context, start, c.shape[1])[:, None]


def g_chunk(p, y, key, context, start):
    return _chunk_dropout(key, g_norm(p, y, None, context), start)


def f_whole(p, x, key, context, aux):
    """The same F on the whole length (one chunk), for the reference twin."""
    c, aux = split_core(p, split_pre(p, x, key, context, 0), key, context, aux)
    return split_post(p, c, key, context, 0), aux


def test_chunked_stack_matches_reference():
    rng = np.random.default_rng(7)
    f_params, g_params = _params(7)
    f_params["rotation"] = jnp.asarray(rng.normal(size=(DEPTH, MLP, 4)), jnp.float32)
    f_params["bucket_embedding"] = jnp.asarray(rng.normal(size=(DEPTH, 4, MLP)), jnp.float32)
    x1, x2 = _inputs(7)
    context = jnp.linspace(-0.5, 0.5, LENGTH)
    key = jax.random.PRNGKey(7)

    def loss(stack, f, g, chunk, fp, gp, x1, x2):
        extra = {} if chunk is None else {"chunk": chunk}
        y1, y2, aux = stack(f, g, fp, gp, x1, x2, key=key, context=context, has_aux=True, **extra)
        w = jnp.linspace(-1.0, 2.0, y1.size).reshape(y1.shape)
        return jnp.sum(jnp.sin(y1) * w) + jnp.sum(y2**2 * w) * 0.1, (y1, y2, aux)

    def g_whole(p, y, key, context):
        return g_chunk(p, y, key, context, 0)

    def run(*a):
        grad = jax.value_and_grad(functools.partial(loss, *a), argnums=(0, 1, 2, 3), has_aux=True)
        return jax.jit(grad)(f_params, g_params, x1, x2)
    (_, (r1, r2, raux)), rgrads = run(reversible_stack_reference, f_whole, g_whole, None)
    for chunk in (2, LENGTH):
        (_, (y1, y2, aux)), grads = run(reversible_stack, SplitF(split_pre, split_core, split_post), g_chunk, chunk)
        np.testing.assert_allclose(np.asarray(y1), np.asarray(r1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(y2), np.asarray(r2), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(aux), np.asarray(raux))
        assert _max_relative_error(grads, rgrads) < 1e-5
    assert len(np.unique(np.asarray(raux))) > 1


def test_chunked_stack_errors():
    f_params, g_params = _params(0)
    x1, x2 = _inputs(0)
    split = SplitF(split_pre, split_core, split_post)
    with pytest.raises(ValueError, match="give the stack a chunk length"):
        reversible_stack(split, g_chunk, f_params, g_params, x1, x2)
    with pytest.raises(ValueError, match="chunk=3: must be a positive int dividing"):
        reversible_stack(split, g_chunk, f_params, g_params, x1, x2, chunk=3)
    with pytest.raises(ValueError, match="every F must be a SplitF"):
        reversible_stack(f_mlp, g_chunk, f_params, g_params, x1, x2, chunk=2)
