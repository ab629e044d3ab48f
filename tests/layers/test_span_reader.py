"""layers.span_reader against its loop twins: width-major span enumeration, span logits with block masks, correct
spans from gold positions, and the marginal log-likelihood (0, with zero gradients, when nothing is correct)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.span_reader import (
    SpanReader,
    correct_spans,
    correct_spans_reference,
    marginal_log_loss,
    marginal_log_loss_reference,
    span_candidates,
    span_candidates_reference,
    span_logits_reference,
)


@pytest.mark.parametrize("length,width", [(1, 1), (5, 1), (12, 3), (4, 10), (9, 9)])
def test_span_candidates_are_width_major(length, width):
    starts, ends = span_candidates(length, width)
    assert list(zip(starts.tolist(), ends.tolist())) == span_candidates_reference(length, width)
    w = min(width, length)
    assert len(starts) == w * length - w * (w - 1) // 2


def test_span_logits_equal_the_loop_twin():
    rng = np.random.RandomState(0)
    hidden = jnp.asarray(rng.randn(3, 7, 5), jnp.float32)
    mask = jnp.asarray(rng.rand(3, 7) < 0.7)
    module = SpanReader(span_hidden_size=4, max_width=3, layer_norm_eps=1e-3)
    params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(1), hidden, mask)["params"])
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
    logits, span_mask = jax.jit(module.apply)({"params": params}, hidden, mask)
    want = span_logits_reference(hidden, mask, jax.tree.map(np.asarray, params), 3, 1e-3)
    masked = want == np.finfo(np.float32).min
    np.testing.assert_array_equal(~np.asarray(span_mask), masked)
    np.testing.assert_allclose(np.asarray(logits)[~masked], want[~masked], rtol=1e-5, atol=1e-6)
    assert (np.asarray(logits)[masked] == np.finfo(np.float32).min).all()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.floats(0.0, 0.6))
def test_correct_spans_and_marginal_loss_equal_the_twins(seed, density):
    rng = np.random.RandomState(seed)
    length, width = 8, 3
    starts, ends = span_candidates(length, width)
    gold_start = rng.randint(-1, length, (2, 3))
    gold_end = np.minimum(gold_start + rng.randint(0, 4, (2, 3)), length + 1)
    got = correct_spans(starts, ends, jnp.asarray(gold_start), jnp.asarray(gold_end))
    np.testing.assert_array_equal(np.asarray(got), correct_spans_reference(length, width, gold_start, gold_end))
    logits = rng.randn(4, 9).astype(np.float32) * 3
    correct = rng.rand(4, 9) < density
    logits[(rng.rand(4, 9) < 0.3) & ~correct] = np.finfo(np.float32).min  # masked entries, as the reader's
    np.testing.assert_allclose(np.asarray(marginal_log_loss(jnp.asarray(logits), jnp.asarray(correct))),
                               marginal_log_loss_reference(logits, correct), rtol=1e-5, atol=1e-5)


def test_no_correct_entry_gives_zero_loss_and_gradient():
    logits = jnp.asarray([[1.0, np.finfo(np.float32).min, 3.0], [0.5, 2.0, -1.0]])
    correct = jnp.asarray([[False, False, False], [False, True, False]])
    loss, grad = jax.jit(jax.value_and_grad(lambda x: jnp.sum(marginal_log_loss(x, correct))))(logits)
    assert float(jax.jit(marginal_log_loss)(logits, correct)[0]) == 0.0
    assert np.isfinite(np.asarray(grad)).all() and (np.asarray(grad)[0] == 0).all()
    assert np.isfinite(float(loss))
