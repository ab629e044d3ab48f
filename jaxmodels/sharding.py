"""Logical-axis rules and param shardings: how our modules' logical names (``layers/axes.py``) land on a device mesh.

    shardings = param_shardings(boxed_abstract_params, mesh)          # a NamedSharding per param
    module, params = jaxmodels.from_pretrained("org/name", mesh=mesh)  # each tensor read straight into its sharding

The mesh axes ("data", "fsdp", "sequence", "tensor") and the rule sets are defined here and nowhere else;
``train/partitioning.py`` builds meshes from config strings and shards optimizer state and batches with them. A
mesh may have only some of the axes (``jax.make_mesh((8,), ("fsdp",))``): rules naming an axis it lacks replicate.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from layers import axes

# `sequence` splits the length of activations (families with sequence-parallel layers use it through
# shard_map; for the others XLA gathers what a layer needs). Size 1 unless a config asks for it.
MESH_AXES = ("data", "fsdp", "sequence", "tensor")
SEQUENCE_AXIS = "sequence"

# Kernels: `embed` inputs on fsdp (ZeRO-3 style), `mlp` / `heads` / `vocab` outputs on tensor (Megatron style).
# Activations: batch over data and fsdp, length over sequence, the tensor-parallel widths over tensor.
DEFAULT_RULES = (
    (axes.EMBED, "fsdp"),
    (axes.HEADS, "tensor"),
    (axes.KV, None),
    (axes.MLP, "tensor"),
    (axes.VOCAB, "tensor"),
    (axes.LAYERS, None),
    (axes.POSITIONS, None),
    (axes.CANDIDATES, ("data", "fsdp")),
    (axes.ACT_BATCH, ("data", "fsdp")),
    (axes.ACT_LENGTH, SEQUENCE_AXIS),
    (axes.ACT_EMBED, None),
    (axes.ACT_HEADS, "tensor"),
    (axes.ACT_KV, None),
    (axes.ACT_MLP, "tensor"),
    (axes.ACT_VOCAB, "tensor"),
)

# Params replicated, only the batch (and length) split: plain data parallelism, the baseline to compare with.
DATA_PARALLEL_RULES = (
    (axes.ACT_BATCH, ("data", "fsdp")),
    (axes.ACT_LENGTH, SEQUENCE_AXIS),
)

RULE_SETS = {"default": DEFAULT_RULES, "data_parallel": DATA_PARALLEL_RULES}


def mesh_rules(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
    """``rules`` with the mesh axes ``mesh`` lacks dropped (a rule left with none replicates)."""
    out = []
    for name, axis in rules:
        kept = tuple(a for a in (axis if isinstance(axis, tuple) else (axis,)) if a is not None and a in mesh.shape)
        out.append((name, kept if len(kept) > 1 else kept[0] if kept else None))
    return tuple(out)


def param_shardings(boxed_abstract_params, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a tree of (abstract) params boxed with logical names; unboxed leaves are replicated.

    A dimension whose size the mesh axes do not divide (a 128-row table on a 3-way axis) is replicated
    instead: layouts then exist for any mesh, which is what restoring a checkpoint onto another mesh needs.
    """
    specs = nn.get_partition_spec(boxed_abstract_params)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, mesh_rules(mesh, rules))
    shapes = nn.unbox(boxed_abstract_params)
    return jax.tree.map(lambda sharding, x: _divisible(sharding, x.shape), shardings, shapes,
                        is_leaf=lambda s: isinstance(s, NamedSharding))


def _divisible(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    for dim, axes in enumerate(spec):
        if axes is None:
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        if shape[dim] % math.prod(sharding.mesh.shape[a] for a in names):
            spec[dim] = None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


