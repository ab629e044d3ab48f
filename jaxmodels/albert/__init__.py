"""ALBERT family: config, modules for every HF head, checkpoint names and tokenizer."""

import jax.numpy as jnp

from jaxmodels.albert.config import AlbertConfig
from jaxmodels.albert.convert import BASE_MODEL_PREFIX, TIED_KEYS, key_fn
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
from jaxmodels.albert.tokenization import AlbertTokenizer
from jaxmodels.albert.presets import PRESETS
from jaxmodels.registry import Family


def dummy_inputs(config: AlbertConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture`` (shapes only matter)."""
    shape = (1, 1, 1) if architecture == "AlbertForMultipleChoice" else (1, 1)
    return {"input_ids": jnp.zeros(shape, jnp.int32)}


def check_training_length(config: AlbertConfig, length: int) -> None:
    if length > config.max_position_embeddings:
        raise ValueError(f"exceeds model.max_position_embeddings={config.max_position_embeddings}")


FAMILY = Family(
    model_type="albert", config_class=AlbertConfig, architectures=ARCHITECTURES, default_architecture="AlbertModel",
    base_model_prefix=BASE_MODEL_PREFIX, key_fn=key_fn, dummy_inputs=dummy_inputs, tied_keys=TIED_KEYS,
    tokenizer=AlbertTokenizer.from_pretrained, check_training_length=check_training_length, presets=PRESETS,
)

__all__ = [
    "FAMILY", "AlbertConfig", "AlbertTokenizer", "AlbertModel", "AlbertForPreTraining", "AlbertForPreTrainingOutput",
    "AlbertForMaskedLM", "AlbertForSequenceClassification", "AlbertForTokenClassification",
    "AlbertForQuestionAnswering", "AlbertForMultipleChoice",
]
