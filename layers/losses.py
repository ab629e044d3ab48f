"""Losses with PyTorch's reduction semantics, so a model's ``loss`` equals HF's for the same labels.

Every loss checks its labels first (``layers.checks``): dtype and shape against the logits always (static), values
when they can be read (eagerly, or under ``layers.checks.checked``). A class id out of range would otherwise be
clamped by the gather and give a plausible wrong loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from layers.checks import check_range, check_values

Array = jax.Array

IGNORE_INDEX = -100


def check_class_labels(logits: Array, labels: Array, *, ignore_index: int = IGNORE_INDEX, name: str = "labels") -> None:
    """``labels [...]`` integer class ids for ``logits [..., classes]``: in ``[0, classes)`` or ``ignore_index``."""
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"{name}: class ids must be integers, got dtype {jnp.result_type(labels)}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{name}: shape {tuple(labels.shape)} does not match the logits {tuple(logits.shape)}; "
                         f"expected {tuple(logits.shape[:-1])}")
    classes = logits.shape[-1]
    check_range(name, labels, classes, f"class ids must be in [0, {classes}) or {ignore_index} (ignored)",
                ignore=ignore_index)


def cross_entropy(logits: Array, labels: Array, *, ignore_index: int = IGNORE_INDEX, name: str = "labels") -> Array:
    """Mean token cross-entropy over labels != ``ignore_index`` (torch ``CrossEntropyLoss``).

    ``logits [..., classes]``, ``labels [...]`` int. All labels ignored gives NaN, as in torch (0/0).
    """
    check_class_labels(logits, labels, ignore_index=ignore_index, name=name)
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)


def mse(predictions: Array, targets: Array) -> Array:
    if tuple(predictions.shape) != tuple(targets.shape):
        raise ValueError(f"labels: shape {tuple(targets.shape)} does not match the predictions "
                         f"{tuple(predictions.shape)} (regression)")
    return jnp.mean(jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32)))


def binary_cross_entropy_with_logits(logits: Array, targets: Array) -> Array:
    """Mean elementwise BCE on logits, in the numerically stable form torch uses. ``targets`` in [0, 1]."""
    if tuple(logits.shape) != tuple(targets.shape):
        raise ValueError(f"labels: shape {tuple(targets.shape)} does not match the logits {tuple(logits.shape)} "
                         "(multi-label: one 0/1 target per label)")
    check_values("labels", targets, lambda t: (t >= 0) & (t <= 1), "multi-label targets must be in [0, 1]")
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
            if labels.size != logits.shape[0]:
                raise ValueError(f"labels: {labels.size} regression targets for a batch of {logits.shape[0]}")
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
