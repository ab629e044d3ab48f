"""Reformer family: config, modules for every HF head, checkpoint names, decoding cache and tokenizers."""

import jax.numpy as jnp

from jaxmodels.reformer.config import ReformerConfig
from jaxmodels.reformer.convert import BASE_MODEL_PREFIX, TIED_KEYS, key_fn
from jaxmodels.reformer.modeling import (
    ARCHITECTURES,
    ReformerForMaskedLM,
    ReformerForQuestionAnswering,
    ReformerForSequenceClassification,
    ReformerModel,
    ReformerModelOutput,
    ReformerModelWithLMHead,
    ReformerModelWithLMHeadOutput,
    init_reformer_cache,
)
from jaxmodels.reformer.tokenization import ByteTokenizer, ReformerTokenizer

CONFIG = ReformerConfig
DEFAULT_ARCHITECTURE = "ReformerModel"


def dummy_inputs(config: ReformerConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture``: one token, so no LSH layer needs rotations."""
    return {"input_ids": jnp.zeros((1, 1), jnp.int32)}


__all__ = [
    "ARCHITECTURES",
    "BASE_MODEL_PREFIX",
    "TIED_KEYS",
    "ByteTokenizer",
    "ReformerConfig",
    "ReformerForMaskedLM",
    "ReformerForQuestionAnswering",
    "ReformerForSequenceClassification",
    "ReformerModel",
    "ReformerModelOutput",
    "ReformerModelWithLMHead",
    "ReformerModelWithLMHeadOutput",
    "ReformerTokenizer",
    "dummy_inputs",
    "init_reformer_cache",
    "key_fn",
]
