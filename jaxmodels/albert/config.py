"""ALBERT configuration: HF ``AlbertConfig`` fields and defaults, validated at construction."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from jaxmodels.configuration import HFConfig
from layers.activations import ACTIVATIONS
from layers.attention import POSITION_SCHEMES

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass(frozen=True)
class AlbertConfig(HFConfig):
    model_type: ClassVar[str] = "albert"

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout_prob: Optional[float] = 0.1
    position_embedding_type: str = "absolute"
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    num_labels: int = 2
    problem_type: Optional[str] = None
    id2label: Optional[dict[int, str]] = None

    def __post_init__(self):
        self._positive(
            "vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups",
            "num_attention_heads", "intermediate_size", "inner_group_num", "max_position_embeddings",
            "type_vocab_size", "num_labels",
        )
        self._divisible("hidden_size", "num_attention_heads")
        if self.num_hidden_groups > self.num_hidden_layers:
            raise ValueError(
                f"AlbertConfig.num_hidden_groups={self.num_hidden_groups} must not exceed "
                f"num_hidden_layers={self.num_hidden_layers} (a group would never run)"
            )
        self._choice("hidden_act", ACTIVATIONS)
        self._choice("position_embedding_type", POSITION_SCHEMES)
        self._choice("problem_type", PROBLEM_TYPES)
        self._probability("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"AlbertConfig.layer_norm_eps={self.layer_norm_eps!r}: must be > 0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"AlbertConfig.pad_token_id={self.pad_token_id} must be in [0, vocab_size={self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def group_of_layer(self, layer: int) -> int:
        """HF's float formula ``int(i / (L / G))``; with L=5, G=2 layers 0-2 use group 0 and 3-4 group 1."""
        return int(layer / (self.num_hidden_layers / self.num_hidden_groups))


