"""LSH attention: parity with HF ``LSHSelfAttention``, reference-twin properties, special cases, errors."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layers.attention import dot_product_attention
from layers.lsh import (
    LSHSelfAttention,
    default_num_buckets,
    key_normalize,
    lsh_attention,
    lsh_attention_reference,
    lsh_counts_reference,
    lsh_hash,
    lsh_hash_reference,
    rotation_size,
    total_buckets,
    lsh_valid_keys_reference,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import ReformerConfig  # noqa: E402
from transformers.models.reformer import modeling_reformer as hf_reformer  # noqa: E402

HIDDEN, HEADS, HEAD_DIM = 12, 2, 4

# One jitted entry point shared by the tests: eager mode would compile every primitive for every new shape.
def key(seed):
    """PRNG keys for tests: the rbg implementation compiles in well under a second on CPU, threefry in ~8 s."""
    return jax.random.key(seed, impl="rbg")


lsh_jit = jax.jit(lsh_attention, static_argnames=(
    "chunk_length", "num_buckets", "num_chunks_before", "num_chunks_after", "causal", "dropout_rate",
    "deterministic", "return_probs", "dtype"))


def assert_matches_reference(got, qk, v, buckets, *, chunk_length, num_chunks_before=1, num_chunks_after=0,
                             attention_mask=None, causal=False):
    """Compare with the reference twin. Rows whose only target is the token itself (e.g. decoder position 0)
    are compared to v_i with a loose tolerance: there the hash-round weights come from logsumexps near -1e5,
    whose fp32 spacing (~8e-3) limits how exactly they sum to one -- in HF as well (see lsh_attention)."""
    kw = dict(chunk_length=chunk_length, num_chunks_before=num_chunks_before, num_chunks_after=num_chunks_after)
    want = lsh_attention_reference(qk, v, buckets, attention_mask=attention_mask, causal=causal, **kw)
    batch, length = qk.shape[:2]
    counts = lsh_counts_reference(buckets, length, **kw)
    others = lsh_valid_keys_reference(attention_mask, batch, length, causal) & ~np.eye(length, dtype=bool)
    heads = qk.shape[2]
    reachable = np.broadcast_to(counts * others, (batch, heads, length, length))
    self_only = np.swapaxes(reachable.sum(-1) == 0, 1, 2)  # [batch, length, heads]
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got[~self_only], want[~self_only], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got[self_only], np.asarray(v, np.float64)[self_only], atol=1e-3, rtol=1e-2)
    return self_only


# ----------------------------------------------------------------------------------------------- HF parity helpers


def _hf_layer(**overrides):
    kwargs = dict(
        hidden_size=HIDDEN, num_attention_heads=HEADS, attention_head_size=HEAD_DIM, num_hashes=1, num_buckets=4,
        lsh_attn_chunk_length=4, lsh_num_chunks_before=1, lsh_num_chunks_after=0, hash_seed=7, is_decoder=False,
        lsh_attention_probs_dropout_prob=0.0, max_position_embeddings=64,
    )
    kwargs.update(overrides)
    config = ReformerConfig(**kwargs)
    layer = hf_reformer.LSHSelfAttention(config)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in layer.parameters():  # non-default, larger than init so that the attention is far from uniform
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    return config, layer


def _ours(config, layer):
    nb = config.num_buckets
    module = LSHSelfAttention(
        num_heads=config.num_attention_heads, head_dim=config.attention_head_size,
        chunk_length=config.lsh_attn_chunk_length, num_buckets=tuple(nb) if isinstance(nb, (list, tuple)) else nb,
        num_hashes=config.num_hashes, num_chunks_before=config.lsh_num_chunks_before,
        num_chunks_after=config.lsh_num_chunks_after, causal=config.is_decoder,
        max_position_embeddings=config.max_position_embeddings,
    )
    params = {"params": {name: {"kernel": jnp.asarray(getattr(layer, name).weight.detach().numpy().T)}
                         for name in ("query_key", "value")}}
    return module, params


def _hf_rotations(config):
    """HF re-seeds with hash_seed and draws the rotations with torch.randn: reproduce the same tensor."""
    nb = config.num_buckets
    size = nb if isinstance(nb, int) else sum(nb)
    torch.manual_seed(config.hash_seed)
    shape = (config.num_attention_heads, config.attention_head_size, config.num_hashes, size // 2)
    return jnp.asarray(torch.randn(shape).numpy())


def _inputs(batch, length, pad):
    rng = np.random.default_rng(length * 31 + pad)
    x = rng.normal(size=(batch, length, HIDDEN)).astype(np.float32)
    mask = np.ones((batch, length), np.int64)
    if pad:
        mask[-1, length - pad:] = 0  # only the last example is padded; HF decides the padding bucket batch-wide
    return x, mask


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


PARITY_CASES = [
    dict(id="1hash", cfg=dict(num_hashes=1, num_buckets=4, lsh_attn_chunk_length=4), length=16, pad=0),
    dict(id="2hash-factorized-pad-ahead", cfg=dict(num_hashes=2, num_buckets=[2, 4], lsh_num_chunks_after=1),
         length=16, pad=5),
    dict(id="3hash-decoder-pad", cfg=dict(num_hashes=3, num_buckets=8, lsh_attn_chunk_length=8, is_decoder=True),
         length=24, pad=7),
    dict(id="chunk2-wide-window", cfg=dict(num_hashes=2, num_buckets=4, lsh_attn_chunk_length=2,
                                            lsh_num_chunks_before=2, lsh_num_chunks_after=1), length=8, pad=0),
    dict(id="decoder-ahead-factorized", cfg=dict(num_hashes=2, num_buckets=[4, 2], lsh_attn_chunk_length=4,
                                                  lsh_num_chunks_after=1, is_decoder=True), length=12, pad=3),
    dict(id="no-window", cfg=dict(num_hashes=2, num_buckets=4, lsh_attn_chunk_length=8, lsh_num_chunks_before=0),
         length=16, pad=2),
    dict(id="full-path-encoder", cfg=dict(num_hashes=2, num_buckets=4, lsh_attn_chunk_length=16), length=12, pad=4),
    dict(id="full-path-decoder", cfg=dict(num_hashes=1, num_buckets=4, lsh_attn_chunk_length=8, is_decoder=True),
         length=8, pad=2),
]


@pytest.mark.parametrize("case", PARITY_CASES, ids=[c["id"] for c in PARITY_CASES])
def test_forward_matches_hf(case):
    config, layer = _hf_layer(**case["cfg"])
    layer.eval()
    x, mask = _inputs(2, case["length"], case["pad"])
    with torch.no_grad():
        ref = layer(torch.from_numpy(x), attention_mask=torch.from_numpy(mask), output_attentions=True)
    module, params = _ours(config, layer)
    out, buckets, probs = jax.jit(functools.partial(module.apply, return_probs=True))(
        params, x, mask, rotations=_hf_rotations(config))
    assert out.shape == (2, case["length"], HEADS * HEAD_DIM)
    assert _rel(out, ref.hidden_states.numpy()) < 1e-5
    assert np.asarray(probs).shape == tuple(ref.attention_probs.shape)
    np.testing.assert_allclose(probs, ref.attention_probs.numpy(), atol=1e-5)
    if case["length"] > config.lsh_attn_chunk_length:
        np.testing.assert_array_equal(buckets, ref.buckets.numpy())
    else:
        assert buckets is None and ref.buckets is None


def test_forward_without_mask_matches_hf():
    config, layer = _hf_layer(num_hashes=2, num_buckets=4, lsh_num_chunks_after=1)
    layer.eval()
    x, _ = _inputs(1, 12, 0)
    with torch.no_grad():
        ref = layer(torch.from_numpy(x))
    module, params = _ours(config, layer)
    out, buckets, _ = jax.jit(module.apply)(params, x, rotations=_hf_rotations(config))
    assert _rel(out, ref.hidden_states.numpy()) < 1e-5
    np.testing.assert_array_equal(buckets, ref.buckets.numpy())


GRAD_CASES = [PARITY_CASES[1], PARITY_CASES[2], PARITY_CASES[6]]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c["id"] for c in GRAD_CASES])
def test_gradients_match_hf(case):
    config, layer = _hf_layer(**case["cfg"])
    layer.train()  # dropout is 0; HF's custom backward (ReverseSort) is exercised in train mode
    x, mask = _inputs(2, case["length"], case["pad"])
    cot = np.random.default_rng(5).normal(size=(2, case["length"], HEADS * HEAD_DIM)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = layer(xt, attention_mask=torch.from_numpy(mask)).hidden_states
    (out_t * torch.from_numpy(cot)).sum().backward()

    module, params = _ours(config, layer)
    rotations = _hf_rotations(config)

    def loss(p, xx):
        return jnp.sum(module.apply(p, xx, mask, rotations=rotations, deterministic=False).out * cot)

    grads, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    for name in ("query_key", "value"):
        hf_grad = getattr(layer, name).weight.grad.numpy().T
        assert _rel(grads["params"][name]["kernel"], hf_grad) < 1e-4, name
    assert _rel(grad_x, xt.grad.numpy()) < 1e-4


def test_default_num_buckets_matches_hf():
    for length, chunk, max_pos in [(16, 4, 64), (64, 4, 64), (4096, 64, 4096), (512, 8, 64), (256, 2, 16)]:
        config, layer = _hf_layer(num_buckets=None, lsh_attn_chunk_length=chunk, max_position_embeddings=max_pos)
        hf_reformer.logger.setLevel("ERROR")
        layer._set_num_buckets(length)
        expected = layer.num_buckets
        got = default_num_buckets(length, chunk, max_pos)
        assert (list(got) if isinstance(got, tuple) else got) == expected, (length, chunk, max_pos)
    assert default_num_buckets(512, 8, 64) == (8, 16)  # the factorized branch is covered above


def test_module_num_buckets_none_matches_hf():
    """num_buckets=None: HF resolves it on the first chunked call; the module resolves it from the length."""
    config, layer = _hf_layer(num_buckets=None, num_hashes=2, lsh_attn_chunk_length=4)
    layer.eval()
    x, mask = _inputs(1, 16, 0)
    hf_reformer.logger.setLevel("ERROR")
    with torch.no_grad():
        ref = layer(torch.from_numpy(x), attention_mask=torch.from_numpy(mask))
    assert layer.num_buckets == default_num_buckets(16, 4, config.max_position_embeddings)
    module, params = _ours(config, layer)
    out, buckets, _ = jax.jit(module.apply)(params, x, mask, rotations=_hf_rotations(config))
    assert _rel(out, ref.hidden_states.numpy()) < 1e-5
    np.testing.assert_array_equal(buckets, ref.buckets.numpy())


# --------------------------------------------------------------------------------------- reference-twin properties

# A few fixed configurations keep the number of compilations small; hypothesis varies values, masks and buckets.
CONFIGS = [  # (length, chunk, num_hashes, before, after, causal)
    (8, 2, 1, 1, 0, True), (8, 4, 2, 1, 1, False), (12, 4, 3, 2, 0, True), (8, 2, 2, 0, 2, False),
    (6, 8, 2, 1, 0, True),
]


@settings(max_examples=20, deadline=None)
@given(config=st.sampled_from(CONFIGS), num_buckets=st.sampled_from([2, 4]), seed=st.integers(0, 2**31 - 1),
       pad_fraction=st.sampled_from([0.0, 0.3, 0.7]))
def test_lsh_attention_matches_reference(config, num_buckets, seed, pad_fraction):
    length, chunk, num_hashes, before, after, causal = config
    rng = np.random.default_rng(seed)
    qk = rng.normal(size=(2, length, HEADS, HEAD_DIM)).astype(np.float32) * 2
    v = rng.normal(size=(2, length, HEADS, HEAD_DIM)).astype(np.float32)
    mask = (rng.random((2, length)) >= pad_fraction).astype(np.int32)
    # Arbitrary buckets (many ties) exercise sorting and chunking harder than hashed ones.
    raw = rng.integers(0, num_buckets, size=(2, HEADS, num_hashes, length))
    buckets = (raw + np.arange(num_hashes)[:, None] * num_buckets).astype(np.int32)
    kw = dict(chunk_length=chunk, num_chunks_before=before, num_chunks_after=after, attention_mask=mask,
              causal=causal)
    got = lsh_jit(qk, v, buckets=buckets, **kw).out
    assert_matches_reference(got, qk, v, buckets, **kw)


@settings(max_examples=15, deadline=None)
@given(hashing=st.sampled_from([(2, 1), (6, 2), ((2, 4), 3), ((4, 2, 2), 2)]), seed=st.integers(0, 2**31 - 1),
       pad=st.booleans())
def test_lsh_hash_matches_reference(hashing, seed, pad):
    num_buckets, num_hashes = hashing
    rng = np.random.default_rng(seed)
    length = 8
    x = rng.normal(size=(2, length, HEADS, HEAD_DIM)).astype(np.float32)
    rot = rng.normal(size=(HEADS, HEAD_DIM, num_hashes, rotation_size(num_buckets) // 2)).astype(np.float32)
    mask = np.ones((2, length), np.int32)
    if pad:
        mask[0, rng.integers(1, length):] = 0
    got = np.asarray(jax.jit(lsh_hash, static_argnums=2)(x, rot, num_buckets, mask))
    want = lsh_hash_reference(x, rot, num_buckets, mask)
    np.testing.assert_array_equal(got, want)
    stride = total_buckets(num_buckets) + (1 if pad and not mask.all() else 0)
    assert got.min() >= 0 and got.max() < num_hashes * stride
    per_round = got - np.arange(num_hashes)[:, None] * stride
    assert per_round.min() >= 0 and per_round.max() <= total_buckets(num_buckets)
    if pad:
        padded = mask == 0
        assert (per_round.transpose(0, 3, 1, 2)[padded] == total_buckets(num_buckets)).all()


# ------------------------------------------------------------------------------------------------- special cases


@functools.partial(jax.jit, static_argnums=3)
def _masked_full_attention(qk, v, mask, causal):
    """Dense attention with the LSH scoring rules, through the generic attention core (an independent path)."""
    length = qk.shape[1]
    k = key_normalize(jnp.asarray(qk))
    valid = jnp.asarray(mask).astype(bool)[:, None, None, :]
    if causal:
        valid = valid & jnp.tril(jnp.ones((length, length), bool))
    # The generic core masks with finfo.min; add the -1e5 self score as a bias on the diagonal instead.
    eye = jnp.eye(length, dtype=bool)
    bias = jnp.where(eye, -1e5, 0.0)
    # On the diagonal the score must be exactly -1e5 (not score - 1e5): cancel the raw score there.
    diag_scores = jnp.einsum("bqhd,bqhd->bhq", jnp.asarray(qk), k)
    bias = bias - jnp.where(eye, diag_scores[..., None], 0.0)
    out, _ = dot_product_attention(jnp.asarray(qk), k, jnp.asarray(v), mask=valid | eye, bias=bias, scale=1.0)
    return out


@pytest.mark.parametrize("num_hashes,causal", [(1, True), (2, False), (2, True)])
def test_window_covering_everything_is_full_attention(num_hashes, causal):
    """When every query's window covers all chunks, sorting is irrelevant: exactly masked full attention
    (each key then appears once per hash round in every round's window, so the combination is a plain softmax)."""
    rng = np.random.default_rng(3)
    length, chunk = 8, 4
    qk = rng.normal(size=(2, length, HEADS, HEAD_DIM)).astype(np.float32)
    v = rng.normal(size=(2, length, HEADS, HEAD_DIM)).astype(np.float32)
    mask = np.ones((2, length), np.int32)
    mask[1, 5:] = 0
    rot = rng.normal(size=(HEADS, HEAD_DIM, num_hashes, 2)).astype(np.float32)
    num_chunks = num_hashes * length // chunk
    chunked = lsh_jit(qk, v, chunk_length=chunk, num_buckets=4, num_chunks_before=num_chunks - 1,
                      rotations=rot, attention_mask=mask, causal=causal).out
    full = lsh_jit(qk, v, chunk_length=length, attention_mask=mask, causal=causal).out
    dense = _masked_full_attention(qk, v, mask, causal)
    # Position 0 of a decoder only sees itself: compared loosely (see assert_matches_reference).
    rows = slice(1, None) if causal and num_hashes > 1 else slice(None)
    np.testing.assert_allclose(chunked[:, rows], full[:, rows], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(chunked, full, atol=1e-3, rtol=1e-2)
    np.testing.assert_allclose(full, dense, atol=1e-5, rtol=1e-5)


def test_single_bucket_sort_is_identity():
    """All tokens in one bucket with one hash: the sorted order is the original order, so LSH attention is
    local attention over chunks with the self mask (checked via a query whose window is known)."""
    rng = np.random.default_rng(4)
    length, chunk = 8, 4
    qk = rng.normal(size=(1, length, 1, HEAD_DIM)).astype(np.float32)
    v = rng.normal(size=(1, length, 1, HEAD_DIM)).astype(np.float32)
    buckets = np.zeros((1, 1, 1, length), np.int32)
    out = lsh_jit(qk, v, chunk_length=chunk, num_chunks_before=0, buckets=buckets).out
    # chunk 0 = positions 0..3 only: compare with full attention on the first half alone
    half = lsh_jit(qk[:, :chunk], v[:, :chunk], chunk_length=chunk).out
    np.testing.assert_allclose(out[:, :chunk], half, atol=1e-6, rtol=1e-6)


def test_fully_masked_query_attends_to_itself():
    rng = np.random.default_rng(5)
    qk = rng.normal(size=(1, 4, 1, HEAD_DIM)).astype(np.float32)
    v = rng.normal(size=(1, 4, 1, HEAD_DIM)).astype(np.float32)
    mask = np.array([[0, 0, 0, 0]])
    out = lsh_jit(qk, v, chunk_length=4, attention_mask=mask).out
    np.testing.assert_allclose(out, v, atol=1e-6)


def test_module_params_and_buckets_round_trip_without_gradient_through_hashing():
    module = LSHSelfAttention(num_heads=HEADS, head_dim=HEAD_DIM, chunk_length=4, num_buckets=4, num_hashes=2)
    x, mask = _inputs(2, 16, 3)
    boxed = jax.eval_shape(module.init, {"params": jax.random.key(0), "lsh": jax.random.key(1)}, x, mask)
    for name in ("query_key", "value"):
        kernel = boxed["params"][name]["kernel"]
        assert kernel.names == ("embed", "heads") and kernel.value.shape == (HIDDEN, HEADS * HEAD_DIM)
    assert set(boxed["params"]) == {"query_key", "value"}
    rng = np.random.default_rng(0)
    params = {"params": {n: {"kernel": rng.normal(size=(HIDDEN, HEADS * HEAD_DIM)).astype(np.float32) * 0.4}
                         for n in ("query_key", "value")}}

    @jax.jit
    def run(p, key):
        out, buckets, _ = module.apply(p, x, mask, rngs={"lsh": key})
        again, buckets_again, _ = module.apply(p, x, mask, buckets=buckets)
        loss_saved = lambda q: jnp.sum(module.apply(q, x, mask, buckets=buckets).out ** 2)  # noqa: E731
        loss_hashing = lambda q: jnp.sum(module.apply(q, x, mask, rngs={"lsh": key}).out ** 2)  # noqa: E731
        three_rounds = module.apply(p, x, mask, num_hashes=3, rngs={"lsh": key}).buckets  # HF's call override
        return (out, buckets, again, buckets_again, jax.grad(loss_saved)(p), jax.grad(loss_hashing)(p),
                three_rounds)

    out, buckets, again, buckets_again, g_saved, g_hash, three_rounds = run(params, key(2))
    assert buckets.shape == (2, HEADS, 2, 16) and buckets.dtype == jnp.int32
    assert three_rounds.shape == (2, HEADS, 3, 16)
    np.testing.assert_allclose(out, again, atol=1e-6)
    np.testing.assert_array_equal(buckets, buckets_again)
    chex.assert_trees_all_close(g_saved, g_hash, atol=1e-6)  # argmax/stop_gradient: hashing adds no gradient
    # The "lsh" key really drives the rotations: same key, same buckets; another key, other buckets.
    np.testing.assert_array_equal(run(params, key(2))[1], buckets)
    assert not np.array_equal(run(params, key(3))[1], buckets)


def test_bf16_compute_close_to_fp32():
    rng = np.random.default_rng(6)
    qk = rng.normal(size=(2, 16, HEADS, HEAD_DIM)).astype(np.float32)
    v = rng.normal(size=(2, 16, HEADS, HEAD_DIM)).astype(np.float32)
    rot = rng.normal(size=(HEADS, HEAD_DIM, 2, 2)).astype(np.float32)
    kw = dict(chunk_length=4, num_buckets=4, rotations=rot)
    ref = lsh_jit(qk, v, **kw)
    low = lsh_jit(jnp.asarray(qk, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16), **kw)
    assert low.out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(low.buckets, ref.buckets)  # hashing runs in fp32
    np.testing.assert_allclose(np.asarray(low.out, np.float32), ref.out, atol=0.1)


def test_dropout_is_keyed_and_inactive_when_deterministic():
    rng = np.random.default_rng(7)
    qk = rng.normal(size=(1, 8, 1, HEAD_DIM)).astype(np.float32)
    v = rng.normal(size=(1, 8, 1, HEAD_DIM)).astype(np.float32)
    b = np.zeros((1, 1, 1, 8), np.int32)
    kw = dict(chunk_length=4, buckets=b, dropout_rate=0.5)

    @jax.jit
    def run(key):
        dropped = lambda: lsh_attention(qk, v, dropout_rng=key, deterministic=False, **kw).out  # noqa: E731
        return lsh_attention(qk, v, **kw).out, dropped(), dropped()

    base, d1, d2 = run(key(0))
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, base)
    with pytest.raises(ValueError, match="dropout_rng"):
        lsh_attention(qk, v, deterministic=False, **kw)


# ------------------------------------------------------------------------------------------------- jit vs no-jit


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_matches_eager(self):
        rng = np.random.default_rng(8)
        qk = rng.normal(size=(2, 8, HEADS, HEAD_DIM)).astype(np.float32)
        v = rng.normal(size=(2, 8, HEADS, HEAD_DIM)).astype(np.float32)
        rot = rng.normal(size=(HEADS, HEAD_DIM, 2, 2)).astype(np.float32)
        mask = np.ones((2, 8), np.int32)
        mask[0, 6:] = 0

        @self.variant
        def run(qk, v, rot, mask):
            return lsh_attention(qk, v, chunk_length=2, num_buckets=4, num_chunks_after=1, rotations=rot,
                                 attention_mask=mask, causal=True)

        out, buckets, _ = run(qk, v, rot, mask)
        assert_matches_reference(out, qk, v, buckets, chunk_length=2, num_chunks_after=1, attention_mask=mask,
                                 causal=True)
        np.testing.assert_array_equal(buckets, lsh_hash_reference(qk, rot, 4, mask))


# ---------------------------------------------------------------------------------------------------------- errors


def test_invalid_arguments_raise_value_error():
    x = jnp.zeros((1, 8, HEADS, HEAD_DIM))
    good_rot = jnp.zeros((HEADS, HEAD_DIM, 1, 2))
    with pytest.raises(ValueError, match="rotations"):
        lsh_attention(x, x, chunk_length=4, num_buckets=4, rotations=jnp.zeros((HEADS, HEAD_DIM, 1, 3)))
    with pytest.raises(ValueError, match="rotations"):
        lsh_attention(x, x, chunk_length=4, num_buckets=4, rotations=jnp.zeros((HEADS + 1, HEAD_DIM, 1, 2)))
    with pytest.raises(ValueError, match="rotations"):
        lsh_attention(x, x, chunk_length=4, num_buckets=4)
    with pytest.raises(ValueError, match="num_buckets"):
        lsh_attention(x, x, chunk_length=4, num_buckets=5, rotations=good_rot)
    with pytest.raises(ValueError, match="num_buckets"):
        lsh_attention(x, x, chunk_length=4, num_buckets=(2, 3), rotations=good_rot)
    with pytest.raises(ValueError, match="num_buckets"):
        lsh_attention(x, x, chunk_length=4, rotations=good_rot)
    with pytest.raises(ValueError, match="length"):
        lsh_attention(x, x, chunk_length=3, num_buckets=4, rotations=good_rot)
    with pytest.raises(ValueError, match="chunk_length"):
        lsh_attention(x, x, chunk_length=0, num_buckets=4, rotations=good_rot)
    with pytest.raises(ValueError, match="num_chunks_before"):
        lsh_attention(x, x, chunk_length=4, num_buckets=4, rotations=good_rot, num_chunks_before=-1)
    with pytest.raises(ValueError, match="attention_mask"):
        lsh_attention(x, x, chunk_length=4, num_buckets=4, rotations=good_rot, attention_mask=jnp.ones((1, 7)))
    with pytest.raises(ValueError, match="buckets"):
        lsh_attention(x, x, chunk_length=4, buckets=jnp.zeros((1, HEADS, 1, 7), jnp.int32))
    with pytest.raises(ValueError, match="value"):
        lsh_attention(x, x[:, :4], chunk_length=4, num_buckets=4, rotations=good_rot)
    with pytest.raises(ValueError, match="length"):
        default_num_buckets(4, 4, 64)
    # raised before tracing: also under jit
    with pytest.raises(ValueError, match="rotations"):
        jax.jit(lambda a, r: lsh_attention(a, a, chunk_length=4, num_buckets=4, rotations=r))(
            x, jnp.zeros((HEADS, HEAD_DIM, 1, 4)))
    module = LSHSelfAttention(num_heads=HEADS, head_dim=HEAD_DIM, chunk_length=4, num_buckets=4)
    h = jnp.zeros((1, 8, HIDDEN))
    with pytest.raises(ValueError, match="rotations"):
        jax.eval_shape(lambda: module.init(key(0), h, rotations=jnp.zeros((HEADS, HEAD_DIM, 1, 1))))


@functools.partial(jax.jit, static_argnames=("causal", "before", "after"))
def _live_and_prefix(qk, v, rotations, mask, live, *, causal, before, after):
    """(the live-length call over the whole buffer, the plain call on the first ``live`` positions) for every
    ``live`` of the static menu; one compile per window setting."""
    options = dict(chunk_length=4, num_buckets=4, rotations=rotations, causal=causal, num_chunks_before=before,
                   num_chunks_after=after)
    return lsh_attention(qk, v, attention_mask=mask, live_length=live, **options).out


@functools.partial(jax.jit, static_argnames=("causal", "before", "after"))
def _prefix(qk, v, rotations, mask, *, causal, before, after):
    return lsh_attention(qk, v, chunk_length=4, num_buckets=4, rotations=rotations, attention_mask=mask,
                         causal=causal, num_chunks_before=before, num_chunks_after=after).out


@settings(max_examples=5, deadline=None)
@given(causal=st.booleans(), window=st.sampled_from([(1, 0), (2, 0), (1, 1)]), num_hashes=st.sampled_from([1, 3]),
       seed=st.integers(0, 2**31 - 1))
def test_live_length_is_the_attention_over_the_prefix(causal, window, num_hashes, seed):
    """Attention over the first P positions of a static 24-position buffer (what exact decoding runs) equals the
    attention over a length-P input, for every P: full attention up to one chunk, then chunked with the wrap to the
    previous round's last *live* chunk; padding inside the prefix, all positions beyond it masked."""
    before, after = window
    rng = np.random.default_rng(seed)
    qk, v = (jnp.asarray(rng.normal(size=(2, 24, HEADS, HEAD_DIM)), jnp.float32) for _ in range(2))
    rotations = jnp.asarray(rng.normal(size=(HEADS, HEAD_DIM, num_hashes, 2)), jnp.float32)
    for live in (3, 12, 20):
        real = live - (1 if live > 4 else 0)  # the last live position is padding when P > chunk
        mask = np.zeros((2, 24), np.int32)
        mask[:, :real] = 1
        mask[1, 0] = 0  # a padded token inside the prefix too
        got = _live_and_prefix(qk, v, rotations, jnp.asarray(mask), jnp.int32(live), causal=causal, before=before,
                               after=after)[:, :live]
        want = _prefix(qk[:, :live], v[:, :live], rotations, jnp.asarray(mask[:, :live]), causal=causal,
                       before=before, after=after)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5, err_msg=f"P={live}")


