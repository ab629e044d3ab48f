"""ALBERT family: config, modules for every HF head, checkpoint names and tokenizer."""

import jax.numpy as jnp

from jaxmodels.albert.config import AlbertConfig
from jaxmodels.albert.convert import BASE_MODEL_PREFIX, TIED_KEYS, key_fn
from jaxmodels.albert.tokenization import AlbertTokenizer
from jaxmodels.albert.modeling import (
    ARCHITECTURES,
    AlbertForMaskedLM,
    AlbertForMultipleChoice,
    AlbertForPreTraining,
    AlbertForPreTrainingOutput,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
)

CONFIG = AlbertConfig
DEFAULT_ARCHITECTURE = "AlbertModel"


def dummy_inputs(config: AlbertConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture`` (shapes only matter)."""
    shape = (1, 1, 1) if architecture == "AlbertForMultipleChoice" else (1, 1)
    return {"input_ids": jnp.zeros(shape, jnp.int32)}


__all__ = [
    "AlbertConfig", "AlbertTokenizer", "AlbertModel", "AlbertForPreTraining", "AlbertForPreTrainingOutput", "AlbertForMaskedLM",
    "AlbertForSequenceClassification", "AlbertForTokenClassification", "AlbertForQuestionAnswering",
    "AlbertForMultipleChoice", "ARCHITECTURES", "BASE_MODEL_PREFIX", "TIED_KEYS", "key_fn", "dummy_inputs",
]
