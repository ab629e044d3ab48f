"""Optimizers and learning-rate schedules by name (optax), with global-norm clipping and per-parameter rates.

    tx, schedule = build_optimizer("lamb", learning_rate=1e-3, total_steps=10_000, warmup_steps=500)
    factors = learning_rate_factors(boxed_abstract_params, backbone="albert", head_factor=10.0, layer_decay=0.8)
    tx, schedule = build_optimizer("adamw", learning_rate=2e-5, total_steps=1000, factors=factors)

Params are float32 whatever the model's compute `dtype`, so optimizer moments are float32 too. Gradient
accumulation is not an optax wrapper here: `train.step` sums the gradients of `grad_accum_steps` micro-batches
inside one jitted step, so one optimizer step is always one call and one `state.step`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import optax

from layers import axes

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


def learning_rate_factors(boxed_params: Any, *, backbone: str, head_factor: float = 1.0,
                          layer_decay: float = 1.0) -> Any:
    """Per-parameter multipliers of the learning rate: differential rates for a task head, and layer-wise decay.

    Args:
      boxed_params: the params (abstract is enough) boxed with their logical axis names, as
        `jaxmodels.init_params(module, rng, boxed=True)` gives them.
      backbone: the name of the backbone's sub-tree (the family's `base_model_prefix`); everything outside it is
        the head, whose rate is `head_factor` times the base rate.
      layer_decay: in (0, 1]. Inside the backbone, a param whose leading axis is the logical `layers` axis (a
        stack of layers, one row per layer, as `layers.stacked` scans them) gets one factor per row: the top row
        `layer_decay`, the row below `layer_decay**2`, ..., row r of R `layer_decay**(R - r)`. Embedding params
        (a path component naming "embed") sit below the bottom row: `layer_decay**(R + 1)`, R the most rows of
        any stack. Other backbone params (a pooler, a final norm) are on top, with factor 1, like the head
        before `head_factor` (the rule of ELECTRA and BEiT).
        Decay counts rows of params, not applications: ALBERT shares one layer group between all its layers, so
        the shared group is one level (factor `layer_decay`) and its embeddings the next (`layer_decay**2`); a
        family stacking a period of P layer kinds per row (Reformer's attention kinds) decays per period.
    Returns:
      A tree like the params: a float per param, or a `[rows]` float32 array for a stacked one.
    """
    specs = nn.get_partition_spec(boxed_params)
    shapes = nn.unbox(boxed_params)
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))

    def stacked(spec) -> bool:
        return len(spec) > 0 and spec[0] == axes.LAYERS

    depth = max([leaf.shape[0] for (_, leaf), spec in zip(leaves, spec_leaves) if stacked(spec)], default=0)
    factors = []
    for (path, leaf), spec in zip(leaves, spec_leaves):
        names = [str(getattr(k, "key", k)) for k in path]
        if names[0] != backbone:
            factors.append(float(head_factor))
        elif stacked(spec):
            rows = leaf.shape[0]
            factors.append((layer_decay ** (rows - np.arange(rows))).astype(np.float32))
        elif any("embed" in n.lower() for n in names[1:]):
            factors.append(float(layer_decay ** (depth + 1)))
        else:
            factors.append(1.0)
    return jax.tree.unflatten(jax.tree.structure(shapes), factors)


def scale_by_factors(factors: Any) -> optax.GradientTransformation:
    """Multiplies each update by its factor (`learning_rate_factors`): a per-parameter learning rate, since the
    optimizers' updates (and their decoupled weight decay) are proportional to the rate; a `[rows]` factor
    scales the rows of a stacked param."""

    def update(updates, state, params=None):
        del params

        def scale(u, f):
            if isinstance(f, np.ndarray):
                f = f.reshape(f.shape + (1,) * (u.ndim - 1))
            return u * np.asarray(f, u.dtype)

        return jax.tree.map(scale, updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(name: str, *, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                    schedule: str = "cosine", end_learning_rate_factor: float = 0.0, weight_decay: float = 0.0,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, grad_clip_norm: float = 0.0,
                    factors: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(tx, schedule)`: clip by global norm (when `grad_clip_norm > 0`), then the named optimizer.

    Args:
      name: "adamw", "lamb", "adafactor" or "sgd" (momentum `b1`).
      learning_rate: peak rate, reached at the end of warm-up.
      weight_decay: decoupled decay on matrices and embeddings only (`decay_mask`).
      grad_clip_norm: global-norm threshold on the (accumulated) gradient; 0 disables.
      factors: per-parameter learning-rate multipliers (`learning_rate_factors`); None: one rate for all.
    Returns:
      The transformation and the schedule (step -> rate), the latter for logging.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r}: expected one of {sorted(OPTIMIZERS)}")
    lr = build_schedule(learning_rate, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule,
                        end_learning_rate_factor=end_learning_rate_factor)
    tx = OPTIMIZERS[name](lr, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)
    if factors is not None:
        tx = optax.chain(tx, scale_by_factors(factors))
    if grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx, lr


def from_config(config, factors: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`build_optimizer` with the keys of an experiment config (`factors`: from `learning_rate_factors`)."""
    return build_optimizer(
        config.optimizer, learning_rate=config.learning_rate, total_steps=config.total_steps,
        warmup_steps=config.warmup_steps, schedule=config.schedule,
        end_learning_rate_factor=config.end_learning_rate_factor, weight_decay=config.weight_decay,
        b1=config.b1, b2=config.b2, eps=config.eps, grad_clip_norm=config.grad_clip_norm, factors=factors,
    )
