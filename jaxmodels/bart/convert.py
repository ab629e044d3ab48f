"""BART checkpoint names: our param paths <-> HF state-dict keys (renames, transposes and per-layer stacking).

Our tree mirrors HF's module names, so most leaves are ``torch_leaf(path)``. Differences:
- ``layers`` is one stacked tree per stack (``[encoder_layers, ...]`` under ``encoder``, ``[decoder_layers, ...]``
  under ``decoder``); leaf i is ``<stack>.layers.{i}.<rest>``.
- The token table is stored once, as HF's safetensors export does: ``model.shared.weight`` (``shared.weight`` in a
  bare ``BartModel`` file; ``model.decoder.embed_tokens.weight`` for ``BartForCausalLM``). Its tied copies
  (``*.embed_tokens.weight`` of the stacks, ``lm_head.weight`` when tied), which older PyTorch files also hold, are
  :data:`TIED_KEYS`: read by nobody, not reported as unexpected.
- Except with ``tie_word_embeddings=False``: HF 4.46.3 then does not re-tie the stacks' ``embed_tokens`` to
  ``shared`` when loading, and a file holding only ``model.shared.weight`` (HF's own export) leaves them randomly
  initialised: HF's own save / load round trip of such a model changes its outputs. Our export also writes the two
  ``embed_tokens`` copies, so HF loads what we saved.
- ``final_logits_bias`` (a buffer in HF, ``[1, vocab]``) and the untied ``lm_head`` keep HF's names and shapes.
"""

from __future__ import annotations

from jaxmodels.bart.config import BartConfig
from jaxmodels.hf_io import stacked_layer_names, torch_leaf

BASE_MODEL_PREFIX = "model"
_LAYERS = "layers"
TIED_KEYS = tuple(f"{prefix}{stack}.embed_tokens.weight" for prefix in ("", "model.") for stack in ("encoder", "decoder")
                  ) + ("lm_head.weight",)


def key_fn(config: BartConfig):
    """``(path, shape) -> [(hf_name, index)]`` for a BART param tree (see ``jaxmodels.hf_io``)."""

    def keys(path, shape):
        if _LAYERS in path:
            encoder = "encoder" in path[:path.index(_LAYERS)]
            return stacked_layer_names(path, config.encoder_layers if encoder else config.decoder_layers)
        name = torch_leaf(path)
        if path[-2:] == ("shared", "embedding") and not config.tie_word_embeddings:
            stem = name[: -len("shared.weight")]
            return [(name, ())] + [(f"{stem}{stack}.embed_tokens.weight", ()) for stack in ("encoder", "decoder")]
        return [(name, ())]

    return keys
