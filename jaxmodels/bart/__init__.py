"""BART family: config, modules for every HF head (seq2seq and decoder-only), checkpoint names, decoding cache,
tokenizer (byte-level BPE with BART's ``<s> A </s>`` template)."""

import functools

import jax.numpy as jnp

from jaxmodels.bart.config import BartConfig
from jaxmodels.bart.convert import BASE_MODEL_PREFIX, TIED_KEYS, key_fn
from jaxmodels.bart.modeling import (
    ARCHITECTURES,
    BartCache,
    BartDecoderOutput,
    BartEncoderOutput,
    BartForCausalLM,
    BartForConditionalGeneration,
    BartForQuestionAnswering,
    BartForSequenceClassification,
    BartModel,
    CausalLMOutputWithCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqQuestionAnsweringModelOutput,
    Seq2SeqSequenceClassifierOutput,
    shift_tokens_right,
)
from jaxmodels.bart.presets import PRESETS
from jaxmodels.registry import Family
from jaxmodels.tokenization import BART, Tokenizer


def dummy_inputs(config: BartConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture``: one eos token (sequence classification pools at it),
    decoder inputs given (so a config without ``decoder_start_token_id`` initialises too)."""
    ids = jnp.full((1, 1), config.eos_token_id, jnp.int32)
    if architecture == "BartForCausalLM":
        return {"input_ids": ids}
    return {"input_ids": ids, "decoder_input_ids": ids}


def check_training_length(config: BartConfig, length: int) -> None:
    if length > config.max_position_embeddings:
        raise ValueError(f"exceeds model.max_position_embeddings={config.max_position_embeddings}")


FAMILY = Family(
    model_type="bart", config_class=BartConfig, architectures=ARCHITECTURES, default_architecture="BartModel",
    base_model_prefix=BASE_MODEL_PREFIX, key_fn=key_fn, dummy_inputs=dummy_inputs, tied_keys=TIED_KEYS,
    tokenizer=functools.partial(Tokenizer.from_pretrained, template=BART),
    check_training_length=check_training_length, presets=PRESETS,
)

__all__ = [
    "FAMILY", "BartConfig", "BartModel", "BartForConditionalGeneration", "BartForSequenceClassification",
    "BartForQuestionAnswering", "BartForCausalLM", "BartCache", "BartEncoderOutput", "BartDecoderOutput",
    "Seq2SeqModelOutput", "Seq2SeqLMOutput", "Seq2SeqSequenceClassifierOutput", "Seq2SeqQuestionAnsweringModelOutput",
    "CausalLMOutputWithCrossAttentions", "shift_tokens_right",
]
