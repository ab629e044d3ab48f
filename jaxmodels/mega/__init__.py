"""MEGA family: config, modules for every HF head (encoder and decoder), checkpoint names, decoding cache."""

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

CONFIG = MegaConfig
DEFAULT_ARCHITECTURE = "MegaModel"


def dummy_inputs(config: MegaConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture`` (shapes only matter)."""
    shape = (1, 1, 1) if architecture == "MegaForMultipleChoice" else (1, 1)
    return {"input_ids": jnp.zeros(shape, jnp.int32)}


__all__ = [
    "MegaConfig", "MegaModel", "MegaForCausalLM", "MegaForMaskedLM", "MegaForSequenceClassification",
    "MegaForMultipleChoice", "MegaForTokenClassification", "MegaForQuestionAnswering", "MegaCache",
    "MegaModelOutput", "CausalLMOutput", "init_cache", "ARCHITECTURES", "BASE_MODEL_PREFIX", "TIED_KEYS", "key_fn",
    "dummy_inputs", "CONFIG", "DEFAULT_ARCHITECTURE",
]
