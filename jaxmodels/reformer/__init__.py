"""Reformer family: config, modules for every HF head, checkpoint names, decoding cache and tokenizers."""

import math

import jax
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
from jaxmodels.reformer.presets import PRESETS
from jaxmodels.registry import Family


def dummy_inputs(config: ReformerConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture``: one token, so no LSH layer needs rotations."""
    return {"input_ids": jnp.zeros((1, 1), jnp.int32)}


def check_training_length(config: ReformerConfig, length: int) -> None:
    """In training HF demands the axial length exactly and whole attention chunks (no auto-padding)."""
    if config.axial_pos_embds and length != math.prod(config.axial_pos_shape):
        raise ValueError(f"a Reformer with axial positions trains at prod(model.axial_pos_shape)"
                         f"={math.prod(config.axial_pos_shape)}")
    if length > config.min_chunk_length and length % config.lcm_chunk_length:
        raise ValueError(f"must be a multiple of the attention chunk lengths (lcm {config.lcm_chunk_length})")
    if length > config.max_position_embeddings:
        raise ValueError(f"exceeds model.max_position_embeddings={config.max_position_embeddings}")


def generation_kwargs(config: ReformerConfig, total_length: int, key) -> dict:
    """Decoding has no ``"lsh"`` PRNG stream: one set of hashing rotations serves a whole sample."""
    if "lsh" not in config.attn_layers or config.hash_seed is not None:
        return {}
    return {"lsh_rotations": jax.random.normal(key, config.rotations_shape(total_length), jnp.float32)}


FAMILY = Family(
    model_type="reformer", config_class=ReformerConfig, architectures=ARCHITECTURES,
    default_architecture="ReformerModel", base_model_prefix=BASE_MODEL_PREFIX, key_fn=key_fn,
    dummy_inputs=dummy_inputs, tied_keys=TIED_KEYS, tokenizer=ReformerTokenizer.from_pretrained,
    check_training_length=check_training_length, presets=PRESETS, rng_streams=("lsh",), generation_kwargs=generation_kwargs,
    sequence_parallel=True,
)

__all__ = [
    "FAMILY",
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
    "init_reformer_cache",
]