@pytest.mark.parametrize("causal,window,num_hashes,rate", [(True, (1, 0), 1, 0.0), (False, (1, 1), 2, 0.3)])
def test_blocked_loop_equals_whole_length(monkeypatch, causal, window, num_hashes, rate):
    """Past ``layers.local.BLOCK_LENGTH`` positions the chunked attention runs block by block (rematerialised);
    values and gradients equal the whole-length computation (``return_probs`` keeps that path), dropout included."""
    import layers.local

    monkeypatch.setattr(layers.local, "BLOCK_LENGTH", 32)  # 8 chunks of 8 per round: blocks of 4 chunks
    qk, v = (jax.random.normal(k, (2, 64, HEADS, HEAD_DIM)) for k in jax.random.split(key(0), 2))
    mask = jnp.asarray(np.random.RandomState(0).rand(2, 64) > 0.2, jnp.int32)
    rotations = jax.random.normal(key(1), (HEADS, HEAD_DIM, num_hashes, 2))
    kw = dict(chunk_length=8, num_buckets=4, num_chunks_before=window[0], num_chunks_after=window[1], causal=causal,
              attention_mask=mask, rotations=rotations, dropout_rate=rate, dropout_rng=key(2), deterministic=False)
    blocked = jax.jit(lambda qk, v: lsh_attention(qk, v, **kw).out)
    whole = jax.jit(lambda qk, v: lsh_attention(qk, v, return_probs=True, **kw).out)
    np.testing.assert_allclose(blocked(qk, v), whole(qk, v), atol=2e-6, rtol=1e-5)
    loss = lambda f: jax.grad(lambda qk, v: jnp.sum(jnp.sin(f(qk, v))), argnums=(0, 1))(qk, v)  # noqa: E731
    for got, want in zip(loss(blocked), loss(whole)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
