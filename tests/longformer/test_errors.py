"""Longformer's own bad inputs (the shared ones: tests/test_bad_inputs.py): each a ValueError naming the field or
argument and the rule, before anything is traced (the model's checks run while ``jax.eval_shape`` only traces)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from jaxmodels.longformer import LongformerConfig, LongformerForQuestionAnswering, LongformerModel
from jaxmodels.longformer.modeling import resolve_global_slots

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=40, attention_window=4)


@pytest.mark.parametrize("window,rule", [
    (3, r"attention_window=3: every window must be a positive even int"),
    (0, r"attention_window=0: every window must be a positive even int"),
    (-4, r"attention_window=-4: every window must be a positive even int"),
    ([4, 5], r"attention_window=\(4, 5\): every window must be a positive even int .* got 5"),
    ([4, 4, 4], r"attention_window=\[4, 4, 4\]: a list needs one window per layer, num_hidden_layers=2, got 3"),
    (4.0, r"attention_window=4.0: must be an int or a list"),
])
def test_bad_windows_name_the_field(window, rule):
    with pytest.raises(ValueError, match=rule):
        jaxmodels.from_config({**TINY, "model_type": "longformer", "attention_window": window})


def test_position_table_must_exceed_the_padding_position():
    with pytest.raises(ValueError, match=r"max_position_embeddings=2: positions start at pad_token_id \+ 1 = 2"):
        LongformerConfig(**{**TINY, "max_position_embeddings": 2})


def _trace(module, **inputs):
    params = jaxmodels.abstract_params(module)
    return jax.eval_shape(lambda p: module.apply({"params": p}, **inputs), params)


@pytest.mark.parametrize("inputs,rule", [
    (dict(input_ids=jnp.ones((2, 8), jnp.int32), global_attention_mask=jnp.ones((2, 9), jnp.int32)),
     r"global_attention_mask has shape \(2, 9\) but the inputs have shape \(2, 8\)"),
    (dict(input_ids=jnp.ones((2, 8), jnp.int32), global_attention_mask=jnp.ones((8,), jnp.int32)),
     r"global_attention_mask has shape \(8,\)"),
    (dict(input_ids=jnp.ones((2, 39), jnp.int32)),
     r"sequence length 39 exceeds max_position_embeddings=40 - pad_token_id - 1 = 38"),
    (dict(inputs_embeds=jnp.ones((2, 8, 15))), r"inputs_embeds must have shape \[batch, length, hidden_size=16\]"),
    (dict(input_ids=jnp.ones((2, 8), jnp.int32), global_attention_mask=jnp.ones((2, 8), jnp.int32)),
     r"max_global_tokens: the global attention mask is traced \(under jit\)"),
])
def test_bad_model_inputs_name_the_argument(inputs, rule):
    with pytest.raises(ValueError, match=rule):
        _trace(LongformerModel(LongformerConfig(**TINY)), **inputs)


def test_question_answering_under_jit_without_a_bound_gives_every_position_a_slot():
    """The automatic question mask from traced ids (a jitted training step) with no max_global_tokens: one slot
    per position (always enough), with a warning naming the field; the same logits as a tight bound."""
    ids = jnp.asarray([[0, 5, 2, 2, 7, 8, 2, 1], [0, 5, 6, 2, 2, 8, 2, 1]])
    unbounded = LongformerForQuestionAnswering(LongformerConfig(**TINY))
    params = jax.jit(lambda key: jaxmodels.init_params(unbounded, key))(jax.random.PRNGKey(0))
    run = lambda module: jax.jit(lambda p, x: module.apply({"params": p}, input_ids=x).start_logits)(params, ids)
    with pytest.warns(UserWarning, match=r"without max_global_tokens: .* one slot per position \(8\)"):
        loose = run(unbounded)
    tight = run(unbounded.clone(max_global_tokens=3))
    np.testing.assert_allclose(np.asarray(loose), np.asarray(tight), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"max_global_tokens: the global attention mask is traced"):
        _trace(LongformerModel(LongformerConfig(**TINY)), input_ids=ids, global_attention_mask=jnp.ones_like(ids))


def test_global_slots_from_concrete_masks_and_their_overflow():
    modes = np.array([[2, 1, 2, 0], [1, 2, 1, 1]])
    assert resolve_global_slots(modes, None, None) == 2  # the batch's own count: HF's shapes
    assert resolve_global_slots(modes, 3, None) == 3
    with pytest.raises(ValueError, match=r"global_attention_mask: at most max_global_tokens=1 global tokens per row "
                                         r"\(raise max_global_tokens\); a row has; got 2 at index \[0\]"):
        resolve_global_slots(modes, 1, None)
    with pytest.raises(ValueError, match=r"max_global_tokens=-1: expected None or a non-negative int"):
        resolve_global_slots(modes, -1, None)
