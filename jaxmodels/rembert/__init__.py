"""RemBERT family: config, modules for every HF head, checkpoint names and tokenizer."""

import jax.numpy as jnp

from jaxmodels.registry import Family
from jaxmodels.rembert.config import RemBertConfig
from jaxmodels.rembert.convert import BASE_MODEL_PREFIX, key_fn
from jaxmodels.rembert.modeling import (
    ARCHITECTURES,
    RemBertCausalLMOutput,
    RemBertForCausalLM,
    RemBertForMaskedLM,
    RemBertForMultipleChoice,
    RemBertForQuestionAnswering,
    RemBertForSequenceClassification,
    RemBertForTokenClassification,
    RemBertModel,
    RemBertModelOutput,
)
from jaxmodels.rembert.presets import PRESETS
from jaxmodels.tokenization import BERT, Tokenizer


def tokenizer(directory: str) -> Tokenizer:
    """The slow ``RemBertTokenizer`` of an HF directory (``sentencepiece.model`` + ``tokenizer_config.json``): BERT's
    ``[CLS] A [SEP] B [SEP]`` template over plain SentencePiece, which decodes special tokens like other pieces."""
    return Tokenizer.from_pretrained(directory, template=BERT, vocab_options={"special_decoding": "model"})


def dummy_inputs(config: RemBertConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture`` (shapes only matter)."""
    shape = (1, 1, 1) if architecture == "RemBertForMultipleChoice" else (1, 1)
    return {"input_ids": jnp.zeros(shape, jnp.int32)}


def check_training_length(config: RemBertConfig, length: int) -> None:
    if length > config.max_position_embeddings:
        raise ValueError(f"exceeds model.max_position_embeddings={config.max_position_embeddings}")


FAMILY = Family(
    model_type="rembert", config_class=RemBertConfig, architectures=ARCHITECTURES,
    default_architecture="RemBertModel", base_model_prefix=BASE_MODEL_PREFIX, key_fn=key_fn,
    dummy_inputs=dummy_inputs, tokenizer=tokenizer, check_training_length=check_training_length, presets=PRESETS,
)

__all__ = [
    "FAMILY", "RemBertConfig", "RemBertModel", "RemBertModelOutput", "RemBertForMaskedLM", "RemBertForCausalLM",
    "RemBertCausalLMOutput", "RemBertForSequenceClassification", "RemBertForMultipleChoice",
    "RemBertForTokenClassification", "RemBertForQuestionAnswering", "tokenizer",
]
