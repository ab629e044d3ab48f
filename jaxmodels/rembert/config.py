"""RemBERT configuration: HF ``RemBertConfig`` fields and defaults, validated at construction."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

from jaxmodels.configuration import HFConfig
from layers.activations import ACTIVATIONS

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass(frozen=True)
class RemBertConfig(HFConfig):
    """Defaults are ``google/rembert``'s: 32 layers of width 1152, input embeddings of 256 projected to the width
    inside the encoder, an LM head through 1664 output-embedding features, a 250,300-piece vocabulary.

    ``tie_word_embeddings`` is always False (HF forces it after reading the config: the word table ``[vocab,
    input_embedding_size]`` and the decoder ``[output_embedding_size, vocab]`` differ); True is refused rather than
    silently ignored. ``is_decoder`` makes self-attention causal (``RemBertForCausalLM``); ``add_cross_attention``
    adds a cross-attention block to every layer (needs ``is_decoder``).
    """

    model_type: ClassVar[str] = "rembert"

    vocab_size: int = 250300
    hidden_size: int = 1152
    num_hidden_layers: int = 32
    num_attention_heads: int = 18
    input_embedding_size: int = 256
    output_embedding_size: int = 1664
    intermediate_size: int = 4608
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    use_cache: bool = True
    pad_token_id: int = 0
    bos_token_id: int = 312
    eos_token_id: int = 313
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = False
    num_labels: int = 2
    problem_type: Optional[str] = None
    id2label: Optional[dict[int, str]] = None

    def __post_init__(self):
        self._positive(
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "input_embedding_size",
            "output_embedding_size", "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels",
        )
        self._divisible("hidden_size", "num_attention_heads")
        self._choice("hidden_act", ACTIVATIONS)
        self._choice("problem_type", PROBLEM_TYPES)
        self._probability("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"RemBertConfig.layer_norm_eps={self.layer_norm_eps!r}: must be > 0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"RemBertConfig.pad_token_id={self.pad_token_id} must be in [0, vocab_size={self.vocab_size})")
        if self.tie_word_embeddings:
            raise ValueError("RemBertConfig.tie_word_embeddings=True: RemBERT's decoder is never tied to the word "
                             "embeddings (input_embedding_size and output_embedding_size differ); HF ignores it")
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError("RemBertConfig.add_cross_attention=True needs is_decoder=True (cross-attention is a "
                             "decoder's)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
