"""MEGA family: config, modules for every HF head (encoder and decoder), checkpoint names, decoding cache, tokenizer."""

import functools

import jax.numpy as jnp

from jaxmodels.mega.config import MegaConfig
from jaxmodels.mega.convert import BASE_MODEL_PREFIX, TIED_KEYS, key_fn
from jaxmodels.mega.modeling import (
    ARCHITECTURES,
    CausalLMOutput,
    MegaCache,
    MegaForCausalLM,
    MegaForMaskedLM,
    MegaForMultipleChoice,
    MegaForQuestionAnswering,
    MegaForSequenceClassification,
    MegaForTokenClassification,
    MegaModel,
    MegaModelOutput,
    init_cache,
)
from jaxmodels.mega.presets import PRESETS
from jaxmodels.registry import Family
from jaxmodels.tokenization import ROBERTA, Tokenizer


def dummy_inputs(config: MegaConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture`` (shapes only matter)."""
    shape = (1, 1, 1) if architecture == "MegaForMultipleChoice" else (1, 1)
    return {"input_ids": jnp.zeros(shape, jnp.int32)}


def check_training_length(config: MegaConfig, length: int) -> None:
    if config.use_chunking and length > config.chunk_size and length % config.chunk_size:
        raise ValueError(f"must be <= model.chunk_size={config.chunk_size} or a multiple of it (use_chunking=True)")
    block = min(length, config.chunk_size) if config.use_chunking else length
    if config.relative_positional_bias == "simple" and block > config.simple_bias_positions:
        raise ValueError(f"attention blocks of {block} tokens exceed the simple relative bias range "
                         f"{config.simple_bias_positions} (model.max_positions, or model.chunk_size when set)")


FAMILY = Family(
    model_type="mega", config_class=MegaConfig, architectures=ARCHITECTURES, default_architecture="MegaModel",
    base_model_prefix=BASE_MODEL_PREFIX, key_fn=key_fn, dummy_inputs=dummy_inputs, tied_keys=TIED_KEYS,
    # MEGA's checkpoints (mnaylor/mega-*) ship RoBERTa's byte-level BPE tokenizer.
    tokenizer=functools.partial(Tokenizer.from_pretrained, template=ROBERTA),
    check_training_length=check_training_length, sequence_parallel=True, presets=PRESETS,
)

__all__ = [
    "FAMILY", "MegaConfig", "MegaModel", "MegaForCausalLM", "MegaForMaskedLM", "MegaForSequenceClassification",
    "MegaForMultipleChoice", "MegaForTokenClassification", "MegaForQuestionAnswering", "MegaCache",
    "MegaModelOutput", "CausalLMOutput", "init_cache",
]
