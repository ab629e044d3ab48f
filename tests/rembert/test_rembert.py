"""RemBERT behaviour beyond parity: logical axes, sharded init, the layer traced once, keyed dropout, and bad configs
and inputs refused with the field named before anything is traced."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxmodels
from jaxmodels.rembert import (
    RemBertConfig,
    RemBertForCausalLM,
    RemBertForMaskedLM,
    RemBertForQuestionAnswering,
    RemBertForSequenceClassification,
    RemBertModel,
)
from train.partitioning import DEFAULT_RULES

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, input_embedding_size=8,
            output_embedding_size=12, intermediate_size=24, max_position_embeddings=32, type_vocab_size=2)


def tiny(**kw) -> RemBertConfig:
    return RemBertConfig(**{**TINY, **kw})


def ids_and_mask(batch=2, length=10, seed=0):
    rng = np.random.RandomState(seed)
    ids = jnp.asarray(rng.randint(1, 64, (batch, length)), jnp.int32)
    return ids, jnp.ones((batch, length), jnp.int32).at[1, 6:].set(0)


def _specs(module, *args):
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]
    return jax.tree.map(tuple, nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def test_golden_logical_axes():
    """Every param carries logical names; stacked layer params lead with "layers"; a decoder with cross-attention
    has its block in every layer; the LM head's decoder is its own [E_out, vocab] kernel."""
    Lr, E, H, M, V, T = "layers", "embed", "heads", "mlp", "vocab", "positions"
    attention = {
        "self": {n: {"kernel": (Lr, E, H), "bias": (Lr, H)} for n in ("query", "key", "value")},
        "output": {"dense": {"kernel": (Lr, H, E), "bias": (Lr, E)}, "LayerNorm": {"scale": (Lr, E), "bias": (Lr, E)}},
    }
    golden = {
        "rembert": {
            "embeddings": {
                "word_embeddings": {"embedding": (V, E)},
                "position_embeddings": {"embedding": (T, E)},
                "token_type_embeddings": {"embedding": (V, E)},
                "LayerNorm": {"scale": (E,), "bias": (E,)},
            },
            "encoder": {
                "embedding_hidden_mapping_in": {"kernel": (E, M), "bias": (M,)},
                "layer": {
                    "attention": attention,
                    "crossattention": attention,
                    "intermediate": {"dense": {"kernel": (Lr, E, M), "bias": (Lr, M)}},
                    "output": {"dense": {"kernel": (Lr, M, E), "bias": (Lr, E)},
                               "LayerNorm": {"scale": (Lr, E), "bias": (Lr, E)}},
                },
            },
        },
        "predictions": {
            "dense": {"kernel": (E, M), "bias": (M,)},
            "LayerNorm": {"scale": (E,), "bias": (E,)},
            "decoder": {"kernel": (E, V)},
            "bias": (V,),
        },
    }
    module = RemBertForCausalLM(tiny(is_decoder=True, add_cross_attention=True))
    assert _specs(module, jnp.zeros((1, 4), jnp.int32)) == golden


