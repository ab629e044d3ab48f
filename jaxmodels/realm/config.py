"""REALM configuration: HF ``RealmConfig`` fields and defaults, validated at construction."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxmodels.configuration import HFConfig
from layers.activations import ACTIVATIONS
from layers.attention import POSITION_SCHEMES


@dataclasses.dataclass(frozen=True)
class RealmConfig(HFConfig):
    """HF's fields and defaults. Easy to miss: ``hidden_act`` is the tanh GELU, ``pad_token_id`` defaults to 1
    although BERT vocabularies put ``[PAD]`` at 0 (the value only chooses the word-embedding row that gets no
    gradient; kept as HF has it), the reader's LayerNorm has its own epsilon, and ``num_candidates`` is the exact
    number of candidates the scorer and the knowledge-augmented encoder take per example."""

    model_type: ClassVar[str] = "realm"

    vocab_size: int = 30522
    hidden_size: int = 768
    retriever_proj_size: int = 128
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_candidates: int = 8
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    # HF reads it with getattr(config, "position_embedding_type", "absolute"); the relative schemes work through it.
    position_embedding_type: str = "absolute"
    span_hidden_size: int = 256
    max_span_width: int = 10
    reader_layer_norm_eps: float = 1e-3
    reader_beam_size: int = 5
    reader_seq_len: int = 320
    num_block_records: int = 13353718
    searcher_beam_size: int = 5000
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2

    def __post_init__(self):
        self._positive(
            "vocab_size", "hidden_size", "retriever_proj_size", "num_hidden_layers", "num_attention_heads",
            "num_candidates", "intermediate_size", "max_position_embeddings", "type_vocab_size", "span_hidden_size",
            "max_span_width", "reader_beam_size", "reader_seq_len", "num_block_records", "searcher_beam_size",
        )
        self._divisible("hidden_size", "num_attention_heads")
        self._choice("hidden_act", ACTIVATIONS)
        self._choice("position_embedding_type", POSITION_SCHEMES)
        self._probability("hidden_dropout_prob", "attention_probs_dropout_prob")
        for field in ("layer_norm_eps", "reader_layer_norm_eps"):
            if not getattr(self, field) > 0:
                raise ValueError(f"RealmConfig.{field}={getattr(self, field)!r}: must be > 0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"RealmConfig.pad_token_id={self.pad_token_id} must be in [0, vocab_size={self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
