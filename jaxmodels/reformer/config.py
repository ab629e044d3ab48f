"""Reformer configuration: HF ``ReformerConfig`` fields and defaults, validated at construction."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

from jaxmodels.configuration import HFConfig
from layers.activations import ACTIVATIONS
from layers.axial import check_axial_config
from layers.lsh import bucket_factors, default_num_buckets

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
ATTN_TYPES = ("local", "lsh")


@dataclasses.dataclass(frozen=True)
class ReformerConfig(HFConfig):
    """HF ``ReformerConfig``. Lists from JSON become tuples (the config stays hashable).

    ``num_buckets=None`` is resolved per call from the (padded) sequence length with HF's rule
    (``resolved_num_buckets``); HF instead freezes the value of its first chunked call into its config.
    ``num_hidden_layers`` is ``len(attn_layers)``, as in HF.
    """

    model_type: ClassVar[str] = "reformer"
    hf_derived_keys: ClassVar[frozenset] = frozenset({"num_hidden_layers"})  # HF writes it; ours is derived or unused

    attention_head_size: int = 64
    attn_layers: tuple = ("local", "lsh", "local", "lsh", "local", "lsh")
    axial_norm_std: float = 1.0
    axial_pos_embds: bool = True
    axial_pos_shape: tuple = (64, 64)
    axial_pos_embds_dim: tuple = (64, 192)
    chunk_size_lm_head: int = 0
    chunk_size_feed_forward: int = 0
    eos_token_id: int | None = 2
    feed_forward_size: int = 512
    hash_seed: int | None = None
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.05
    hidden_size: int = 256
    initializer_range: float = 0.02
    is_decoder: bool = False
    layer_norm_eps: float = 1e-12
    local_num_chunks_before: int = 1
    local_num_chunks_after: int = 0
    local_attention_probs_dropout_prob: float = 0.05
    local_attn_chunk_length: int = 64
    lsh_attn_chunk_length: int = 64
    lsh_attention_probs_dropout_prob: float = 0.0
    lsh_num_chunks_before: int = 1
    lsh_num_chunks_after: int = 0
    max_position_embeddings: int = 4096
    num_attention_heads: int = 12
    num_buckets: int | tuple | None = None
    num_hashes: int = 1
    pad_token_id: int = 0
    vocab_size: int = 320
    tie_word_embeddings: bool = False
    use_cache: bool = True
    classifier_dropout: float | None = None
    num_labels: int = 2
    problem_type: str | None = None
    id2label: dict[int, str] | None = None

    def __post_init__(self):
        name = type(self).__name__
        # JSON gives lists; tuples keep the frozen config hashable and comparable.
        for f in ("attn_layers", "axial_pos_shape", "axial_pos_embds_dim"):
            v = getattr(self, f)
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"{name}.{f}={v!r}: must be a list or tuple")  # noqa: TRY004 - config errors are ValueErrors
            object.__setattr__(self, f, tuple(v))
        if isinstance(self.num_buckets, list):
            object.__setattr__(self, "num_buckets", tuple(self.num_buckets))
        self._positive("attention_head_size", "feed_forward_size", "hidden_size", "local_attn_chunk_length",
                       "lsh_attn_chunk_length", "max_position_embeddings", "num_attention_heads", "num_hashes",
                       "vocab_size", "num_labels")
        self._non_negative("chunk_size_lm_head", "chunk_size_feed_forward", "local_num_chunks_before",
                           "local_num_chunks_after", "lsh_num_chunks_before", "lsh_num_chunks_after")
        if not self.attn_layers:
            raise ValueError(f"{name}.attn_layers=(): needs at least one layer")
        unknown = sorted({a for a in self.attn_layers if a not in ATTN_TYPES})
        if unknown:
            raise ValueError(f"{name}.attn_layers={list(self.attn_layers)!r}: unknown layer types {unknown}; "
                             f"each entry must be one of {ATTN_TYPES}")
        if self.num_buckets is not None:
            try:
                bucket_factors(self.num_buckets)
            except ValueError as e:
                raise ValueError(f"{name}.num_buckets={self.num_buckets!r}: every bucket count must be an even int "
                                 ">= 2 (an int, or a list of factors)") from e
        if self.axial_pos_embds:
            try:
                check_axial_config(self.axial_pos_shape, self.axial_pos_embds_dim, self.hidden_size)
            except ValueError as e:
                raise ValueError(f"{name}.axial_pos_embds_dim / axial_pos_shape: {e}") from e
        if self.tie_word_embeddings:
            # The LM decoder reads the 2 * hidden_size reversible output; it cannot share the [vocab, hidden] table.
            raise ValueError(f"{name}.tie_word_embeddings=True: Reformer's LM head ([vocab, 2*hidden]) cannot be tied "
                             "to the word embeddings ([vocab, hidden])")
        self._choice("hidden_act", ACTIVATIONS)
        self._choice("problem_type", PROBLEM_TYPES)
        self._probability("hidden_dropout_prob", "local_attention_probs_dropout_prob",
                          "lsh_attention_probs_dropout_prob", "classifier_dropout")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"{name}.layer_norm_eps={self.layer_norm_eps!r}: must be > 0")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"{name}.pad_token_id={self.pad_token_id} must be in [0, vocab_size={self.vocab_size})")
        if self.hash_seed is not None and (not isinstance(self.hash_seed, int) or self.hash_seed < 0):
            raise ValueError(f"{name}.hash_seed={self.hash_seed!r}: must be None or a non-negative int")

    def to_hf_dict(self):
        d = super().to_hf_dict()
        d["attn_layers"] = list(self.attn_layers)
        d["axial_pos_shape"] = list(self.axial_pos_shape)
        d["axial_pos_embds_dim"] = list(self.axial_pos_embds_dim)
        if isinstance(self.num_buckets, tuple):
            d["num_buckets"] = list(self.num_buckets)
        return d

    # -- derived quantities -----------------------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return len(self.attn_layers)

    @property
    def all_head_size(self) -> int:
        return self.num_attention_heads * self.attention_head_size

    def chunk_length(self, kind: str) -> int:
        return self.lsh_attn_chunk_length if kind == "lsh" else self.local_attn_chunk_length

    @property
    def lcm_chunk_length(self) -> int:
        """Lengths longer than the smallest chunk must be multiples of this (HF auto-pads to it in eval)."""
        return int(np.lcm.reduce([self.chunk_length(k) for k in set(self.attn_layers)]))

    @property
    def min_chunk_length(self) -> int:
        return min(self.chunk_length(k) for k in set(self.attn_layers))

    @property
    def layer_period(self) -> int:
        """Smallest P dividing the depth with ``attn_layers[l] == attn_layers[l % P]``: the stack scans over
        ``depth / P`` groups of P layers (P = 2 for HF's alternating local/LSH default)."""
        n = self.num_hidden_layers
        for p in range(1, n + 1):
            if n % p == 0 and all(self.attn_layers[i] == self.attn_layers[i % p] for i in range(n)):
                return p
        return n

    def resolved_num_buckets(self, length: int):
        """``num_buckets``, or HF's rule for ``None`` evaluated at ``length`` (an int or a tuple of factors)."""
        if self.num_buckets is not None:
            return self.num_buckets
        if length <= self.lsh_attn_chunk_length:
            return 2  # unused: LSH layers run full attention at this length
        return default_num_buckets(length, self.lsh_attn_chunk_length, self.max_position_embeddings)

    def rotations_shape(self, length: int, num_hashes: int | None = None) -> tuple[int, int, int, int]:
        """Shape of ``lsh_rotations`` at ``length``: ``[heads, head_size, num_hashes, rotation_size // 2]``."""
        nb = self.resolved_num_buckets(length)
        size = sum(bucket_factors(nb))
        return (self.num_attention_heads, self.attention_head_size, num_hashes or self.num_hashes, size // 2)

    @property
    def max_length(self) -> int:
        """Longest sequence the position embeddings cover."""
        return math.prod(self.axial_pos_shape) if self.axial_pos_embds else self.max_position_embeddings
