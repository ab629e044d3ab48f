"""Reformer behaviour beyond parity: bad configs / inputs fail before tracing with the field named; the reversible
path and the plain scan path agree (values and gradients) with dropout on and rotations from the "lsh" stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.reformer import (
    ReformerConfig,
    ReformerForMaskedLM,
    ReformerForQuestionAnswering,
    ReformerModel,
    ReformerModelWithLMHead,
)

SMALL = dict(vocab_size=20, hidden_size=8, num_attention_heads=2, attention_head_size=4, feed_forward_size=12,
             attn_layers=("local", "lsh", "local", "lsh"), local_attn_chunk_length=4, lsh_attn_chunk_length=8,
             axial_pos_shape=(4, 8), axial_pos_embds_dim=(3, 5), num_buckets=4, max_position_embeddings=32)


@pytest.mark.parametrize("overrides,field", [
    (dict(axial_pos_embds_dim=(3, 4)), "axial_pos_embds_dim"),
    (dict(num_buckets=5), "num_buckets"),
    (dict(num_buckets=[2, 3]), "num_buckets"),
    (dict(attn_layers=("local", "global")), "attn_layers"),
    (dict(attn_layers=()), "attn_layers"),
    (dict(hidden_act="swishy"), "hidden_act"),
    (dict(num_hashes=0), "num_hashes"),
    (dict(lsh_attn_chunk_length=0), "lsh_attn_chunk_length"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings"),
    (dict(pad_token_id=20), "pad_token_id"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        ReformerConfig(**{**SMALL, **overrides})


def test_hf_dict_round_trip():
    config = ReformerConfig(**{**SMALL, "num_buckets": [2, 4]})
    d = config.to_hf_dict()
    assert d["attn_layers"] == ["local", "lsh", "local", "lsh"] and d["num_buckets"] == [2, 4]
    assert ReformerConfig.from_hf_dict(d) == config
    assert config.num_hidden_layers == 4 and config.layer_period == 2 and config.lcm_chunk_length == 8
    assert ReformerConfig(**{**SMALL, "attn_layers": ("lsh", "local", "local")}).layer_period == 3
    # HF's num_buckets=None rule: ~2L/chunk as a power of two, factorized beyond 2 * max(sqrt(P/chunk), chunk).
    auto = ReformerConfig(**{**SMALL, "num_buckets": None, "lsh_attn_chunk_length": 4})
    assert auto.resolved_num_buckets(16) == 8 and auto.resolved_num_buckets(32) == (4, 4)


def _apply(module, **kwargs):
    # Validation runs before any param is read, so no params are needed to see the error.
    return module.apply({"params": {}}, **kwargs)


def test_bad_inputs_fail_before_tracing():
    config = ReformerConfig(**SMALL)
    model = ReformerModel(config)
    ids = lambda n: jnp.ones((2, n), jnp.int32)
    with pytest.raises(ValueError, match="multiple of the least common multiple"):
        _apply(model, input_ids=ids(12), deterministic=False)  # 12 is not a multiple of lcm(4, 8)
    with pytest.raises(ValueError, match="axial_pos_shape"):
        _apply(model, input_ids=ids(16), deterministic=False)  # training length must be 4 * 8
    with pytest.raises(ValueError, match="lsh_rotations"):
        _apply(model, input_ids=ids(16), lsh_rotations=jnp.zeros((2, 4, 1, 3)))  # rotation size is 4 -> half 2
    with pytest.raises(ValueError, match="max_position_embeddings"):
        _apply(model, input_ids=ids(40))
    with pytest.raises(ValueError, match="attention_mask"):
        _apply(model, input_ids=ids(16), attention_mask=jnp.ones((2, 15)))
    with pytest.raises(ValueError, match="input_ids"):
        _apply(model, input_ids=jnp.full((2, 16), 25))  # beyond vocab_size
    with pytest.raises(ValueError, match="exactly one"):
        _apply(model)
    with pytest.raises(ValueError, match="is_decoder"):
        _apply(ReformerModelWithLMHead(config), input_ids=ids(16))
    with pytest.raises(ValueError, match="lsh_num_chunks_after"):
        _apply(ReformerModelWithLMHead(config.replace(is_decoder=True, lsh_num_chunks_after=1)), input_ids=ids(16))
    with pytest.raises(ValueError, match="is_decoder"):
        _apply(ReformerForMaskedLM(config.replace(is_decoder=True)), input_ids=ids(16))
    with pytest.raises(ValueError, match="num_labels"):
        _apply(ReformerForQuestionAnswering(config.replace(num_labels=3)), input_ids=ids(16))


def test_missing_rotations_source_is_an_error():
    config = ReformerConfig(**SMALL)
    model = ReformerMaskedLMTiny = ReformerForMaskedLM(config)
    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), input_ids=jnp.ones((1, 1), jnp.int32)))()
    with pytest.raises(ValueError, match="lsh_rotations"):
        ReformerMaskedLMTiny.apply(params, input_ids=jnp.ones((1, 16), jnp.int32))


def test_reversible_and_plain_paths_agree_with_dropout():
    """Training with dropout and per-layer rotations from the "lsh" stream: the reversible stack (O(1) memory,
    backward rebuilt from outputs with the saved buckets) equals ordinary autodiff of the plain scan path."""
    config = ReformerConfig(**{**SMALL, "hidden_dropout_prob": 0.2, "local_attention_probs_dropout_prob": 0.1,
                               "lsh_attention_probs_dropout_prob": 0.1, "num_hashes": 2,
                               "chunk_size_feed_forward": 8})
    model = ReformerForMaskedLM(config)
    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), input_ids=jnp.ones((1, 1), jnp.int32)))()
    params = params["params"]
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(1, 20, (2, 32)))
    mask = jnp.asarray(np.concatenate([np.ones((2, 28)), np.array([[1] * 4, [0] * 4])], 1).astype(np.int32))
    rngs = {"dropout": jax.random.key(1, impl="rbg"), "lsh": jax.random.key(2, impl="rbg")}

    def loss(p, plain):
        out = model.apply({"params": p}, input_ids=ids, attention_mask=mask, labels=ids, deterministic=False,
                          rngs=rngs, output_hidden_states=plain)
        return out.loss

    (rev_loss, rev_grads), (plain_loss, plain_grads) = jax.jit(
        lambda p: (jax.value_and_grad(loss)(p, False), jax.value_and_grad(loss)(p, True)))(params)
    np.testing.assert_allclose(rev_loss, plain_loss, rtol=1e-5)
    flat_rev, flat_plain = jax.tree.leaves(rev_grads), jax.tree.leaves(plain_grads)
    for a, b in zip(flat_rev, flat_plain):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(b).max())))
    # Dropout is really on: a different dropout key changes the loss.
    other = model.apply({"params": params}, input_ids=ids, attention_mask=mask, labels=ids, deterministic=False,
                        rngs={**rngs, "dropout": jax.random.key(3, impl="rbg")}).loss
    assert abs(float(other) - float(rev_loss)) > 1e-4
