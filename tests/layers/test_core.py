"""Core primitives against their slow reference twins (and torch where the twin is torch's own op)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers import attention, dense, embeddings, losses, norms, stacked
from layers.activations import ACTIVATIONS, get_activation

SETTINGS = settings(max_examples=15, deadline=None)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 10**6), st.booleans())
def test_dense_matches_twin(batch, d_in, d_out, seed, with_bias):
    rng = np.random.RandomState(seed)
    x, k, b = rng.randn(batch, 5, d_in), rng.randn(d_in, d_out), rng.randn(d_out)
    b = b if with_bias else None
    chex.assert_trees_all_close(dense.dense(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32),
                                            None if b is None else jnp.asarray(b, jnp.float32)),
                                dense.dense_reference(x, k, b), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(st.integers(2, 64), st.floats(-1e4, 1e4), st.floats(1e-3, 10.0), st.integers(0, 10**6))
def test_layer_norm_exact_variance_at_large_mean(d, mean, std, seed):
    """Large |mean| / std is where E[x^2] - E[x]^2 cancels; the two-pass form must stay within fp32 rounding."""
    rng = np.random.RandomState(seed)
    x = mean + std * rng.randn(3, d)
    scale, bias = rng.randn(d), rng.randn(d)
    ours = norms.layer_norm(jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32),
                            jnp.asarray(bias, jnp.float32), epsilon=1e-12)
    # fp32 rounding of the input (and of the mean) moves x - mean by ~|mean| * 2^-24, i.e. the normalised value by
    # that over the row's actual spread, which for small d can be far below `std`: bound with the measured spread.
    row_std = x.astype(np.float32).astype(np.float64).std(-1).min()
    tol = 1e-4 + 8 * abs(mean) / max(row_std, 1e-30) * 2**-24 * np.abs(scale).max()
    np.testing.assert_allclose(np.asarray(ours), norms.layer_norm_reference(x, scale, bias, epsilon=1e-12), atol=tol)


def test_layer_norm_beats_fast_variance():
    """The trap that motivated it: flax's default fast variance is wrong at mean 1e4, ours is not."""
    import flax.linen as nn

    x = 1e4 + 0.01 * np.random.RandomState(0).randn(2, 64)
    ref = norms.layer_norm_reference(x, None, None, epsilon=1e-12)
    ours = norms.layer_norm(jnp.asarray(x, jnp.float32), None, None, epsilon=1e-12)
    fast = nn.LayerNorm(epsilon=1e-12, use_bias=False, use_scale=False).apply({}, jnp.asarray(x, jnp.float32))
    assert np.abs(np.asarray(ours) - ref).max() < 0.2
    assert np.abs(np.asarray(fast) - ref).max() > 1.0


@pytest.mark.parametrize("name", sorted(set(ACTIVATIONS) - {"laplace", "relu2", "linear", "identity", "gelu_10"}))
def test_activations_match_hf(name):
    from tests.oracle import require_torch

    torch = require_torch()
    from transformers.activations import ACT2FN

    x = np.linspace(-6, 6, 101).astype(np.float32)
    theirs = ACT2FN[name](torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(get_activation(name)(jnp.asarray(x))), theirs, rtol=1e-5, atol=1e-6)


def test_gelu_is_exact_and_gelu_new_is_tanh():
    x = jnp.asarray([1.0])
    assert float(get_activation("gelu")(x)[0]) == pytest.approx(0.8413447, abs=1e-6)  # 1 * Phi(1)
    assert float(get_activation("gelu_new")(x)[0]) == pytest.approx(0.8411920, abs=1e-6)
    with pytest.raises(ValueError, match="hidden_act='nope'"):
        get_activation("nope")


