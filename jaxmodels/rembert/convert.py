"""RemBERT checkpoint names: our param paths <-> HF state-dict keys (pure renames, transposes and stacking)."""

from __future__ import annotations

from jaxmodels.hf_io import torch_leaf
from jaxmodels.rembert.config import RemBertConfig

BASE_MODEL_PREFIX = "rembert"
_LAYERS = "layer"  # the stacked layer params under `encoder`: HF's `encoder.layer.{i}`


def key_fn(config: RemBertConfig):
    """``(path, shape) -> [(hf_name, index)]`` for a RemBERT param tree (see ``jaxmodels.hf_io``)."""

    def keys(path, shape):
        if _LAYERS in path and path[path.index(_LAYERS) - 1] == "encoder":
            # Stacked [L, ...]: one HF tensor per layer.
            at = path.index(_LAYERS)
            stem, rest = ".".join(path[:at + 1]), torch_leaf(path[at + 1:])
            return [(f"{stem}.{i}.{rest}", (i,)) for i in range(config.num_hidden_layers)]
        name = torch_leaf(path)
        if name.startswith("predictions."):
            # HF's LM head is `cls.predictions`; its decoder carries the vocabulary bias (ours sits beside it).
            name = "cls." + ("predictions.decoder.bias" if name == "predictions.bias" else name)
        return [(name, ())]

    return keys
