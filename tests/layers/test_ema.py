"""MEGA damped EMA: every algorithm against the float64 twin, the decoding step, HF parity, jit, errors."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layers import axes, ema

# Parity tests compare against a float64 twin; fp32 rounding over <= 16 steps stays well below this.
TOL = 2e-5

_ema = jax.jit(
    ema.damped_ema,
    static_argnames=("bidirectional", "truncation", "algorithm", "chunk_size", "return_state", "dtype"),
)
_step = jax.jit(ema.damped_ema_step)


@functools.partial(jax.jit, static_argnames=("bidirectional", "truncation"))
def _all_algorithms(params, x, mask, *, bidirectional, truncation):
    """One compile for the three algorithms (``chunk_size=4``): a list of outputs in ``ema.ALGORITHMS`` order."""
    return [
        ema.damped_ema(params, x, mask, bidirectional=bidirectional, truncation=truncation, algorithm=algorithm,
                       chunk_size=4)[0]
        for algorithm in ema.ALGORITHMS
    ]


def _raw(rng: np.random.Generator, shape, regime: str) -> tuple[np.ndarray, np.ndarray]:
    """(delta, alpha) raw values for a decay regime; extremes saturate the sigmoids in fp32."""
    if regime == "normal":
        return rng.normal(size=shape), rng.normal(size=shape)
    if regime == "q_near_0":  # p * alpha -> 1; above ~17 both round to 1 in fp32 (q clamped, HF gives NaN)
        return rng.uniform(8.0, 30.0, shape), rng.uniform(8.0, 30.0, shape)
    if regime == "q_near_1":  # p ~ 1 but alpha ~ 1e-5: long memory with a non-negligible input gain
        return rng.uniform(3.0, 6.0, shape), rng.uniform(-14.0, -9.0, shape)
    picks = rng.integers(0, 3, shape)
    options = [_raw(rng, shape, r) for r in ("normal", "q_near_0", "q_near_1")]
    return tuple(np.choose(picks, [o[i] for o in options]) for i in range(2))


def _params(seed: int, embed: int, ndim: int, bidirectional: bool, regime: str = "normal") -> dict:
    rng = np.random.default_rng(seed)
    shape = (2 * embed if bidirectional else embed, ndim)
    delta, alpha = _raw(rng, shape, regime)
    return {
        "damping_factor": jnp.asarray(delta, jnp.float32),
        "decay_factor": jnp.asarray(alpha, jnp.float32),
        "ema_expansion_matrix": jnp.asarray(rng.normal(size=shape), jnp.float32),
        "kernel_projection_matrix": jnp.asarray(rng.normal(size=shape), jnp.float32),
        "residual_weight": jnp.asarray(rng.normal(size=(embed,)), jnp.float32),
    }


def _mask(rng: np.random.Generator, batch: int, length: int, kind: str):
    if kind == "none":
        return None
    if kind == "ones":
        return jnp.ones((batch, length), jnp.int32)
    if kind == "right_pad":
        lengths = rng.integers(1, length + 1, batch)
        return jnp.asarray(np.arange(length)[None] < lengths[:, None], jnp.int32)
    return jnp.asarray(rng.random((batch, length)) < 0.7, jnp.int32)


def _assert_close(actual, expected, tol=TOL):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual))
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual - expected).max(initial=0.0)) / scale
    assert err <= tol, f"max error {err:.3g} (relative to {scale:.3g}) > {tol}"
    return err


# Shapes come from a small menu so the shared jitted functions hit their compile cache across examples.
_SHAPES = [(2, 8, 3, 4), (1, 12, 1, 2)]  # (batch, length, embed, ndim); 8 and 12 are 2 and 3 chunks of 4


# (shape, bidirectional, truncation) from a fixed menu: every pairing appears, and compiles stay few (the HF parity
# test reuses the first four).
_CONFIGS = [
    (_SHAPES[0], False, None), (_SHAPES[0], True, None), (_SHAPES[0], False, 3), (_SHAPES[0], True, 3),
    (_SHAPES[1], False, 1), (_SHAPES[1], True, 1), (_SHAPES[1], False, 64), (_SHAPES[1], True, None),
]


@settings(max_examples=16, deadline=None)
@given(
    config=st.sampled_from(_CONFIGS),
    regime=st.sampled_from(["normal", "q_near_0", "q_near_1", "mixed"]),
    mask_kind=st.sampled_from(["ones", "right_pad", "random"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_algorithm_matches_reference(config, regime, mask_kind, seed):
    (batch, length, embed, ndim), bidirectional, truncation = config
    rng = np.random.default_rng(seed)
    params = _params(seed, embed, ndim, bidirectional, regime)
    x = jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32)
    mask = _mask(rng, batch, length, mask_kind)
    expected = ema.damped_ema_reference(params, x, mask, bidirectional=bidirectional, truncation=truncation)
    for out in _all_algorithms(params, x, mask, bidirectional=bidirectional, truncation=truncation):
        _assert_close(out, expected)


def test_reference_follows_the_recurrence_by_hand():
    # One channel, N = 1, no mask: y_t = c * h_t with h_t = q h_{t-1} + p b x_t, written out for three steps.
    params = {
        "damping_factor": np.array([[0.3]]), "decay_factor": np.array([[-0.2]]),
        "ema_expansion_matrix": np.array([[1.5]]), "kernel_projection_matrix": np.array([[0.7]]),
        "residual_weight": np.array([0.4]),
    }
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    p, q = sig(0.3), 1.0 - sig(0.3) * sig(-0.2)
    x = np.array([1.0, -2.0, 0.5])
    h1 = p * 1.5 * x[0]
    h2 = q * h1 + p * 1.5 * x[1]
    h3 = q * h2 + p * 1.5 * x[2]
    z = 0.7 * np.array([h1, h2, h3]) + 0.4 * x
    out = ema.damped_ema_reference(params, x[None, :, None])
    np.testing.assert_allclose(out[0, :, 0], z / (1 + np.exp(-z)), rtol=1e-12)
    # truncation=2 drops x_0 from y_2 only.
    z_trunc = z.copy()
    z_trunc[2] = 0.7 * (q * p * 1.5 * x[1] + p * 1.5 * x[2]) + 0.4 * x[2]
    out = ema.damped_ema_reference(params, x[None, :, None], truncation=2)
    np.testing.assert_allclose(out[0, :, 0], z_trunc / (1 + np.exp(-z_trunc)), rtol=1e-12)


@settings(max_examples=10, deadline=None)
@given(regime=st.sampled_from(["normal", "q_near_0", "q_near_1", "mixed"]), seed=st.integers(0, 2**31 - 1))
def test_kernel_matches_closed_form(regime, seed):
    params = _params(seed, 2, 3, True, regime)
    p = 1 / (1 + np.exp(-np.asarray(params["damping_factor"], np.float64)))
    alpha = 1 / (1 + np.exp(-np.asarray(params["decay_factor"], np.float64)))
    q = 1 - p * alpha
    coef = p * np.asarray(params["ema_expansion_matrix"], np.float64) * np.asarray(
        params["kernel_projection_matrix"], np.float64) * np.sqrt(1 / 3)
    expected = np.stack([(coef * q**j).sum(-1) for j in range(10)], axis=-1)
    kernel = ema.ema_kernel(params, 10)
    assert kernel.shape == (4, 10) and kernel.dtype == jnp.float32
    _assert_close(kernel, expected, tol=1e-6)


@pytest.mark.parametrize("algorithm", ema.ALGORITHMS)
def test_state_carries_across_segments(algorithm):
    batch, length, embed, ndim = _SHAPES[0]
    rng = np.random.default_rng(7)
    params = _params(7, embed, ndim, False, "mixed")
    x = jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32)
    mask = _mask(rng, batch, length, "random")
    full, state = _ema(params, x, mask, algorithm=algorithm, chunk_size=4, return_state=True)
    _assert_close(full, ema.damped_ema_reference(params, x, mask))
    # Final state from the float64 recurrence.
    coeffs = ema.ema_coefficients(params)
    h = np.zeros((batch, embed, ndim))
    for t in range(length):
        h = np.asarray(coeffs.q, np.float64) * h + np.asarray(coeffs.gain, np.float64) * (
            np.asarray(x[:, t] * mask[:, t, None], np.float64)[..., None])
    _assert_close(state, h)
    first, mid_state = _ema(params, x[:, :4], mask[:, :4], algorithm=algorithm, chunk_size=4, return_state=True)
    second, end_state = _ema(params, x[:, 4:], mask[:, 4:], algorithm=algorithm, chunk_size=4, state=mid_state,
                             return_state=True)
    _assert_close(jnp.concatenate([first, second], axis=1), full, tol=1e-6)
    _assert_close(end_state, state, tol=1e-6)


@settings(max_examples=10, deadline=None)
@given(regime=st.sampled_from(["normal", "q_near_0", "q_near_1", "mixed"]), seed=st.integers(0, 2**31 - 1))
def test_step_iterated_equals_causal_full_pass(regime, seed):
    batch, length, embed, ndim = _SHAPES[0]
    rng = np.random.default_rng(seed)
    params = _params(seed, embed, ndim, False, regime)
    x = jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32)
    mask = _mask(rng, batch, length, "random")
    full, full_state = _ema(params, x, mask, algorithm="fft", chunk_size=4, return_state=True)
    state, outs = None, []
    for t in range(length):
        out_t, state = _step(params, x[:, t], state, mask[:, t])
        outs.append(out_t)
    _assert_close(jnp.stack(outs, axis=1), full, tol=1e-6)
    _assert_close(state, full_state, tol=1e-6)


def test_gradients_agree_across_algorithms_and_stay_finite_when_saturated():
    batch, length, embed, ndim = 2, 8, 2, 3
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32)
    mask = _mask(rng, batch, length, "right_pad")
    # Bidirectional with truncation exercises every path: both directions and the delayed second input stream.
    bidirectional, truncation = True, 3
    params = _params(3, embed, ndim, bidirectional, "mixed")
    # Raw 40 makes p * alpha == 1 in fp32: HF's kernel is NaN there (exp(0 * log 0)); ours clamps q.
    params["damping_factor"] = params["damping_factor"].at[0].set(40.0)
    params["decay_factor"] = params["decay_factor"].at[0].set(40.0)

    @jax.jit
    def grads(params, x):
        def loss(params, x, algorithm):
            out, _ = ema.damped_ema(params, x, mask, bidirectional=bidirectional, truncation=truncation,
                                    algorithm=algorithm, chunk_size=4)
            return jnp.sum(out * cotangent)

        return [jax.grad(loss, argnums=(0, 1))(params, x, a) for a in ema.ALGORITHMS]

    expected, *others = grads(params, x)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(expected))
    for other in others:
        chex.assert_trees_all_close(other, expected, rtol=1e-5, atol=1e-5)
    _assert_close(_ema(params, x, mask, bidirectional=bidirectional, truncation=truncation)[0],
                  ema.damped_ema_reference(params, x, mask, bidirectional=bidirectional, truncation=truncation))


def test_bfloat16_input_runs_the_ema_in_float32():
    params = _params(1, 3, 4, False, "q_near_1")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 3)), jnp.bfloat16)
    out, _ = _ema(params, x)
    assert out.dtype == jnp.bfloat16
    expected = ema.damped_ema_reference(params, np.asarray(x.astype(jnp.float32)))
    # Only the final cast rounds: one bf16 ulp.
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=2**-8, atol=1e-6)


class JitVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        # Causal and untruncated keeps the eager variant cheap; the other paths are the same ops, jitted above.
        causal = _params(5, 2, 3, False, "mixed")
        rng = np.random.default_rng(5)
        x = jnp.asarray(rng.normal(size=(2, 8, 2)), jnp.float32)
        mask = _mask(rng, 2, 8, "right_pad")
        expected = ema.damped_ema_reference(causal, x, mask)
        for algorithm in ema.ALGORITHMS:
            fn = self.variant(functools.partial(ema.damped_ema, algorithm=algorithm, chunk_size=4))
            _assert_close(fn(causal, x, mask)[0], expected)
        step = self.variant(ema.damped_ema_step)
        out_t, state = step(causal, x[:, 0], None, mask[:, 0])
        full, full_state = _ema(causal, x[:, :1], mask[:, :1], return_state=True)
        _assert_close(out_t, full[:, 0], tol=1e-6)
        _assert_close(state, full_state, tol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Module and HF parity.


def _module(embed, ndim, **kw):
    return ema.MultiDimensionDampedEma(embed_dim=embed, ndim=ndim, **kw)


def _module_layout(params: dict) -> dict:
    """The functions' ``[D', N]`` params in the module's (HF's) layout: delta, alpha, beta carry a trailing 1."""
    return {k: v[..., None] if k in ema.PARAM_NAMES[:3] else v for k, v in params.items()}


def _function_layout(params: dict) -> dict:
    return {k: v[..., 0] if k in ema.PARAM_NAMES[:3] else v for k, v in params.items()}


def test_module_params_shapes_axes_and_init():
    module = _module(16, 8, bidirectional=True)
    x = jnp.zeros((1, 4, 16))
    boxed = jax.jit(module.init)(jax.random.PRNGKey(0), x)["params"]
    specs = nn.get_partition_spec(boxed)
    params = nn.unbox(boxed)
    for name in ema.PARAM_NAMES[:3]:  # HF's layout, so a checkpoint converts by name alone
        assert params[name].shape == (32, 8, 1) and params[name].dtype == jnp.float32
        assert tuple(specs[name]) == (axes.EMBED, None, None)
    assert params["kernel_projection_matrix"].shape == (32, 8)
    assert tuple(specs["kernel_projection_matrix"]) == (axes.EMBED, None)
    assert params["residual_weight"].shape == (16,) and tuple(specs["residual_weight"]) == (axes.EMBED,)
    beta = np.asarray(params["ema_expansion_matrix"])[..., 0]
    # HF init: beta ~ N(+-1, 0.02) alternating along ndim; delta/alpha ~ N(0, 0.2).
    np.testing.assert_allclose(beta.mean(0), np.tile([1.0, -1.0], 4), atol=0.02)
    assert 0.1 < float(np.std(params["damping_factor"])) < 0.3
    out, state = jax.jit(module.apply)({"params": params}, jnp.ones((2, 4, 16)))
    assert out.shape == (2, 4, 16) and state is None


_CHUNKED = ema.MultiDimensionDampedEma(embed_dim=3, ndim=4, algorithm="chunked", chunk_size=4)
_chunked_apply = jax.jit(_CHUNKED.apply, static_argnames="use_cache")


def test_module_prefill_then_step_decoding_equals_full_pass():
    batch, length, embed, ndim = _SHAPES[0]
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(batch, length, embed)), jnp.float32)
    mask = _mask(rng, batch, length, "random")
    params = nn.unbox(jax.jit(_CHUNKED.init)(jax.random.PRNGKey(1), x))
    full, no_state = _chunked_apply(params, x, mask)
    assert no_state is None
    _assert_close(full, ema.damped_ema_reference(_function_layout(params["params"]), x, mask))
    # Prefill four positions (chunked pass returning the state), then decode one at a time (the step path).
    prefix, state = _chunked_apply(params, x[:, :4], mask[:, :4], use_cache=True)
    outs = [prefix]
    for t in range(4, length):
        out_t, state = _chunked_apply(params, x[:, t:t + 1], mask[:, t:t + 1], state=state, use_cache=True)
        outs.append(out_t)
    _assert_close(jnp.concatenate(outs, axis=1), full, tol=1e-6)


def _hf_module(embed, ndim, bidirectional, truncation, params):
    from transformers.models.deprecated.mega.modeling_mega import MegaConfig, MegaMultiDimensionDampedEma

    config = MegaConfig(hidden_size=embed, ema_projection_size=ndim, bidirectional=bidirectional,
                        truncation=truncation)
    # train(): HF caches the kernel in eval mode; this module has no dropout, so train() only disables the cache.
    hf = MegaMultiDimensionDampedEma(config).train()
    with torch.no_grad():
        for name, value in params.items():
            target = getattr(hf, name)  # HF shapes: [D', N, 1] for three of them
            target.copy_(torch.tensor(np.asarray(value)).reshape(target.shape))
    return hf


@pytest.mark.parametrize(
    "bidirectional,truncation,mask_kind",
    [(False, None, "none"), (False, 3, "right_pad"), (True, None, "right_pad"), (True, 3, "random")],
)
def test_parity_with_hf_outputs_and_gradients(bidirectional, truncation, mask_kind):
    batch, length, embed, ndim = _SHAPES[0]
    rng = np.random.default_rng(21)
    params = _params(21, embed, ndim, bidirectional, "normal")
    x = rng.normal(size=(batch, length, embed)).astype(np.float32)
    cotangent = rng.normal(size=(batch, length, embed)).astype(np.float32)
    mask = _mask(rng, batch, length, mask_kind)

    hf = _hf_module(embed, ndim, bidirectional, truncation, params)
    x_t = torch.from_numpy(x).permute(1, 0, 2).requires_grad_(True)  # HF is [length, batch, embed]
    hf_out, _ = hf(x_t, attention_mask=None if mask is None else torch.tensor(np.asarray(mask)))
    (hf_out * torch.from_numpy(cotangent).permute(1, 0, 2)).sum().backward()
    hf_out = hf_out.detach().permute(1, 0, 2).numpy()
    hf_grads = {name: getattr(hf, name).grad.numpy().reshape(params[name].shape) for name in params}
    hf_grad_x = x_t.grad.permute(1, 0, 2).numpy()

    full_mask = jnp.ones((batch, length), jnp.int32) if mask is None else mask
    for out in _all_algorithms(params, jnp.asarray(x), full_mask, bidirectional=bidirectional,
                               truncation=truncation):
        np.testing.assert_allclose(out, hf_out, rtol=1e-5, atol=1e-5)

    # Gradients through fft; the other algorithms' gradients equal fft's (test above).
    def loss(params, x):
        out, _ = ema.damped_ema(params, x, mask, bidirectional=bidirectional, truncation=truncation)
        return jnp.sum(out * cotangent)

    grads, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(x))
    for name in params:
        np.testing.assert_allclose(grads[name], hf_grads[name], rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(grad_x, hf_grad_x, rtol=1e-4, atol=1e-4)


def test_parity_with_hf_incremental_decoding():
    batch, length, embed, ndim = 2, 4, 3, 4  # the shapes of _CHUNKED, so its compiled apply is reused
    rng = np.random.default_rng(4)
    params = _params(4, embed, ndim, False, "normal")
    x = rng.normal(size=(batch, length + 1, embed)).astype(np.float32)
    mask = np.asarray(_mask(rng, batch, length + 1, "random"))
    hf = _hf_module(embed, ndim, False, None, params)
    variables = {"params": _module_layout(params)}
    with torch.no_grad():
        hf_prefix, hf_state = hf(torch.from_numpy(x[:, :length]).permute(1, 0, 2),
                                 attention_mask=torch.tensor(mask[:, :length]), use_cache=True)
        hf_last, hf_state = hf(torch.from_numpy(x[:, length:]).permute(1, 0, 2),
                               attention_mask=torch.tensor(mask[:, length:]), prev_state=hf_state,
                               use_cache=True)
    prefix, state = _chunked_apply(variables, jnp.asarray(x[:, :length]), jnp.asarray(mask[:, :length]),
                                   use_cache=True)
    last, state = _chunked_apply(variables, jnp.asarray(x[:, length:]), jnp.asarray(mask[:, length:]),
                                 state=state, use_cache=True)
    np.testing.assert_allclose(prefix, hf_prefix.permute(1, 0, 2).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, hf_last.permute(1, 0, 2).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, hf_state.numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Errors, raised before tracing.


def test_invalid_arguments_raise_value_error():
    params = _params(0, 2, 3, False)
    bidi = _params(0, 2, 3, True)
    x = jnp.zeros((1, 6, 2))
    with pytest.raises(ValueError, match="truncation must be None or a positive int"):
        ema.damped_ema(params, x, truncation=0)
    with pytest.raises(ValueError, match="truncation must be None or a positive int"):
        _module(2, 3, truncation=-1)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        ema.damped_ema(params, x, algorithm="dense")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        _module(2, 3, algorithm="dense")
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        ema.damped_ema(params, x, algorithm="chunked", chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        _module(2, 3, algorithm="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="bidirectional EMA has no incremental state"):
        ema.damped_ema_step(bidi, x[:, 0])
    with pytest.raises(ValueError, match="bidirectional=False"):
        _module(2, 3, bidirectional=True).init(jax.random.PRNGKey(0), x, use_cache=True)
    with pytest.raises(ValueError, match="bidirectional=True has no incremental state"):
        ema.damped_ema(bidi, x, bidirectional=True, return_state=True)
    with pytest.raises(ValueError, match="truncation must be None when a state"):
        ema.damped_ema(params, x, truncation=3, return_state=True)
    with pytest.raises(ValueError, match="use_cache=True needs truncation=None"):
        _module(2, 3, truncation=3).init(jax.random.PRNGKey(0), x, use_cache=True)
    with pytest.raises(ValueError, match=r"kernel_projection_matrix'\] must be \[2\*embed=4"):
        ema.damped_ema(params, x, bidirectional=True)
    with pytest.raises(ValueError, match="trailing singleton"):
        ema.damped_ema({**params, "decay_factor": params["decay_factor"][..., None]}, x)
    with pytest.raises(ValueError, match=r"x must be \[batch, length, embed=2\]"):
        ema.damped_ema(params, jnp.zeros((1, 6, 3)))
    with pytest.raises(ValueError, match=r"padding_mask must be \[batch, length\]"):
        ema.damped_ema(params, x, jnp.ones((1, 5)))
    with pytest.raises(ValueError, match=r"state must be \[batch, embed, ndim\]"):
        ema.damped_ema(params, x, state=jnp.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        _module(0, 3)
    with pytest.raises(ValueError, match="state is only read when use_cache=True"):
        _module(2, 3).init(jax.random.PRNGKey(0), x, state=jnp.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"padding_mask must be \[batch, length\]"):
        _module(2, 3).init(jax.random.PRNGKey(0), x[:, :1], jnp.ones((1, 2)), use_cache=True)
    # Shapes are static, so the same errors come out of a jitted call at trace time, before any compute.
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        jax.jit(functools.partial(ema.damped_ema, algorithm="chunked", chunk_size=4))(params, x)