@SETTINGS
@given(st.integers(2, 20), st.integers(1, 6), st.integers(0, 10**6))
def test_embed_lookup_and_padding_row_gets_no_gradient(vocab, features, seed):
    rng = np.random.RandomState(seed)
    table = jnp.asarray(rng.randn(vocab, features), jnp.float32)
    ids = jnp.asarray(rng.randint(0, vocab, (3, 7)))
    chex.assert_trees_all_close(embeddings.embed_lookup(table, ids), embeddings.embed_lookup_reference(table, ids))
    pad = int(ids[0, 0])
    grad = jax.grad(lambda t: embeddings.embed_lookup(t, ids, padding_idx=pad).sum())(table)
    counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab).astype(np.float32)
    counts[pad] = 0.0  # torch's nn.Embedding(padding_idx=pad) never updates that row
    np.testing.assert_allclose(np.asarray(grad), np.repeat(counts[:, None], features, 1))


@SETTINGS
@given(
    st.integers(1, 2), st.integers(1, 7), st.integers(1, 7), st.integers(1, 3), st.integers(1, 5),
    st.integers(0, 10**6), st.booleans(),
)
def test_dot_product_attention_matches_twin(batch, lq, lk, heads, dim, seed, with_bias):
    rng = np.random.RandomState(seed)
    q, k, v = (rng.randn(batch, n, heads, dim).astype(np.float32) for n in (lq, lk, lk))
    mask = rng.rand(batch, 1, lq, lk) < 0.7
    mask[..., 0] = True  # every query keeps one key (a fully masked row is a separate convention)
    bias = rng.randn(batch, heads, lq, lk).astype(np.float32) if with_bias else None
    out, w = attention.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask),
                                             bias=None if bias is None else jnp.asarray(bias))
    ref_out, ref_w = attention.dot_product_attention_reference(q, k, v, mask=mask, bias=bias)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(w), ref_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme", ["relative_key", "relative_key_query"])
def test_relative_position_scores_match_loop(scheme):
    rng = np.random.RandomState(0)
    b, lq, h, d, max_pos = 2, 5, 2, 3, 8
    q, k = rng.randn(b, lq, h, d).astype(np.float32), rng.randn(b, lq, h, d).astype(np.float32)
    table = rng.randn(2 * max_pos - 1, d).astype(np.float32)
    ours = np.asarray(attention.relative_position_scores(jnp.asarray(q), jnp.asarray(k), jnp.asarray(table), scheme, max_pos))
    for i in range(lq):
        for j in range(lq):
            e = table[i - j + max_pos - 1]
            want = np.einsum("bhd,d->bh", q[:, i], e)
            if scheme == "relative_key_query":
                want = want + np.einsum("bhd,d->bh", k[:, j], e)
            np.testing.assert_allclose(ours[:, :, i, j], want, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(st.sampled_from(attention.POSITION_SCHEMES), st.integers(1, 6), st.integers(0, 10**6))
def test_query_positions_give_those_rows_of_full_attention(scheme, rows, seed):
    """Queries on a few rows (keys / values on all) equal the same rows of full self-attention, weights included."""
    rng = np.random.RandomState(seed)
    b, length, hidden = 2, 7, 8
    x = jnp.asarray(rng.randn(b, length, hidden) + 3.0, jnp.float32)
    keep = rng.rand(b, length) < 0.8
    keep[:, 0] = True
    mask = attention.padding_mask(jnp.asarray(keep, jnp.int32))
    positions = jnp.asarray(np.stack([rng.choice(length, rows, replace=False) for _ in range(b)]), jnp.int32)
    module = attention.SelfAttention(num_heads=2, head_dim=4, position_embedding_type=scheme, max_position_embeddings=9)
    params = module.init(jax.random.PRNGKey(seed % 7), x, mask)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.asarray(rng.randn(*p.shape), p.dtype), params)
    full, full_w = module.apply({"params": params}, x, mask)
    part, part_w = module.apply({"params": params}, x, mask, query_positions=positions)
    chex.assert_shape(part, (b, rows, 8))
    chex.assert_trees_all_close(part, attention.gather_rows(full, positions), rtol=1e-5, atol=1e-5)
    want_w = jnp.take_along_axis(full_w, positions[:, None, :, None], axis=2)
    chex.assert_trees_all_close(part_w, want_w, rtol=1e-5, atol=1e-6)


