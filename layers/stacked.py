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