def test_sharded_init_matches_single_device():
    """Init with out_shardings on a data=2,fsdp=2,tensor=2 mesh of 8 CPU devices == plain init, and so do outputs."""
    assert jax.device_count() == 8, "tests/conftest.py should fake 8 CPU devices"
    module = RemBertForSequenceClassification(tiny(num_labels=4))
    ids, mask = ids_and_mask(batch=4)
    key = jax.random.PRNGKey(3)
    init = lambda k: module.init(k, jnp.zeros((1, 1), jnp.int32))["params"]
    single = jax.jit(lambda k: nn.unbox(init(k)))(key)

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 1, 2), ("data", "fsdp", "sequence", "tensor"))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(jax.eval_shape(init, key)), mesh, DEFAULT_RULES)
    sharded = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(key)
    kernel = sharded["rembert"]["encoder"]["layer"]["intermediate"]["dense"]["kernel"]  # [L, H, I]: fsdp x tensor
    assert len(kernel.sharding.device_set) == 8 and kernel.addressable_shards[0].data.shape == (1, 8, 12)
    table = sharded["rembert"]["embeddings"]["word_embeddings"]["embedding"]  # [vocab, E_in]: tensor x fsdp
    assert table.addressable_shards[0].data.shape == (32, 4)
    # Same values up to fp32 rounding (XLA may fuse the sampling differently per sharding).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8),
                 single, sharded)
    apply = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).logits)
    ref = apply(single, ids, mask)
    with mesh, nn.logical_axis_rules(DEFAULT_RULES):
        out = apply(sharded, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


def _count_dots(config: RemBertConfig) -> int:
    module = RemBertModel(config)
    ids, mask = ids_and_mask()
    params = jaxmodels.abstract_params(module)
    text = jax.jit(lambda p: module.apply({"params": p}, ids, mask).last_hidden_state).lower(params).as_text()
    return len(re.findall(r"dot_general", text))


def test_layer_traced_once_whatever_the_depth():
    base = _count_dots(tiny(num_hidden_layers=2))
    assert base > 0 and _count_dots(tiny(num_hidden_layers=12)) == base


def test_dropout_is_active_in_training_and_keyed():
    module = RemBertForMaskedLM(tiny(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    params = jaxmodels.abstract_params(module)
    params = jax.tree.map(lambda s: jnp.asarray(np.random.RandomState(0).randn(*s.shape), s.dtype), params)
    ids, mask = ids_and_mask()
    run = jax.jit(lambda key, deterministic: module.apply({"params": params}, ids, mask, deterministic=deterministic,
                                                          rngs={"dropout": key}).logits, static_argnums=1)
    eval_logits = run(jax.random.PRNGKey(0), True)
    assert not np.allclose(run(jax.random.PRNGKey(0), False), eval_logits)
    np.testing.assert_array_equal(run(jax.random.PRNGKey(0), False), run(jax.random.PRNGKey(0), False))
    assert not np.allclose(run(jax.random.PRNGKey(0), False), run(jax.random.PRNGKey(1), False))


# -- bad configs: ValueError naming the field --------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(hidden_size=15), "hidden_size"),
        (dict(hidden_act="gelu_fancy"), "hidden_act"),
        (dict(input_embedding_size=0), "input_embedding_size"),
        (dict(output_embedding_size=-1), "output_embedding_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(intermediate_size=2.5), "intermediate_size"),
        (dict(classifier_dropout_prob=1.0), "classifier_dropout_prob"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
        (dict(pad_token_id=64), "pad_token_id"),
        (dict(problem_type="ranking"), "problem_type"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings"),
        (dict(add_cross_attention=True), "add_cross_attention"),
        (dict(num_labels=0), "num_labels"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels=3"):
        RemBertForQuestionAnswering(tiny(num_labels=3))
    with pytest.raises(ValueError, match="num_labels"):
        jaxmodels.from_config({**TINY, "model_type": "rembert", "num_labels": 5,
                               "architectures": ["RemBertForQuestionAnswering"]})


# -- bad inputs: ValueError naming the argument, before tracing ---------------------------------------------------
def _apply(module, **inputs):
    """Runs ``module`` on abstract params (the checks fire before any computation)."""
    params = jaxmodels.abstract_params(module)
    return jax.eval_shape(lambda p: module.apply({"params": p}, **inputs), params)


@pytest.mark.parametrize("inputs,message", [
    (dict(input_ids=jnp.ones((2, 10), jnp.int32), attention_mask=jnp.ones((2, 9), jnp.int32)), "attention_mask"),
    (dict(input_ids=jnp.ones((2, 10), jnp.int32), token_type_ids=jnp.zeros((2, 11), jnp.int32)), "token_type_ids"),
    (dict(input_ids=jnp.ones((1, 33), jnp.int32)), "max_position_embeddings=32"),
    (dict(input_ids=jnp.array([[1, 2, 64]], jnp.int32)), r"input_ids.*vocab_size=64"),
    (dict(input_ids=jnp.array([[1, -1, 3]], jnp.int32)), "input_ids"),
    (dict(input_ids=jnp.array([[1, 2]], jnp.int32), token_type_ids=jnp.array([[0, 2]], jnp.int32)), "token_type_ids"),
    (dict(input_ids=jnp.array([[1, 2]], jnp.int32), position_ids=jnp.array([[0, 32]], jnp.int32)), "position_ids"),
    (dict(inputs_embeds=jnp.zeros((1, 3, 16))), "input_embedding_size=8"),
    (dict(), "exactly one of input_ids or inputs_embeds"),
    (dict(input_ids=jnp.ones((4,), jnp.int32)), "input_ids must have rank 2"),
    (dict(input_ids=jnp.ones((1, 3), jnp.int32), labels=jnp.ones((1, 4), jnp.int32)), "labels has shape"),
    (dict(input_ids=jnp.ones((1, 3), jnp.int32), encoder_hidden_states=jnp.zeros((1, 2, 16))), "add_cross_attention"),
])
def test_bad_inputs_name_the_argument(inputs, message):
    with pytest.raises(ValueError, match=message):
        _apply(RemBertForMaskedLM(tiny()), **inputs)


def test_bad_decoder_inputs_name_the_argument():
    decoder = RemBertForCausalLM(tiny(is_decoder=True, add_cross_attention=True))
    ids = jnp.ones((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must have shape \[batch=2, source_length, hidden"):
        _apply(decoder, input_ids=ids, encoder_hidden_states=jnp.zeros((2, 4, 8)))
    with pytest.raises(ValueError, match="encoder_attention_mask has shape"):
        _apply(decoder, input_ids=ids, encoder_hidden_states=jnp.zeros((2, 4, 16)),
               encoder_attention_mask=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="encoder_attention_mask given without encoder_hidden_states"):
        _apply(decoder, input_ids=ids, encoder_attention_mask=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="max_length=33 exceeds max_position_embeddings"):
        decoder.init_cache(2, 33)
    cache = decoder.init_cache(2, 4)
    with pytest.raises(ValueError, match="cache holds 4 slots for batch 2"):
        _apply(decoder, input_ids=jnp.ones((3, 2), jnp.int32), cache=cache)
    with pytest.raises(ValueError, match="is_decoder"):
        RemBertForCausalLM(tiny()).init_cache(2, 4)
    with pytest.raises(ValueError, match="is_decoder=False"):
        _apply(RemBertForCausalLM(tiny()), input_ids=ids, cache=cache)