def test_gather_rows_picks_each_examples_rows():
    x = jnp.arange(2 * 4 * 3).reshape(2, 4, 3)
    got = attention.gather_rows(x, jnp.asarray([[3, 0], [1, 1]]))
    np.testing.assert_array_equal(np.asarray(got), np.stack([np.asarray(x)[0, [3, 0]], np.asarray(x)[1, [1, 1]]]))


def test_losses_match_torch():
    from tests.oracle import require_torch

    torch = require_torch()
    F = torch.nn.functional
    rng = np.random.RandomState(0)
    logits = rng.randn(6, 5).astype(np.float32)
    labels = np.array([0, 4, -100, 2, -100, 1])
    np.testing.assert_allclose(float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))),
                               F.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item(), rtol=1e-6)
    targets = (rng.rand(6, 5) < 0.5).astype(np.float32)
    np.testing.assert_allclose(
        float(losses.binary_cross_entropy_with_logits(jnp.asarray(logits * 30), jnp.asarray(targets))),
        F.binary_cross_entropy_with_logits(torch.tensor(logits * 30), torch.tensor(targets)).item(), rtol=1e-6)
    start, end = rng.randn(3, 7).astype(np.float32), rng.randn(3, 7).astype(np.float32)
    sp, ep = np.array([1, 9, 3]), np.array([2, 4, -5])
    clamp = lambda p: torch.tensor(p).clamp(0, 7)
    want = (F.cross_entropy(torch.tensor(start), clamp(sp), ignore_index=7)
            + F.cross_entropy(torch.tensor(end), clamp(ep), ignore_index=7)) / 2
    np.testing.assert_allclose(float(losses.span_loss(jnp.asarray(start), jnp.asarray(end), jnp.asarray(sp), jnp.asarray(ep))),
                               want.item(), rtol=1e-6)


def test_stacked_params_are_independent_and_named():
    import flax.linen as nn

    from layers.dense import Dense

    module = Dense(4)
    boxed = stacked.init_stacked(module, jax.random.PRNGKey(0), (2, 3), ("layers", None), jnp.zeros((1, 5)))
    assert boxed["kernel"].names == ("layers", None, "embed", "mlp")
    params = nn.unbox(boxed)
    assert params["kernel"].shape == (2, 3, 5, 4)
    one = stacked.index_stacked(params, (1, 2))
    assert one["kernel"].shape == (5, 4)
    assert not np.allclose(params["kernel"][0, 0], params["kernel"][1, 2])  # independent keys per copy


@pytest.mark.parametrize("tied", [True, False])
def test_masked_lm_head_and_pooler_match_twins(tied):
    import flax.linen as nn

    from layers.heads import MaskedLMHead, Pooler, masked_lm_head_reference, pooler_reference

    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(2, 5, 6), jnp.float32)
    table = jnp.asarray(rng.randn(11, 4), jnp.float32) if tied else None
    head = MaskedLMHead(embedding_size=4, vocab_size=11, hidden_act="gelu", layer_norm_eps=1e-12)
    params = nn.unbox(head.init(jax.random.PRNGKey(0), x, table)["params"])
    params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.randn(*p.shape), jnp.float32), params)
    want = masked_lm_head_reference(x, params, get_activation("gelu"), 1e-12, table)
    logits, loss = head.apply({"params": params}, x, table)
    assert loss is None
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)
    labels = jnp.asarray([[3, -100, 10, -100, 0], [-100, -100, 7, -100, -100]])
    _, loss = head.apply({"params": params}, x, table, labels)
    np.testing.assert_allclose(float(loss), float(losses.cross_entropy(jnp.asarray(want, jnp.float32), labels)), rtol=1e-5)
    assert ("decoder" in params) is (not tied)

    pooler = Pooler(6)
    pp = nn.unbox(pooler.init(jax.random.PRNGKey(1), x)["params"])
    np.testing.assert_allclose(np.asarray(pooler.apply({"params": pp}, x)),
                               pooler_reference(x, pp["dense"]["kernel"], pp["dense"]["bias"]), rtol=1e-5, atol=1e-6)
