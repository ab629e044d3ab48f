"""MEGA's simple and rotary relative biases against float64 twins (HF's tile construction) and HF's modules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from layers import relative_bias as rb
from tests.oracle import require_torch

SETTINGS = settings(max_examples=10, deadline=None)


@SETTINGS
@given(st.integers(1, 12), st.integers(0, 8), st.integers(0, 10**6))
def test_simple_bias_matches_tile_twin(length, extra, seed):
    m = length + extra
    table = np.random.RandomState(seed).randn(2 * m - 1 + 3).astype(np.float32)  # longer table: off-centre slice
    pos = jnp.arange(length)
    np.testing.assert_allclose(rb.simple_relative_bias(jnp.asarray(table), pos, pos, max_positions=m),
                               rb.simple_relative_bias_reference(table, length, m), rtol=1e-6)


@SETTINGS
@given(st.integers(1, 10), st.sampled_from([2, 4, 8]), st.integers(0, 10**6))
def test_rotary_bias_matches_twin_and_is_relative_for_equal_vectors(length, z, seed):
    rng = np.random.RandomState(seed)
    a, b = rng.randn(1, z).astype(np.float32), rng.randn(1, z).astype(np.float32)
    pos = jnp.arange(length)
    ours = rb.rotary_relative_bias(jnp.asarray(a), jnp.asarray(b), pos, pos)
    np.testing.assert_allclose(ours, rb.rotary_relative_bias_reference(a, b, length), rtol=1e-4, atol=1e-5)
    # Decoding reads single rows at shifted positions: the same numbers as the full block.
    np.testing.assert_allclose(rb.rotary_relative_bias(jnp.asarray(a), jnp.asarray(b), pos[-1:], pos), ours[-1:],
                               rtol=1e-6, atol=1e-7)


def test_match_hf_modules():
    torch = require_torch()
    import transformers
    from transformers.models.deprecated.mega import modeling_mega as hf

    cfg = transformers.MegaConfig(max_positions=16, shared_representation_size=8, hidden_size=8, chunk_size=-1)
    simple, rotary = hf.MegaSimpleRelativePositionalBias(cfg), hf.MegaRotaryRelativePositionalBias(cfg)
    rng = np.random.RandomState(0)
    with torch.no_grad():
        simple.rel_pos_bias.copy_(torch.tensor(rng.randn(31).astype(np.float32)))
        rotary.alpha.copy_(torch.tensor(rng.randn(1, 8).astype(np.float32)))
        rotary.b_param.copy_(torch.tensor(rng.randn(1, 8).astype(np.float32)))
        pos = jnp.arange(11)
        np.testing.assert_allclose(
            rb.simple_relative_bias(jnp.asarray(simple.rel_pos_bias.numpy()), pos, pos, max_positions=16),
            simple(11).numpy(), rtol=1e-6)
        np.testing.assert_allclose(
            rb.rotary_relative_bias(jnp.asarray(rotary.alpha.numpy()), jnp.asarray(rotary.b_param.numpy()), pos, pos),
            rotary(11).numpy(), rtol=1e-5, atol=1e-6)
