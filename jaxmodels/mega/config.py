"""MEGA configuration: HF ``MegaConfig`` fields and defaults, validated at construction.

Fields beyond HF's:
- ``hf_rmsnorm_identity_bug``: HF's ``rmsnorm`` returns ``x * weight`` without normalising (see
  ``layers.scale_norm``). ``from_hf_dict`` sets it for HF configs using ``rmsnorm`` (their checkpoints were trained
  with the bug); set it False to get a correct RMSNorm.
Unsupported HF options fail here with the field named: cross-attention (``add_cross_attention``), batch norms
(``normalization_type="batchnorm"/"syncbatchnorm"``) and untied LM heads (``tie_word_embeddings=False``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

from jaxmodels.configuration import HFConfig
from layers.activations import ACTIVATIONS
from layers.gated_attention import ATTENTION_FUNCTIONS
from layers.relative_bias import BIAS_TYPES

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
NORMALIZATION_TYPES = ("scalenorm", "layernorm", "rmsnorm")
# MegaSequenceNorm always uses its default epsilon: the config has no field for it.
NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class MegaConfig(HFConfig):
    model_type: ClassVar[str] = "mega"
    hf_derived_keys: ClassVar[frozenset] = frozenset({"num_attention_heads"})  # HF writes it; ours is derived or unused

    vocab_size: int = 30522
    hidden_size: int = 128
    num_hidden_layers: int = 4
    intermediate_size: int = 256
    ema_projection_size: int = 16
    bidirectional: bool = True
    shared_representation_size: int = 64
    use_chunking: bool = False
    chunk_size: int = -1
    truncation: Optional[int] = None
    normalize_before_mega: bool = True
    normalization_type: str = "scalenorm"
    norm_affine: bool = True
    activation: str = "silu"
    attention_activation: str = "softmax"
    dropout_prob: float = 0.1
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    use_feature_dropout: bool = False
    use_normalized_ffn: bool = True
    nffn_hidden_size: int = 256
    normalize_before_ffn: bool = True
    nffn_activation_dropout_prob: float = 0.1
    max_positions: int = 2048
    add_token_type_embeddings: bool = False
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    ema_delta_alpha_range: float = 0.2
    ema_beta_range: float = 0.02
    ema_gamma_omega_range: float = 1.0
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    relative_positional_bias: str = "rotary"
    classifier_dropout: Optional[float] = None
    use_cache: bool = True
    add_lm_hidden_dense_layer: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    num_labels: int = 2
    problem_type: Optional[str] = None
    id2label: Optional[dict[int, str]] = None
    hf_rmsnorm_identity_bug: bool = False

    def __post_init__(self):
        name = type(self).__name__
        self._positive(
            "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "ema_projection_size",
            "shared_representation_size", "nffn_hidden_size", "max_positions", "type_vocab_size", "num_labels",
        )
        self._choice("activation", ACTIVATIONS)
        self._choice("attention_activation", ATTENTION_FUNCTIONS)
        self._choice("relative_positional_bias", BIAS_TYPES)
        self._choice("problem_type", PROBLEM_TYPES)
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(f"{name}.normalization_type={self.normalization_type!r}: must be one of "
                             f"{NORMALIZATION_TYPES} (batch norms are not supported)")
        self._probability("dropout_prob", "hidden_dropout_prob", "attention_probs_dropout_prob",
                          "nffn_activation_dropout_prob", "classifier_dropout")
        if self.truncation is not None and (not isinstance(self.truncation, int) or isinstance(self.truncation, bool)
                                            or self.truncation <= 0):
            raise ValueError(f"{name}.truncation={self.truncation!r}: must be None or a positive integer")
        if not isinstance(self.chunk_size, int) or isinstance(self.chunk_size, bool):
            raise ValueError(f"{name}.chunk_size={self.chunk_size!r}: must be an integer")
        if self.use_chunking and self.chunk_size <= 0:
            raise ValueError(f"{name}.chunk_size={self.chunk_size}: must be a positive integer when use_chunking=True")
        if self.relative_positional_bias == "simple" and self.chunk_size > self.max_positions:
            raise ValueError(f"{name}.chunk_size={self.chunk_size} must not exceed max_positions={self.max_positions} "
                             "with relative_positional_bias='simple' (the bias table has 2*max_positions-1 entries)")
        if self.relative_positional_bias == "rotary" and self.shared_representation_size % 2:
            raise ValueError(f"{name}.shared_representation_size={self.shared_representation_size} must be even "
                             "with relative_positional_bias='rotary' (it rotates pairs of halves)")
        if self.is_decoder and self.bidirectional:
            raise ValueError(f"{name}.bidirectional=True with is_decoder=True: a decoder needs a causal EMA "
                             "(bidirectional=False)")
        if self.add_cross_attention:
            raise ValueError(f"{name}.add_cross_attention=True: MEGA cross-attention is not supported")
        if not self.tie_word_embeddings:
            raise ValueError(f"{name}.tie_word_embeddings=False: the LM heads are always tied to the word embeddings")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"{name}.pad_token_id={self.pad_token_id} must be in [0, vocab_size={self.vocab_size})")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], *, strict: bool = False):
        if not isinstance(d, dict):
            return super().from_hf_dict(d, strict=strict)  # refused there, naming the type
        d = dict(d)
        # A checkpoint trained by transformers with "rmsnorm" learned with HF's identity-times-weight layer.
        if d.get("normalization_type") == "rmsnorm" and "hf_rmsnorm_identity_bug" not in d:
            d["hf_rmsnorm_identity_bug"] = True
        return super().from_hf_dict(d, strict=strict)

    @property
    def simple_bias_positions(self) -> int:
        """M of the simple bias (HF tests ``chunk_size < 0``, not ``use_chunking``)."""
        return self.max_positions if self.chunk_size < 0 else self.chunk_size
