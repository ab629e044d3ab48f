"""ALBERT checkpoint names: our param paths <-> HF state-dict keys (pure renames, transposes and stacking)."""

from __future__ import annotations

from jaxmodels.albert.config import AlbertConfig
from jaxmodels.hf_io import torch_leaf

BASE_MODEL_PREFIX = "albert"
# In HF checkpoints but never ours to load: the decoder weight is the word-embedding table (tied).
TIED_KEYS = ("predictions.decoder.weight",)
_GROUPS = "albert_layer_groups"


def key_fn(config: AlbertConfig):
    """``(path, shape) -> [(hf_name, index)]`` for an ALBERT param tree (see ``jaxmodels.hf_io``)."""

    def keys(path, shape):
        if _GROUPS in path:
            # Stacked [G, I, ...]: one HF tensor per (group, inner layer).
            at = path.index(_GROUPS)
            head, rest = path[:at], torch_leaf(path[at + 1:])
            stem = ".".join(head + (_GROUPS,))
            return [
                (f"{stem}.{g}.albert_layers.{i}.{rest}", (g, i))
                for g in range(config.num_hidden_groups)
                for i in range(config.inner_group_num)
            ]
        name = torch_leaf(path)
        if name == "predictions.bias":
            # Tied to `predictions.decoder.bias`. HF's safetensors export drops the alias and its loader then
            # re-initialises the shared bias to zero (transformers 4.46.3 loses the MLM bias on its own round
            # trip); writing both keeps the bias through HF.
            return [(name, ()), ("predictions.decoder.bias", ())]
        # HF's pooler is a bare Linear (`albert.pooler`); ours is the shared Pooler module with a `dense` inside.
        name = name.replace("pooler.dense.", "pooler.")
        return [(name, ())]

    return keys
