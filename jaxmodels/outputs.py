"""Model outputs with HF field names. Fields a call did not compute are None (pytrees skip them)."""

from __future__ import annotations

from typing import Optional

import flax
import jax

Array = jax.Array
Tuple = tuple


@flax.struct.dataclass
class BaseModelOutputWithPooling:
    last_hidden_state: Array
    pooler_output: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class MaskedLMOutput:
    logits: Array
    loss: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


@flax.struct.dataclass
class SequenceClassifierOutput:
    logits: Array
    loss: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None


TokenClassifierOutput = SequenceClassifierOutput
MultipleChoiceModelOutput = SequenceClassifierOutput


@flax.struct.dataclass
class QuestionAnsweringModelOutput:
    start_logits: Array
    end_logits: Array
    loss: Optional[Array] = None
    hidden_states: Optional[Tuple[Array, ...]] = None
    attentions: Optional[Tuple[Array, ...]] = None
