"""MEGA checkpoint names: our param paths <-> HF state-dict keys (renames, transposes and per-layer stacking).

Our tree mirrors HF's module names, so most leaves are ``torch_leaf(path)``. Two differences:
- ``layers`` is one stacked tree ``[num_hidden_layers, ...]``; leaf i is ``<prefix>layers.{i}.<rest>``.
- The LM heads are tied: ``lm_head.weight`` / ``mlm_head.weight`` are the word-embedding table, so only their
  biases are ours. The EMA params keep HF's shapes (``[D', N, 1]``), so no reshape is needed either way.
HF's rotary bias also registers a persistent ``_float_tensor`` buffer (a dtype carrier, no value); it is skipped.
"""

from __future__ import annotations

from jaxmodels.hf_io import stacked_layer_names, torch_leaf
from jaxmodels.mega.config import MegaConfig

BASE_MODEL_PREFIX = "mega"
_LAYERS = "layers"
_MAX_LAYERS_NAMED = 512
# Checkpoint names that are not ours to load: tied copies of the embeddings, and the rotary bias dtype buffers.
TIED_KEYS = ("lm_head.weight", "mlm_head.weight") + tuple(
    f"{prefix}layers.{i}.mega_layer.rel_pos_bias._float_tensor"
    for prefix in ("", "mega.") for i in range(_MAX_LAYERS_NAMED)
)


def key_fn(config: MegaConfig):
    """``(path, shape) -> [(hf_name, index)]`` for a MEGA param tree (see ``jaxmodels.hf_io``)."""

    def keys(path, shape):
        if _LAYERS in path:
            return stacked_layer_names(path, config.num_hidden_layers)
        return [(torch_leaf(path), ())]

    return keys
