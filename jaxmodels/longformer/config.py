"""Longformer configuration: HF ``LongformerConfig`` fields and defaults, validated at construction."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Optional, Union

from jaxmodels.configuration import HFConfig
from layers.activations import ACTIVATIONS

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass(frozen=True)
class LongformerConfig(HFConfig):
    """``attention_window``: one even window for every layer, or one per layer (a list in HF's config.json; kept
    as a tuple here). Layer l attends ``attention_window[l] // 2`` positions to each side."""

    model_type: ClassVar[str] = "longformer"
    # HF writes `onnx_export` (it only switches HF's chunking to a loop); nothing here depends on it.
    hf_derived_keys: ClassVar[frozenset] = frozenset({"onnx_export"})

    attention_window: Union[int, tuple[int, ...]] = 512
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    sep_token_id: int = 2
    num_labels: int = 2
    problem_type: Optional[str] = None
    id2label: Optional[dict[int, str]] = None

    def __post_init__(self):
        self._positive("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                       "max_position_embeddings", "type_vocab_size", "num_labels")
        self._divisible("hidden_size", "num_attention_heads")
        windows = self.attention_window
        if isinstance(windows, (list, tuple)):
            object.__setattr__(self, "attention_window", tuple(windows))
            if len(windows) != self.num_hidden_layers:
                raise ValueError(f"LongformerConfig.attention_window={list(windows)!r}: a list needs one window per "
                                 f"layer, num_hidden_layers={self.num_hidden_layers}, got {len(windows)}")
        for w in self.windows:
            if isinstance(w, bool) or not isinstance(w, int) or w <= 0 or w % 2:
                raise ValueError(f"LongformerConfig.attention_window={self.attention_window!r}: every window must be "
                                 f"a positive even int (it spans attention_window // 2 positions to each side), "
                                 f"got {w!r}")
        self._choice("hidden_act", ACTIVATIONS)
        self._choice("problem_type", PROBLEM_TYPES)
        self._probability("hidden_dropout_prob", "attention_probs_dropout_prob")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"LongformerConfig.layer_norm_eps={self.layer_norm_eps!r}: must be > 0")
        for field in ("pad_token_id", "sep_token_id"):
            value = getattr(self, field)
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"LongformerConfig.{field}={value} must be in [0, vocab_size={self.vocab_size})")
        if self.max_position_embeddings <= self.pad_token_id + 1:
            raise ValueError(f"LongformerConfig.max_position_embeddings={self.max_position_embeddings}: positions "
                             f"start at pad_token_id + 1 = {self.pad_token_id + 1}, so it must exceed that")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def windows(self) -> tuple[int, ...]:
        """The attention window of every layer."""
        w = self.attention_window
        return tuple(w) if isinstance(w, tuple) else (w,) * self.num_hidden_layers

    @property
    def pad_multiple(self) -> int:
        """Inputs are padded to a multiple of this: the least common multiple of the windows, which every layer's
        window divides. (HF pads to the largest window, which fails for windows such as [4, 6].)"""
        return math.lcm(*self.windows)

    @property
    def max_length(self) -> int:
        """The longest input: positions run from ``pad_token_id + 1`` up to the table's last row."""
        return self.max_position_embeddings - self.pad_token_id - 1
