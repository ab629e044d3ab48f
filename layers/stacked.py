"""Stacked parameters: N copies of a module's params along leading axes, applied by index inside a scan.

This is how depth stays out of compile time: a layer is traced once and its params are stacked (and indexed
with a traced step number), instead of N separately traced layers. The logical axis names of every param get
the stack axes prepended, so sharding rules see e.g. ``("layers", "embed", "mlp")``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax

Array = jax.Array


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def init_stacked(module: nn.Module, rng: Array, stack_shape: Sequence[int], stack_names: Sequence[str | None],
                 *init_args, **init_kwargs):
    """``module.init`` run for ``prod(stack_shape)`` independent keys, stacked to ``[*stack_shape, ...]``.

    Returns the ``params`` tree, still boxed with logical names (``stack_names`` prepended).
    """
    n = math.prod(stack_shape)
    keys = jax.random.split(rng, n)
    params = jax.vmap(lambda k: module.init(k, *init_args, **init_kwargs)["params"])(keys)

    def restack(leaf):
        if _is_box(leaf):
            value = leaf.value.reshape(tuple(stack_shape) + leaf.value.shape[1:])
            return leaf.replace(value=value, names=tuple(stack_names) + tuple(leaf.names))
        return leaf.reshape(tuple(stack_shape) + leaf.shape[1:])

    return jax.tree.map(restack, params, is_leaf=_is_box)


def index_stacked(params, index):
    """The params of one stacked copy: every leaf indexed by ``index`` (ints or traced scalars) on its leading axes."""
    return jax.tree.map(lambda p: p[index], params)


# What the backward pass keeps from each scanned layer. Under ``lax.scan`` every residual autodiff keeps is
# written into a ``[depth, ...]`` stack (a zero-filled buffer, a dynamic-update-slice per layer, a slice back in
# the backward), so each elementwise intermediate costs far more than it does unrolled: for ALBERT-base, plain
# autodiff keeps six ``[12, 8, 128, 3072]`` stacks of GELU intermediates alone. Keeping only matmul outputs
# and recomputing the cheap elementwise work (softmax, LayerNorm, activations) cuts the step's temp memory 2.1x
# and its time ~10% on CPU (benchmarks/albert_train_step.py).
SCAN_RESIDUALS = {
    "all": None,  # plain autodiff: every intermediate is kept
    "dots": jax.checkpoint_policies.dots_saveable,  # matmul outputs kept, elementwise ops recomputed
    "inputs": jax.checkpoint_policies.nothing_saveable,  # only each layer's input: the whole layer is recomputed
}


def check_scan_residuals(residuals: str, field: str = "scan_residuals") -> None:
    if residuals not in SCAN_RESIDUALS:
        raise ValueError(f"{field}={residuals!r}; expected one of {sorted(SCAN_RESIDUALS)}")


def checkpoint_layer(fn, residuals: str, field: str = "scan_residuals"):
    """``fn`` (a scan body) wrapped so that its backward keeps only the ``residuals`` of :data:`SCAN_RESIDUALS`.

    Values and gradients do not change; only what is stored versus recomputed does.
    """
    check_scan_residuals(residuals, field)
    policy = SCAN_RESIDUALS[residuals]
    if residuals == "all":
        return fn
    return jax.checkpoint(fn, prevent_cse=False, policy=policy)
