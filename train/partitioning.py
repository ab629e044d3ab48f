"""Device mesh, logical-axis rules and shardings for params, optimizer state and batches.

    mesh = make_mesh("data=-1,fsdp=2")            # axes (data, fsdp, sequence, tensor); -1: the devices left
    with activate(mesh, rules):                     # what nn.with_logical_constraint inside modules needs
        state = jax.jit(init, out_shardings=state_shardings(abstract, mesh, rules))(rng)

Shardings come from the logical names modules attach to their params (`nn.with_logical_partitioning`) and
activations (`nn.with_logical_constraint`), mapped through rules (`RULE_SETS` here, or pairs a config gives as
`config.axis_rules`). Optimizer moments shaped like the params get the params' shardings; anything else (counts,
factored Adafactor statistics) is replicated. One device is just a 1x1x1x1 mesh.

The mesh axes, the rule sets and `param_shardings` live in `jaxmodels/sharding.py` (loading a checkpoint straight
into shardings needs them without `train`) and are re-exported here. Modules know only logical names
(`layers/axes.py`: params `embed`, `heads`, `kv`, `mlp`, `vocab`, `layers`, `positions`, `candidates`;
activations `act_batch`, `act_length`, `act_embed`, ...). Rules are tried in order; flax skips a mesh axis
already used by an earlier dimension of the same array.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmodels.sharding import (DATA_PARALLEL_RULES, DEFAULT_RULES, MESH_AXES, RULE_SETS,  # noqa: F401
                                SEQUENCE_AXIS, param_shardings)
from layers import axes
from layers.sequence_parallel import SequenceSharding


def resolve_rules(value) -> tuple[tuple[str, object], ...]:
    """`config.axis_rules` -> rules: a name from `RULE_SETS`, or pairs `(logical_name, mesh_axis | tuple | None)`.

    Logical names a set leaves out are replicated. Raises `ValueError` naming `config.axis_rules`.
    """
    if isinstance(value, str):
        if value not in RULE_SETS:
            raise ValueError(f"config.axis_rules={value!r}: unknown rule set (known: {sorted(RULE_SETS)})")
        return RULE_SETS[value]
    try:
        rules = tuple((str(name), tuple(axis) if isinstance(axis, (list, tuple)) else axis) for name, axis in value)
    except (TypeError, ValueError):
        raise ValueError(f"config.axis_rules={value!r}: expected a rule-set name or (logical_name, mesh_axis) "
                         "pairs") from None
    for name, axis in rules:
        if name not in axes.ALL:
            raise ValueError(f"config.axis_rules: {name!r} is not a logical axis name (names: {list(axes.ALL)})")
        for a in (axis if isinstance(axis, tuple) else (axis,)):
            if a is not None and a not in MESH_AXES:
                raise ValueError(f"config.axis_rules: rule {name!r} -> {a!r} names no mesh axis "
                                 f"(axes: {list(MESH_AXES)})")
    return rules


def sequence_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> SequenceSharding | None:
    """What a sequence-parallel module is given (its `sequence_sharding` field): the mesh, its `sequence` axis and
    the mesh axes the rules put the batch on; None when the mesh does not split the length."""
    if mesh.shape.get(SEQUENCE_AXIS, 1) <= 1:
        return None
    spec = nn.logical_to_mesh_axes((axes.ACT_BATCH,), rules)[0]
    names = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return SequenceSharding(mesh, SEQUENCE_AXIS, tuple(a for a in names if a in mesh.shape and a != SEQUENCE_AXIS))


def parse_mesh(spec: str, num_devices: int) -> dict[str, int]:
    """`"data=2,fsdp=-1"` -> `{"data": 2, "fsdp": n, "sequence": 1, "tensor": 1}`, product `num_devices`."""
    sizes = {axis: 1 for axis in MESH_AXES}
    seen = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in MESH_AXES:
            raise ValueError(f"config.mesh={spec!r}: unknown axis {name!r}; axes are {MESH_AXES}")
        if name in seen:
            raise ValueError(f"config.mesh={spec!r}: axis {name!r} given twice")
        seen.add(name)
        try:
            size = int(value)
        except ValueError:
            raise ValueError(f"config.mesh={spec!r}: size of {name!r} is not an integer") from None
        if size == 0 or size < -1:
            raise ValueError(f"config.mesh={spec!r}: size of {name!r} must be positive or -1")
        sizes[name] = size
    fill = [a for a, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh={spec!r}: only one axis may be -1")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"config.mesh={spec!r}: {num_devices} devices are not divisible by {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"config.mesh={spec!r}: needs {math.prod(sizes.values())} devices, there are {num_devices}")
    return sizes


def make_mesh(spec: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes ("data", "fsdp", "sequence", "tensor") from a `config.mesh` string."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec, len(devices))
    return Mesh(np.asarray(devices).reshape(tuple(sizes[a] for a in MESH_AXES)), MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
    """Mesh and logical rules in scope, for tracing modules that constrain activations by logical name.

    `jax.set_mesh`, not the legacy `with mesh:`: flax applies `nn.with_logical_constraint` only when
    `jax.sharding.get_abstract_mesh()` is set, which the legacy context leaves empty (the constraints were then
    silently dropped).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def like_params_shardings(tree, params_abstract, params_shardings, mesh: Mesh):
    """Shardings for `tree` (an optimizer state): every sub-tree structured and shaped like the params gets the
    params' shardings, everything else is replicated."""
    param_def = jax.tree.structure(params_abstract)
    param_shapes = [p.shape for p in jax.tree.leaves(params_abstract)]

    def is_params_like(node):
        return node is not None and not isinstance(node, jax.ShapeDtypeStruct) and \
            jax.tree.structure(node) == param_def

    def assign(node):
        if is_params_like(node):
            if [x.shape for x in jax.tree.leaves(node)] == param_shapes:
                return params_shardings
            return jax.tree.map(lambda _: _replicated(mesh), node)
        return _replicated(mesh)

    return jax.tree.map(assign, tree, is_leaf=is_params_like)


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES, ndim: int = 2, *, tokens: bool = True) -> NamedSharding:
    """Sharding of a batch array: its batch axis over the axes the `act_batch` rule names and, for an array of
    tokens (`tokens`), its last axis, the length, over `act_length`'s. `[batch, length]` inputs by default;
    `ndim` 1 for `[batch]` labels, 3 for `[batch, choices, length]` (multiple choice; the choices replicated);
    `tokens=False` for an array without a length axis (`[batch, num_labels]` targets: only the batch is split)."""
    if ndim < 1:
        raise ValueError(f"batch arrays have a batch axis; got ndim={ndim}")
    spec = [axes.ACT_BATCH] + [None] * (ndim - 1)
    if tokens and ndim >= 2:
        spec[-1] = axes.ACT_LENGTH
    return nn.logical_to_mesh_sharding(PartitionSpec(*spec), mesh, rules)


def batch_shardings(mesh: Mesh, rules, batch: dict, token_keys=None) -> dict[str, NamedSharding]:
    """`batch_sharding` of every array of a batch dict; `token_keys` are the arrays with a length axis (None: all
    of rank 2 or more)."""
    return {k: batch_sharding(mesh, rules, np.ndim(v), tokens=token_keys is None or k in token_keys)
            for k, v in batch.items()}


def put_batch(batch: dict, shardings) -> dict:
    """This process's rows of each array of `batch` -> global arrays laid out by `shardings` (one sharding for
    all, or a dict by key)."""
    return {k: jax.make_array_from_process_local_data(shardings[k] if isinstance(shardings, dict) else shardings,
                                                      np.asarray(v))
            for k, v in batch.items()}
