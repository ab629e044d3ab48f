"""Logical axis name -> mesh axis rules. Modules only know logical names (``layers/axes.py``); this file decides
how they map onto the ``data`` / ``fsdp`` / ``sequence`` / ``tensor`` mesh axes. An experiment picks a set by name
(``config.axis_rules = "default"``) or gives its own ``((logical, mesh_axis_or_None), ...)``.

Rules are tried in order; flax skips a mesh axis already used by an earlier dimension of the same array, so an
activation ``[batch, length, embed]`` gets ``batch -> (data, fsdp)`` and leaves ``embed`` unsharded, while a
kernel ``[embed, mlp]`` gets ``embed -> fsdp`` (ZeRO-3 style) and ``mlp -> tensor`` (Megatron style).
"""

from __future__ import annotations

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("candidates", ("data", "fsdp")),
    ("blocks", None),
)

# Params replicated, only the batch split: plain data parallelism on any mesh (the baseline to compare with).
DATA_PARALLEL_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
)

RULE_SETS = {"default": DEFAULT_RULES, "data_parallel": DATA_PARALLEL_RULES}


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
    mesh_axes = {"data", "fsdp", "sequence", "tensor"}
    for name, axis in rules:
        for a in (axis if isinstance(axis, tuple) else (axis,)):
            if a is not None and a not in mesh_axes:
                raise ValueError(f"config.axis_rules: rule {name!r} -> {a!r} names no mesh axis "
                                 f"(axes: {sorted(mesh_axes)})")
    return rules
