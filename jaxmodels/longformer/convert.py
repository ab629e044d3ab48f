"""Longformer checkpoint names: our param paths <-> HF state-dict keys (renames, transposes, per-layer stacking).

Our tree mirrors HF's module names, so most leaves are ``torch_leaf(path)``. The differences:
- ``encoder.layer`` is one stacked tree ``[num_hidden_layers, ...]``; leaf i is ``...encoder.layer.{i}.<rest>``.
- The masked-LM head is the shared ``layers.heads.MaskedLMHead``: its ``LayerNorm`` is HF's ``lm_head.layer_norm``,
  and its decoder is the word-embedding table (tied: ``lm_head.decoder.weight`` is not ours to load).
- ``lm_head.bias`` is written twice, also as ``lm_head.decoder.bias``: HF's loader re-ties the decoder's bias and
  drops a lone ``lm_head.bias`` (transformers 4.46.3 loses the bias on its own safetensors round trip).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxmodels
from jaxmodels import hf_io
from jaxmodels.hf_io import stacked_layer_names, torch_leaf
from jaxmodels.longformer.config import LongformerConfig

BASE_MODEL_PREFIX = "longformer"
_LAYERS = "layer"
# In HF checkpoints but never ours to load: the decoder weight is the word-embedding table (tied).
TIED_KEYS = ("lm_head.decoder.weight",)


def key_fn(config: LongformerConfig):
    """``(path, shape) -> [(hf_name, index)]`` for a Longformer param tree (see ``jaxmodels.hf_io``)."""

    def keys(path, shape):
        if _LAYERS in path:
            return stacked_layer_names(path, config.num_hidden_layers, _LAYERS)
        name = torch_leaf(path).replace("lm_head.LayerNorm.", "lm_head.layer_norm.")
        if name == "lm_head.bias":
            return [(name, ()), ("lm_head.decoder.bias", ())]
        return [(name, ())]

    return keys


# RoBERTa's heads have Longformer's names; a Longformer of the same head is what a conversion builds.
_ROBERTA_HEADS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                  "ForQuestionAnswering", "ForMultipleChoice")
_ROBERTA_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
                   "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id",
                   "problem_type", "id2label", "num_labels")


def longer_positions(table, pad_token_id: int, rows: int):
    """A position table ``[old, H]`` -> ``[rows, H]`` as the Longformer paper initialises it from RoBERTa's: the
    rows up to the padding position as they are, then the learned positions (``pad_token_id + 1 ..``) copied one
    after another until the table is full (the last copy cut short)."""
    import numpy as np

    first = pad_token_id + 1
    learned = table[first:]
    copies = -(-(rows - first) // len(learned))
    return np.concatenate([table[:first], np.tile(learned, (copies, 1))[:rows - first]], axis=0)


def roberta_to_longformer(hf_config: dict, state_dict: dict, *, max_position_embeddings: int,
                          attention_window) -> tuple[dict, dict]:
    """An HF RoBERTa ``config.json`` dict and state dict -> a Longformer's (config dict, state dict), as the
    Longformer paper converts ``roberta-base``: RoBERTa's weights, position embeddings copied out to
    ``max_position_embeddings`` (:func:`longer_positions`), every layer's ``query_global`` / ``key_global`` /
    ``value_global`` initialised from its ``query`` / ``key`` / ``value``, and the windows given."""
    if hf_config.get("model_type") != "roberta":
        raise ValueError(f"from_roberta: config model_type={hf_config.get('model_type')!r}; expected 'roberta'")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"from_roberta: position_embedding_type={hf_config['position_embedding_type']!r}; "
                         "Longformer has absolute positions only")
    head = (hf_config.get("architectures") or ["RobertaModel"])[0]
    if not head.startswith("Roberta") or head[len("Roberta"):] not in _ROBERTA_HEADS:
        raise ValueError(f"from_roberta: architecture {head!r} has no Longformer counterpart; expected Roberta + one "
                         f"of {list(_ROBERTA_HEADS)}")
    config = {k: hf_config[k] for k in _ROBERTA_FIELDS if k in hf_config}
    config.update(model_type="longformer", architectures=["Longformer" + head[len("Roberta"):]],
                  sep_token_id=hf_config.get("eos_token_id", 2), attention_window=attention_window,
                  max_position_embeddings=max_position_embeddings)
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith("embeddings.position_ids"):  # a buffer older checkpoints saved
            continue
        name = "longformer." + name[len("roberta."):] if name.startswith("roberta.") else name
        if name.endswith("embeddings.position_embeddings.weight"):
            tensor = longer_positions(np.asarray(tensor), config.get("pad_token_id", 1), max_position_embeddings)
        out[name] = tensor
        for part in ("query", "key", "value"):
            if f".attention.self.{part}." in name:
                out[name.replace(f".self.{part}.", f".self.{part}_global.")] = tensor
    return config, out


def from_roberta(path: str, max_position_embeddings: int = 4098, attention_window=512, *, dtype=None):
    """An HF RoBERTa checkpoint directory -> ``(module, params)`` of the Longformer it becomes (see
    :func:`roberta_to_longformer`): ``RobertaForMaskedLM`` -> ``LongformerForMaskedLM``, and so for every head.

    On inputs whose tokens are all within ``attention_window // 2`` of each other (and no global token) it computes
    what the RoBERTa model does; ``jaxmodels.save_pretrained`` writes it as an HF Longformer checkpoint.
    """
    hf_config = hf_io.read_config(path)
    state_dict = hf_io.strip_or_add_prefix(hf_io.load_state_dict(path), "roberta", want_prefix=True)
    config, state_dict = roberta_to_longformer(hf_config, state_dict, max_position_embeddings=max_position_embeddings,
                                               attention_window=attention_window)
    module = jaxmodels.from_config(config, dtype=jnp.float32 if dtype is None else dtype)
    if config["architectures"][0] == "LongformerModel":
        state_dict = hf_io.strip_or_add_prefix(state_dict, BASE_MODEL_PREFIX, want_prefix=False)
    params, missing, _ = hf_io.state_dict_to_params(state_dict, jaxmodels.abstract_params(module),
                                                     key_fn(module.config))
    if missing:
        raise ValueError(f"from_roberta: {path!r} lacks {missing[:4]} of a {type(module).__name__}")
    return module, jax.tree.map(jnp.asarray, params)
