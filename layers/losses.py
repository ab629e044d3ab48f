"""Losses with PyTorch's reduction semantics, so a model's ``loss`` equals HF's for the same labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

IGNORE_INDEX = -100


def cross_entropy(logits: Array, labels: Array, *, ignore_index: int = IGNORE_INDEX) -> Array:
    """Mean token cross-entropy over labels != ``ignore_index`` (torch ``CrossEntropyLoss``).

    ``logits [..., classes]``, ``labels [...]`` int. All labels ignored gives NaN, as in torch (0/0).
    """
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)


def mse(predictions: Array, targets: Array) -> Array:
    return jnp.mean(jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32)))


def binary_cross_entropy_with_logits(logits: Array, targets: Array) -> Array:
    """Mean elementwise BCE on logits, in the numerically stable form torch uses."""
    x = logits.astype(jnp.float32)
    y = targets.astype(jnp.float32)
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def sequence_classification_loss(logits: Array, labels: Array, *, num_labels: int, problem_type: str | None) -> Array:
    """HF's rule: regression if one label, single-label if integer labels, multi-label otherwise."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif jnp.issubdtype(labels.dtype, jnp.integer):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return mse(logits.reshape(-1), labels.reshape(-1))
        return mse(logits, labels)
    if problem_type == "single_label_classification":
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    if problem_type == "multi_label_classification":
        return binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"problem_type={problem_type!r}; expected regression, single_label_classification or multi_label_classification")


def span_loss(start_logits: Array, end_logits: Array, start_positions: Array, end_positions: Array) -> Array:
    """Extractive-QA loss: positions outside ``[0, length)`` are clamped to ``length`` and ignored (HF semantics)."""
    length = start_logits.shape[-1]
    start = jnp.clip(start_positions.reshape(-1), 0, length)
    end = jnp.clip(end_positions.reshape(-1), 0, length)
    return (cross_entropy(start_logits, start, ignore_index=length) + cross_entropy(end_logits, end, ignore_index=length)) / 2
