"""MEGA's attention weights (softmax / laplace / relu2) against the float64 twin, with padding, causality and fully
padded blocks; and the causal rule used by decoding: a row's weights depend only on the keys it can see."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.gated_attention import ATTENTION_FUNCTIONS, gated_attention_weights, gated_attention_weights_reference

SETTINGS = settings(max_examples=12, deadline=None)


@SETTINGS
@given(st.sampled_from(ATTENTION_FUNCTIONS), st.booleans(), st.integers(1, 7), st.integers(0, 10**6),
       st.sampled_from(["none", "random", "all"]))
def test_weights_match_twin(activation, causal, n, seed, padding):
    rng = np.random.RandomState(seed)
    q, k = rng.randn(n, 4).astype(np.float32), rng.randn(n, 4).astype(np.float32)
    bias = 0.3 * rng.randn(n, n).astype(np.float32)
    mask = {"none": None, "random": rng.rand(n) < 0.6, "all": np.zeros(n, bool)}[padding]
    visible = np.tril(np.ones((n, n), bool)) if causal else None
    ours = gated_attention_weights(jnp.asarray(q), jnp.asarray(k), jnp.asarray(bias), activation=activation,
                                   causal=causal, key_mask=None if mask is None else jnp.asarray(mask)[None, :],
                                   visible=None if visible is None else jnp.asarray(visible))
    ref = gated_attention_weights_reference(q, k, bias, activation=activation, causal=causal, key_mask=mask)
    assert np.all(np.isfinite(np.asarray(ours)))
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-6)


def test_causal_rows_ignore_later_keys():
    rng = np.random.RandomState(0)
    q, k = rng.randn(6, 4).astype(np.float32), rng.randn(6, 4).astype(np.float32)
    bias = jnp.zeros((6, 6))
    vis = jnp.tril(jnp.ones((6, 6), bool))
    for activation in ATTENTION_FUNCTIONS:
        full = gated_attention_weights(jnp.asarray(q), jnp.asarray(k), bias, activation=activation, causal=True,
                                       visible=vis)
        k2 = k.copy()
        k2[4:] += 5.0
        moved = gated_attention_weights(jnp.asarray(q), jnp.asarray(k2), bias, activation=activation, causal=True,
                                        visible=vis)
        np.testing.assert_allclose(full[:4], moved[:4], rtol=1e-6)
