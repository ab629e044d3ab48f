"""Longformer family: config, modules for every HF head, checkpoint names, RoBERTa conversion and tokenizer."""

import functools

import jax.numpy as jnp

from jaxmodels.longformer.config import LongformerConfig
from jaxmodels.longformer.convert import BASE_MODEL_PREFIX, TIED_KEYS, from_roberta, key_fn
from jaxmodels.longformer.modeling import (
    ARCHITECTURES,
    LongformerBaseModelOutputWithPooling,
    LongformerForMaskedLM,
    LongformerForMultipleChoice,
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
    LongformerMaskedLMOutput,
    LongformerModel,
    LongformerQuestionAnsweringModelOutput,
)
from jaxmodels.longformer.presets import PRESETS
from jaxmodels.registry import Family
from jaxmodels.tokenization import ROBERTA, Tokenizer


def dummy_inputs(config: LongformerConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture`` (shapes only matter)."""
    shape = (1, 1, 1) if architecture == "LongformerForMultipleChoice" else (1, 1)
    # A global mask of zeros: no automatic global mask (QA and multiple choice would look for separators).
    return {"input_ids": jnp.zeros(shape, jnp.int32), "global_attention_mask": jnp.zeros(shape, jnp.int32)}


def check_training_length(config: LongformerConfig, length: int) -> None:
    if length > config.max_length:
        raise ValueError(f"exceeds model.max_position_embeddings={config.max_position_embeddings} - pad_token_id - 1 "
                         f"= {config.max_length} (positions start at model.pad_token_id + 1)")


FAMILY = Family(
    model_type="longformer", config_class=LongformerConfig, architectures=ARCHITECTURES,
    default_architecture="LongformerModel", base_model_prefix=BASE_MODEL_PREFIX, key_fn=key_fn,
    dummy_inputs=dummy_inputs, tied_keys=TIED_KEYS,
    # allenai's checkpoints ship RoBERTa's byte-level BPE tokenizer (LongformerTokenizer is RobertaTokenizer).
    tokenizer=functools.partial(Tokenizer.from_pretrained, template=ROBERTA),
    check_training_length=check_training_length, sequence_parallel=True, presets=PRESETS,
)

__all__ = [
    "FAMILY", "LongformerConfig", "LongformerModel", "LongformerForMaskedLM", "LongformerForSequenceClassification",
    "LongformerForTokenClassification", "LongformerForQuestionAnswering", "LongformerForMultipleChoice",
    "LongformerBaseModelOutputWithPooling", "LongformerMaskedLMOutput", "LongformerQuestionAnsweringModelOutput",
    "from_roberta",
]
