"""BART configuration: HF ``BartConfig`` fields and defaults, validated at construction.

Besides the model fields, the config carries the generation fields HF 4.46.3 copies from a model config into its
``generation_config`` (``max_length``, ``min_length``, ``num_beams``, ``length_penalty``, ``no_repeat_ngram_size``,
``early_stopping``, ``forced_bos_token_id``, ``forced_eos_token_id``): ``jaxmodels.generation.generate`` takes its
defaults from them, as HF's ``generate`` does (``facebook/bart-large-cnn`` ships ``num_beams=4``, ...).

There is no ``layer_norm_eps``: every BART LayerNorm uses torch's default 1e-5 (:data:`LAYER_NORM_EPS`).
``decoder_start_token_id`` may be None; a call that needs it (shifting ``input_ids`` or ``labels`` right, or
generating) then fails naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional, Union

from jaxmodels.configuration import HFConfig
from layers.activations import ACTIVATIONS

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
LAYER_NORM_EPS = 1e-5
# Learned position tables have max_position_embeddings + POSITION_OFFSET rows; position p reads row p + 2.
POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class BartConfig(HFConfig):
    model_type: ClassVar[str] = "bart"
    # HF writes num_hidden_layers (= encoder_layers); released checkpoints (facebook/bart-base, -large, -large-cnn)
    # carry fairseq-era keys that HF 4.46.3's BART stores and never reads.
    hf_derived_keys: ClassVar[frozenset] = frozenset({
        "num_hidden_layers", "add_bias_logits", "add_final_layer_norm", "classif_dropout", "normalize_before",
        "normalize_embedding", "static_position_embeddings", "extra_pos_embeddings", "output_past",
        "do_blenderbot_90_layernorm", "gradient_checkpointing"})

    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    encoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_layers: int = 12
    decoder_ffn_dim: int = 4096
    decoder_attention_heads: int = 16
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    activation_function: str = "gelu"
    d_model: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    classifier_dropout: Optional[float] = 0.0
    scale_embedding: bool = False
    use_cache: bool = True
    num_labels: int = 3
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: Optional[int] = 2
    forced_eos_token_id: Optional[int] = 2
    forced_bos_token_id: Optional[int] = None
    tie_word_embeddings: bool = True
    problem_type: Optional[str] = None
    id2label: Optional[dict[int, str]] = None
    # Generation defaults (HF's global defaults unless a checkpoint's config.json sets them).
    max_length: int = 20
    min_length: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: Union[bool, str] = False

    def __post_init__(self):
        name = type(self).__name__
        self._positive(
            "vocab_size", "max_position_embeddings", "encoder_layers", "encoder_ffn_dim", "encoder_attention_heads",
            "decoder_layers", "decoder_ffn_dim", "decoder_attention_heads", "d_model", "num_labels", "max_length",
            "num_beams",
        )
        self._non_negative("min_length", "no_repeat_ngram_size")
        self._divisible("d_model", "encoder_attention_heads")
        self._divisible("d_model", "decoder_attention_heads")
        self._choice("activation_function", ACTIVATIONS)
        self._choice("problem_type", PROBLEM_TYPES)
        self._probability("dropout", "attention_dropout", "activation_dropout", "classifier_dropout")
        for field in ("encoder_layerdrop", "decoder_layerdrop"):
            value = getattr(self, field)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}.{field}={value!r}: must be a layer-skipping probability in [0, 1]")
        for field in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                      "forced_eos_token_id", "forced_bos_token_id"):
            value = getattr(self, field)
            required = field in ("pad_token_id", "bos_token_id", "eos_token_id")
            if value is None and not required:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}.{field}={value!r}: must be a token id in [0, vocab_size={self.vocab_size})"
                                 + ("" if required else " or None"))
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(f"{name}.early_stopping={self.early_stopping!r}: must be True, False or 'never'")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise ValueError(f"{name}.length_penalty={self.length_penalty!r}: must be a number")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], *, strict: bool = False):
        if not isinstance(d, dict):
            return super().from_hf_dict(d, strict=strict)  # raises, naming the type
        d = dict(d)
        # Old BART-CNN configs ask for a forced BOS with this flag; HF's BartConfig turns it into the id.
        if d.pop("force_bos_token_to_be_generated", False) and d.get("forced_bos_token_id") is None:
            d["forced_bos_token_id"] = d.get("bos_token_id", cls.bos_token_id)
        return super().from_hf_dict(d, strict=strict)

    @property
    def encoder_head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def decoder_head_dim(self) -> int:
        return self.d_model // self.decoder_attention_heads

    @property
    def embed_scale(self) -> float:
        """Token embeddings are multiplied by sqrt(d_model) with ``scale_embedding``."""
        return self.d_model ** 0.5 if self.scale_embedding else 1.0
