"""ScaleNorm and RMSNorm against their float64 twins and against HF's torch modules (incl. HF's rmsnorm bug)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from layers import scale_norm
from tests.oracle import require_torch

SETTINGS = settings(max_examples=10, deadline=None)


@SETTINGS
@given(st.integers(1, 16), st.floats(-100.0, 100.0), st.floats(1e-3, 10.0), st.integers(0, 10**6), st.booleans())
def test_scale_and_rms_norm_match_twins(d, mean, std, seed, affine):
    rng = np.random.RandomState(seed)
    x = (mean + std * rng.randn(3, d)).astype(np.float32)
    s, w = rng.randn(1).astype(np.float32), rng.randn(d).astype(np.float32)
    np.testing.assert_allclose(
        scale_norm.scale_norm(jnp.asarray(x), jnp.asarray(s) if affine else None, epsilon=1e-5),
        scale_norm.scale_norm_reference(x, s if affine else None, epsilon=1e-5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        scale_norm.rms_norm(jnp.asarray(x), jnp.asarray(w) if affine else None, epsilon=1e-5),
        scale_norm.rms_norm_reference(x, w if affine else None, epsilon=1e-5), rtol=1e-5, atol=1e-5)


def test_rms_norm_is_scale_invariant_and_hf_bug_is_not():
    x = jnp.asarray(np.random.RandomState(0).randn(2, 8), jnp.float32)
    w = jnp.ones((8,))
    np.testing.assert_allclose(scale_norm.rms_norm(7.0 * x, w, epsilon=0.0), scale_norm.rms_norm(x, w, epsilon=0.0),
                               rtol=1e-5)
    np.testing.assert_allclose(scale_norm.rms_norm(x, 2 * w, epsilon=1e-5, hf_identity_bug=True), 2 * x)


def test_match_hf_modules():
    torch = require_torch()
    from transformers.models.deprecated.mega import modeling_mega as hf

    rng = np.random.RandomState(1)
    x = rng.randn(4, 3, 6).astype(np.float32)
    sn = hf.MegaScaleNorm(dim=-1, eps=1e-5)
    rn = hf.MegaRMSNorm(6, eps=1e-5)
    with torch.no_grad():
        sn.scalar.fill_(1.7)
        rn.weight.copy_(torch.tensor(rng.randn(6).astype(np.float32)))
        theirs_s, theirs_r = sn(torch.tensor(x)).numpy(), rn(torch.tensor(x)).numpy()
    np.testing.assert_allclose(scale_norm.scale_norm(jnp.asarray(x), jnp.asarray([1.7]), epsilon=1e-5), theirs_s,
                               rtol=1e-6, atol=1e-6)
    w = jnp.asarray(rn.weight.detach().numpy())
    np.testing.assert_allclose(scale_norm.rms_norm(jnp.asarray(x), w, epsilon=1e-5, hf_identity_bug=True), theirs_r,
                               rtol=1e-6)
    assert not np.allclose(scale_norm.rms_norm(jnp.asarray(x), w, epsilon=1e-5), theirs_r, atol=1e-2)
