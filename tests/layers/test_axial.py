"""Axial position embeddings: HF parity (train / eval / position ids), reference twin, uniqueness, dropout, errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import ReformerConfig
from transformers.models.reformer.modeling_reformer import AxialPositionEmbeddings as HFAxial

from layers import axial

SHAPE, DIMS = (4, 8), (6, 10)
HIDDEN = sum(DIMS)
TOTAL = SHAPE[0] * SHAPE[1]


def _hf_module(dropout: float = 0.0, seed: int = 0, shape=SHAPE, dims=DIMS) -> HFAxial:
    config = ReformerConfig(
        hidden_size=sum(dims),
        axial_pos_shape=list(shape),
        axial_pos_embds_dim=list(dims),
        hidden_dropout_prob=dropout,
        max_position_embeddings=int(np.prod(shape)),
        lsh_attn_chunk_length=4,
        local_attn_chunk_length=4,
    )
    module = HFAxial(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in module.weights:  # non-default (HF inits to ones before _init_weights) random weights
            w.copy_(torch.randn(w.shape, generator=gen) * 0.7 + 0.1)
    return module


def _our_params(module: HFAxial) -> dict:
    # The conversion is a pure rename: weights.{k} -> weights_{k}, same shapes.
    return {f"weights_{k}": jnp.asarray(w.detach().numpy()) for k, w in enumerate(module.weights)}


def _hf(module: HFAxial, ids: np.ndarray, training: bool) -> np.ndarray:
    module.train(training)
    with torch.no_grad():
        return module(torch.as_tensor(ids, dtype=torch.long)).numpy()


OURS = axial.AxialPositionEmbeddings(SHAPE, DIMS, hidden_size=HIDDEN)
_apply = jax.jit(OURS.apply, static_argnames=("deterministic",))


def test_module_params_are_hf_shaped_and_logically_annotated():
    variables = OURS.init(jax.random.PRNGKey(0), TOTAL)
    boxed = variables["params"]
    assert set(boxed) == {"weights_0", "weights_1"}
    assert isinstance(boxed["weights_0"], nn.Partitioned)
    assert boxed["weights_0"].value.shape == (4, 1, 6)
    assert boxed["weights_1"].value.shape == (1, 8, 10)
    assert boxed["weights_0"].names == (None, None, None)
    # HF's init: normal with axial_norm_std (1.0): not all ones / zeros.
    assert 0.5 < float(jnp.std(boxed["weights_1"].value)) < 1.5
    hf = _hf_module()
    hf_shapes = {f"weights_{k}": tuple(w.shape) for k, w in enumerate(hf.weights)}
    assert hf_shapes == {k: tuple(v.value.shape) for k, v in boxed.items()}


def test_hf_parity_training_ignores_position_ids():
    hf = _hf_module(seed=1)
    params = _our_params(hf)
    ids = np.random.default_rng(0).integers(0, TOTAL, (3, TOTAL))  # HF ignores these in training
    expected = _hf(hf, ids, training=True)
    got = _apply({"params": params}, jnp.asarray(ids), deterministic=False)
    assert got.shape == (3, TOTAL, HIDDEN)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-6)
    # Length-only call gives the same rows, batch 1.
    by_length = OURS.apply({"params": params}, TOTAL, deterministic=False)
    assert by_length.shape == (1, TOTAL, HIDDEN)
    np.testing.assert_allclose(np.asarray(by_length[0]), expected[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("length", [1, 13, TOTAL])
def test_hf_parity_eval_with_given_position_ids(length):
    hf = _hf_module(seed=2)
    params = _our_params(hf)
    rng = np.random.default_rng(length)
    ids = rng.integers(0, TOTAL, (2, length))
    ids[0, -1] = TOTAL - 1  # the last grid row is reachable
    expected = _hf(hf, ids, training=False)
    got = _apply({"params": params}, jnp.asarray(ids), deterministic=True)
    assert got.shape == (2, length, HIDDEN)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-6)


def test_hf_parity_eval_shorter_sequence_default_positions():
    hf = _hf_module(seed=3)
    params = _our_params(hf)
    length = 11  # L < prod(shape) is allowed in eval; positions start at 0
    ids = np.tile(np.arange(length), (2, 1))
    expected = _hf(hf, ids, training=False)
    got = OURS.apply({"params": params}, length, deterministic=True)
    assert got.shape == (1, length, HIDDEN)
    np.testing.assert_allclose(np.asarray(got[0]), expected[0], rtol=0, atol=1e-6)


def test_hf_parity_three_axes():
    shape, dims = (2, 3, 4), (3, 4, 5)
    hf = _hf_module(seed=4, shape=shape, dims=dims)
    weights = [jnp.asarray(w.detach().numpy()) for w in hf.weights]
    ids = np.random.default_rng(4).integers(0, 24, (2, 9))
    np.testing.assert_allclose(
        np.asarray(axial.axial_position_embeddings(weights, jnp.asarray(ids), training=False)),
        _hf(hf, ids, training=False), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(axial.axial_position_embeddings(weights, jnp.zeros((2, 24), jnp.int32), training=True)),
        _hf(hf, np.zeros((2, 24), np.int64), training=True), rtol=0, atol=1e-6)


def _random_weights(rng: np.random.Generator, shape, dims, dtype=jnp.float32):
    weights = []
    for k, (s, d) in enumerate(zip(shape, dims)):
        w_shape = tuple(s if a == k else 1 for a in range(len(shape))) + (d,)
        weights.append(jnp.asarray(rng.normal(size=w_shape), dtype))
    return weights


# A few fixed geometries (2 and 3 axes, a size-1 axis) so compilation is shared across examples; weights and
# position ids vary freely.
_GEOMETRIES = (((4, 8), (6, 10)), ((3, 1, 4), (1, 2, 3)), ((2, 5), (3, 2)))
_ours_jit = jax.jit(axial.axial_position_embeddings, static_argnames=("training",))
_reference_jit = jax.jit(axial.axial_position_embeddings_reference, static_argnames=("training",))


@settings(max_examples=12, deadline=None)
@given(geometry=st.sampled_from(_GEOMETRIES), training=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference_twin(geometry, training, seed):
    shape, dims = geometry
    rng = np.random.default_rng(seed)
    weights = _random_weights(rng, shape, dims)
    total = int(np.prod(shape))
    length = total if training else total - 3
    ids = jnp.asarray(rng.integers(0, total, (2, length)))
    got = _ours_jit(weights, ids, training=training)
    want = _reference_jit(weights, ids, training=training)
    assert got.shape == (2, length, sum(dims))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("training", [True, False])
def test_every_position_has_a_unique_embedding(training):
    weights = _random_weights(np.random.default_rng(5), SHAPE, DIMS)
    table = np.asarray(axial.axial_position_embeddings(weights, TOTAL, training=training))[0]
    distances = np.linalg.norm(table[:, None] - table[None], axis=-1)
    off_diagonal = distances[~np.eye(TOTAL, dtype=bool)]
    assert off_diagonal.min() > 1e-3
    # And the factorization is exact: p = i * S1 + j -> concat(w0[i], w1[j]).
    i, j = 3, 5
    np.testing.assert_array_equal(
        table[i * SHAPE[1] + j], np.concatenate([weights[0][i, 0], weights[1][0, j]]))


def test_eval_under_jit_with_traced_ids_matches_eager():
    weights = _random_weights(np.random.default_rng(6), SHAPE, DIMS)
    ids = jnp.asarray(np.random.default_rng(6).integers(0, TOTAL, (2, 7)))
    eager = axial.axial_position_embeddings(weights, ids, training=False)
    jitted = jax.jit(lambda w, p: axial.axial_position_embeddings(w, p, training=False))(weights, ids)
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))


def test_training_dropout_drops_whole_axis1_columns_like_hf():
    rate = 0.5
    weights = _random_weights(np.random.default_rng(7), SHAPE, DIMS)
    clean = np.asarray(axial.axial_position_embeddings(weights, TOTAL, training=True))[0]
    out = np.asarray(axial.axial_position_embeddings(
        weights, jnp.zeros((4, TOTAL), jnp.int32), training=True, dropout_rate=rate,
        dropout_key=jax.random.PRNGKey(0)))
    torch.manual_seed(0)
    hf = _hf_module(dropout=rate, seed=7)
    hf_out = _hf(hf, np.zeros((4, TOTAL), np.int64), training=True)
    hf_clean = _hf(hf, np.arange(TOTAL)[None], training=False)[0]
    kept_fractions = []
    for result, reference in ((out, clean), (hf_out, hf_clean)):
        grid = result.reshape(4, SHAPE[0], SHAPE[1], HIDDEN)
        ref = reference.reshape(SHAPE[0], SHAPE[1], HIDDEN)
        for b in range(4):
            for j in range(SHAPE[1]):
                column = grid[b, :, j]
                # Each (example, axis-1 index) column is either entirely dropped or entirely rescaled.
                assert np.all(column == 0) or np.allclose(column, ref[:, j] / (1 - rate), atol=1e-6)
        kept_fractions.append(np.mean(np.any(grid != 0, axis=(1, 3))))
    # The masks differ (torch RNG is not reproducible), but both drop some and keep some columns.
    assert all(0.0 < f < 1.0 for f in kept_fractions)


def test_module_training_dropout_uses_dropout_rng():
    module = axial.AxialPositionEmbeddings(SHAPE, DIMS, hidden_size=HIDDEN, dropout_rate=0.5)
    variables = module.init(jax.random.PRNGKey(0), TOTAL)
    a = module.apply(variables, TOTAL, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    b = module.apply(variables, TOTAL, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    # Eval ignores dropout entirely.
    c = module.apply(variables, TOTAL, deterministic=True)
    np.testing.assert_array_equal(np.asarray(c), np.asarray(OURS.apply(variables, TOTAL)))


def test_bf16_weights_run_and_keep_dtype():
    weights = _random_weights(np.random.default_rng(8), SHAPE, DIMS, jnp.bfloat16)
    for training in (True, False):
        out = axial.axial_position_embeddings(weights, TOTAL, training=training)
        assert out.dtype == jnp.bfloat16 and out.shape == (1, TOTAL, HIDDEN)
        assert bool(jnp.all(jnp.isfinite(out)))
    module = axial.AxialPositionEmbeddings(SHAPE, DIMS, dtype=jnp.bfloat16)
    out = module.apply(module.init(jax.random.PRNGKey(0), TOTAL), TOTAL)
    assert out.dtype == jnp.bfloat16


def test_errors_name_the_field_and_rule():
    with pytest.raises(ValueError, match="axial_pos_embds_dim.*sum to hidden_size"):
        axial.AxialPositionEmbeddings(SHAPE, (6, 9), hidden_size=HIDDEN).init(jax.random.PRNGKey(0), TOTAL)
    with pytest.raises(ValueError, match="axial_pos_embds_dim must have one entry"):
        axial.check_axial_config((4, 8), (16,))
    with pytest.raises(ValueError, match="axial_pos_shape must have at least 2"):
        axial.check_axial_config((32,), (16,))
    weights = _random_weights(np.random.default_rng(9), SHAPE, DIMS)
    with pytest.raises(ValueError, match="axial_pos_shape.*length"):
        axial.axial_position_embeddings(weights, TOTAL - 1, training=True)
    with pytest.raises(ValueError, match="axial_pos_shape.*multiply at least"):
        axial.axial_position_embeddings(weights, TOTAL + 1, training=False)
    with pytest.raises(ValueError, match="position_ids must lie in"):
        axial.axial_position_embeddings(weights, jnp.array([[0, TOTAL]]), training=False)
    with pytest.raises(ValueError, match="dropout_key is required"):
        axial.axial_position_embeddings(weights, TOTAL, training=True, dropout_rate=0.1)
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape"):
        axial.axial_position_embeddings([weights[0], weights[1][0]], TOTAL, training=False)
