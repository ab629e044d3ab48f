"""Optimizers and learning-rate schedules by name (optax), with global-norm clipping.

    tx, schedule = build_optimizer("lamb", learning_rate=1e-3, total_steps=10_000, warmup_steps=500)

Params are float32 whatever the model's compute `dtype`, so optimizer moments are float32 too. Gradient
accumulation is not an optax wrapper here: `train.step` sums the gradients of `grad_accum_steps` micro-batches
inside one jitted step, so one optimizer step is always one call and one `state.step`.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


def build_schedule(learning_rate: float, *, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
                   end_learning_rate_factor: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then `schedule` down to
    `learning_rate * end_learning_rate_factor` at `total_steps` (or flat for "constant")."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: expected one of {SCHEDULES}")
    end = learning_rate * end_learning_rate_factor
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=end_learning_rate_factor)
    elif schedule == "linear":
        decay = optax.linear_schedule(learning_rate, end, decay_steps)
    else:
        decay = optax.constant_schedule(learning_rate)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params) -> object:
    """True for matrices and embeddings; biases and norm scales (ndim < 2) are not decayed, as in BERT/ALBERT."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _adamw(lr, *, weight_decay, b1, b2, eps):
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)


def _lamb(lr, *, weight_decay, b1, b2, eps):
    return optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)


def _adafactor(lr, *, weight_decay, b1, b2, eps):
    # Adafactor's own defaults (factored second moments, no first moment, relative step via parameter scale):
    # b1/b2/eps from the config are Adam hyper-parameters and do not carry over.
    del b1, b2, eps
    return optax.adafactor(lr, weight_decay_rate=weight_decay or None, weight_decay_mask=decay_mask)


def _sgd(lr, *, weight_decay, b1, b2, eps):
    del b2, eps
    tx = optax.sgd(lr, momentum=b1 or None)
    return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), tx) if weight_decay else tx


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": _adamw,
    "lamb": _lamb,
    "adafactor": _adafactor,
    "sgd": _sgd,
}


def build_optimizer(name: str, *, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                    schedule: str = "cosine", end_learning_rate_factor: float = 0.0, weight_decay: float = 0.0,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
                    grad_clip_norm: float = 0.0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(tx, schedule)`: clip by global norm (when `grad_clip_norm > 0`), then the named optimizer.

    Args:
      name: "adamw", "lamb", "adafactor" or "sgd" (momentum `b1`).
      learning_rate: peak rate, reached at the end of warm-up.
      weight_decay: decoupled decay on matrices and embeddings only (`decay_mask`).
      grad_clip_norm: global-norm threshold on the (accumulated) gradient; 0 disables.
    Returns:
      The transformation and the schedule (step -> rate), the latter for logging.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r}: expected one of {sorted(OPTIMIZERS)}")
    lr = build_schedule(learning_rate, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule,
                        end_learning_rate_factor=end_learning_rate_factor)
    tx = OPTIMIZERS[name](lr, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)
    if grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx, lr


def from_config(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`build_optimizer` with the keys of an experiment config."""
    return build_optimizer(
        config.optimizer, learning_rate=config.learning_rate, total_steps=config.total_steps,
        warmup_steps=config.warmup_steps, schedule=config.schedule,
        end_learning_rate_factor=config.end_learning_rate_factor, weight_decay=config.weight_decay,
        b1=config.b1, b2=config.b2, eps=config.eps, grad_clip_norm=config.grad_clip_norm,
    )
