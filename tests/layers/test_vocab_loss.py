"""layers.vocab_loss: the labelled-rows-only, chunked vocabulary cross-entropy against its twin (full logits +
cross_entropy, by autodiff): values and all three gradients, whatever the chunk, labels and dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.vocab_loss import projected_cross_entropy, projected_cross_entropy_reference


def _problem(seed, b=3, length=11, e=6, vocab=37, keep=0.3, mean=0.0, ignore_index=-100, dtype=jnp.float32):
    rng = np.random.RandomState(seed)
    h = jnp.asarray(mean + rng.randn(b, length, e), dtype)
    kernel = jnp.asarray(rng.randn(e, vocab), dtype)
    bias = jnp.asarray(rng.randn(vocab), jnp.float32)
    labels = rng.randint(0, vocab, (b, length))
    labels[rng.rand(b, length) > keep] = ignore_index
    labels[0, -1] = 5  # at least one label; examples differ in how many they have
    return h, kernel, bias, jnp.asarray(labels)


def _value_and_grads(fn, h, kernel, bias, labels, **kw):
    weight = 1.7  # a non-unit cotangent must reach the hand-written backward
    return jax.value_and_grad(lambda *p: weight * fn(*p, labels, **kw), argnums=(0, 1, 2))(h, kernel, bias)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([1, 3, 4, 32]), st.floats(0.02, 1.0), st.sampled_from([0.0, 30.0]),
       st.sampled_from([-100, 2]))
def test_matches_full_logits_twin(seed, chunk, keep, mean, ignore_index):
    """Any chunk (dividing the length or not), label density, large-mean states and ignore index."""
    h, kernel, bias, labels = _problem(seed, keep=keep, mean=mean, ignore_index=ignore_index)
    got = _value_and_grads(projected_cross_entropy, h, kernel, bias, labels, chunk=chunk, ignore_index=ignore_index)
    want = _value_and_grads(projected_cross_entropy_reference, h, kernel, bias, labels, ignore_index=ignore_index)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5 * float(np.abs(w).max()))


def test_bf16_states_follow_the_unfused_head():
    h, kernel, bias, labels = _problem(0, dtype=jnp.bfloat16)
    got = _value_and_grads(projected_cross_entropy, h, kernel, bias, labels, chunk=4)
    want = _value_and_grads(projected_cross_entropy_reference, h, kernel, bias, labels)
    assert got[1][0].dtype == jnp.bfloat16 and got[1][1].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-2)
    for g, w in zip(got[1], want[1]):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.abs(g - w).max() <= 3e-2 * np.abs(w).max()


def test_unlabelled_positions_get_no_gradient_and_all_ignored_is_nan():
    h, kernel, bias, labels = _problem(1)
    _, (dh, _, _) = _value_and_grads(projected_cross_entropy, h, kernel, bias, labels, chunk=4)
    ignored = np.asarray(labels) == -100
    assert not np.any(np.asarray(dh)[ignored]) and np.all(np.any(np.asarray(dh)[~ignored] != 0, axis=-1))
    nothing = jnp.full_like(labels, -100)
    assert np.isnan(float(projected_cross_entropy(h, kernel, bias, nothing)))  # 0 / 0, as torch


def test_jit_and_no_class_sized_buffer():
    """Jitted it equals eager, and its backward never forms a [batch, length, vocab] array."""
    h, kernel, bias, labels = _problem(2, b=2, length=64, vocab=4099, keep=0.1)
    loss = lambda *p: projected_cross_entropy(*p, labels, chunk=8)
    np.testing.assert_allclose(float(jax.jit(loss)(h, kernel, bias)), float(loss(h, kernel, bias)), rtol=1e-6)

    def temp(fn, **kw):
        grad = jax.jit(jax.grad(lambda *p: fn(*p, labels, **kw), argnums=(0, 1, 2)))
        return grad.lower(h, kernel, bias).compile().memory_analysis().temp_size_in_bytes

    full = 2 * 64 * 4099 * 4  # one [batch, length, vocab] float32 array
    assert temp(projected_cross_entropy, chunk=8) < full / 2 and temp(projected_cross_entropy_reference) >= full


def test_bad_shapes_are_refused_by_name():
    h, kernel, bias, labels = _problem(3)
    with pytest.raises(ValueError, match="labels"):
        projected_cross_entropy(h, kernel, bias, labels[:, :-1])
    with pytest.raises(ValueError, match="kernel"):
        projected_cross_entropy(h, kernel[:, :-1], bias, labels)
    with pytest.raises(ValueError, match="chunk"):
        projected_cross_entropy(h, kernel, bias, labels, chunk=0)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([1, 4, 32]), st.floats(0.05, 1.0))
def test_accuracy_is_the_argmax_of_the_full_logits_at_the_labels(seed, chunk, keep):
    h, kernel, bias, labels = _problem(seed, keep=keep)
    logits = np.asarray(jnp.matmul(h, kernel) + bias)
    valid = np.asarray(labels) != -100
    # A label that is its row's arg-max, so both outcomes occur.
    labels = np.where(valid, np.asarray(labels), -100)
    labels[0, -1] = int(logits[0, -1].argmax())
    want = float(np.mean(logits.argmax(-1)[labels != -100] == labels[labels != -100]))
    loss, accuracy = projected_cross_entropy(h, kernel, bias, jnp.asarray(labels), chunk=chunk, with_accuracy=True)
    assert float(accuracy) == pytest.approx(want)
    assert float(loss) == pytest.approx(float(projected_cross_entropy(h, kernel, bias, jnp.asarray(labels))))
    # No gradient flows through the accuracy (it is a count).
    grad = jax.grad(lambda h: projected_cross_entropy(h, kernel, bias, jnp.asarray(labels), with_accuracy=True)[1])(h)
    assert not np.any(np.asarray(grad))
