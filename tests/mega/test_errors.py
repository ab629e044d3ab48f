"""Bad configs and inputs fail with a ValueError naming the field or argument, before anything is traced."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxmodels
from jaxmodels.mega import MegaConfig, MegaForCausalLM, MegaForMaskedLM, MegaModel

SMALL = dict(vocab_size=20, hidden_size=8, num_hidden_layers=1, intermediate_size=8, ema_projection_size=2,
             shared_representation_size=4, nffn_hidden_size=8, max_positions=16)


@pytest.mark.parametrize("changes,field", [
    (dict(truncation=0), "truncation"),
    (dict(truncation=-3), "truncation"),
    (dict(is_decoder=True, bidirectional=True), "bidirectional"),
    (dict(use_chunking=True, chunk_size=-1), "chunk_size"),
    (dict(normalization_type="groupnorm"), "normalization_type"),
    (dict(normalization_type="batchnorm"), "normalization_type"),
    (dict(activation="swishy"), "activation"),
    (dict(attention_activation="sigmoid"), "attention_activation"),
    (dict(relative_positional_bias="alibi"), "relative_positional_bias"),
    (dict(relative_positional_bias="rotary", shared_representation_size=5), "shared_representation_size"),
    (dict(relative_positional_bias="simple", chunk_size=32), "chunk_size"),
    (dict(add_cross_attention=True, is_decoder=True, bidirectional=False), "add_cross_attention"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(dropout_prob=1.5), "dropout_prob"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        MegaConfig(**{**SMALL, **changes})
    with pytest.raises(ValueError, match=field):  # the doorway builds the same config from an HF dict
        jaxmodels.from_config({**SMALL, **changes, "model_type": "mega"})


def _init(module, ids, **kw):
    """Shapes only (jax.eval_shape): a failing check must raise before any computation."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0, impl="rbg"), ids, **kw))


def test_chunked_length_not_multiple_of_chunk_size():
    module = MegaForMaskedLM(MegaConfig(**SMALL, use_chunking=True, chunk_size=4))
    with pytest.raises(ValueError, match="chunk_size=4"):
        _init(module, jnp.zeros((2, 10), jnp.int32))
    _init(module, jnp.zeros((2, 12), jnp.int32))  # a multiple is fine
    _init(module, jnp.zeros((2, 3), jnp.int32))  # so is one short chunk


def test_bad_inputs():
    module = MegaModel(MegaConfig(**SMALL))
    with pytest.raises(ValueError, match="token_type_ids"):
        _init(module, jnp.zeros((2, 4), jnp.int32), token_type_ids=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        _init(module, jnp.zeros((2, 4), jnp.int32), attention_mask=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="input_ids"):
        _init(module, jnp.full((2, 4), 99, jnp.int32))
    simple = MegaModel(MegaConfig(**SMALL, relative_positional_bias="simple"))
    with pytest.raises(ValueError, match="simple relative bias"):
        _init(simple, jnp.zeros((1, 17), jnp.int32))


def test_init_cache_needs_a_causal_untruncated_decoder():
    with pytest.raises(ValueError, match="is_decoder"):
        MegaForCausalLM(MegaConfig(**SMALL)).init_cache(1, 8)
    with pytest.raises(ValueError, match="truncation"):
        MegaForCausalLM(MegaConfig(**SMALL, is_decoder=True, bidirectional=False, truncation=4)).init_cache(1, 8)
    cache = MegaForCausalLM(MegaConfig(**SMALL, is_decoder=True, bidirectional=False, use_chunking=True,
                                       chunk_size=4)).init_cache(3, 100)
    assert cache.key.shape == (1, 3, 4, 4) and cache.ema_state.shape == (1, 3, 8, 2)  # per-chunk slots only


def test_rmsnorm_bug_flag_follows_hf_configs():
    assert MegaConfig.from_hf_dict({**SMALL, "normalization_type": "rmsnorm"}).hf_rmsnorm_identity_bug
    assert not MegaConfig(**SMALL, normalization_type="rmsnorm").hf_rmsnorm_identity_bug
    assert not MegaConfig.from_hf_dict({**SMALL, "normalization_type": "rmsnorm",
                                        "hf_rmsnorm_identity_bug": False}).hf_rmsnorm_identity_bug
