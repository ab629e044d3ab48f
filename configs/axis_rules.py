"""Logical axis name -> mesh axis rules. Modules only know logical names (``layers/axes.py``); this file decides
how they map onto the ``data`` / ``fsdp`` / ``tensor`` mesh axes. Override per experiment with ``rules=`` in a config.

Rules are tried in order; flax skips a mesh axis already used by an earlier dimension of the same array, so an
activation ``[batch, length, embed]`` gets ``batch -> (data, fsdp)`` and leaves ``embed`` unsharded, while a
kernel ``[embed, mlp]`` gets ``embed -> fsdp`` (ZeRO-3 style) and ``mlp -> tensor`` (Megatron style).
"""

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("candidates", ("data", "fsdp")),
    ("blocks", None),
)
