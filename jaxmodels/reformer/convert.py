"""Reformer checkpoint names: our param paths <-> HF state-dict keys (pure renames, transposes and stacking)."""

from __future__ import annotations

import re

from jaxmodels.hf_io import torch_leaf
from jaxmodels.reformer.config import ReformerConfig

BASE_MODEL_PREFIX = "reformer"
# ``lm_head.decoder.bias`` is the same tensor as ``lm_head.bias`` (HF ties them); we export both names.
TIED_KEYS = ()
_SLOT = re.compile(r"layers_(\d+)")


def key_fn(config: ReformerConfig):
    """``(path, shape) -> [(hf_name, index)]`` for a Reformer param tree (see ``jaxmodels.hf_io``).

    Layer params are stacked per layer kind: ``encoder/layers_{k}`` row ``r`` is HF layer ``r * P + k`` with
    ``P = config.layer_period``.
    """
    period = config.layer_period

    def keys(path, shape):
        for at, part in enumerate(path):
            m = _SLOT.fullmatch(part)
            if m and at > 0 and path[at - 1] == "encoder":
                k = int(m.group(1))
                stem = ".".join(path[:at])
                rest = torch_leaf(path[at + 1:])
                return [(f"{stem}.layers.{r * period + k}.{rest}", (r,)) for r in range(shape[0])]
        name = torch_leaf(path)
        # Axial weights are an HF ParameterList: ``position_embeddings.weights.{k}``.
        name = re.sub(r"position_embeddings\.weights_(\d+)$", r"position_embeddings.weights.\1", name)
        if name == "lm_head.bias":
            return [(name, ()), ("lm_head.decoder.bias", ())]
        return [(name, ())]

    return keys
