"""Chunked local attention: parity with HF ``LocalSelfAttention``, reference-twin properties, special cases."""

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
from layers.local import LocalSelfAttention, local_attention, local_attention_reference, look_adjacent

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import ReformerConfig  # noqa: E402
from transformers.models.reformer import modeling_reformer as hf_reformer  # noqa: E402

HIDDEN, HEADS, HEAD_DIM = 12, 2, 4

def key(seed):
    """PRNG keys for tests: the rbg implementation compiles in well under a second on CPU, threefry in ~8 s."""
    return jax.random.key(seed, impl="rbg")


local_jit = jax.jit(local_attention, static_argnames=(
    "chunk_length", "num_chunks_before", "num_chunks_after", "causal", "dropout_rate", "deterministic",
    "return_probs", "dtype"))


def _hf_layer(**overrides):
    kwargs = dict(
        hidden_size=HIDDEN, num_attention_heads=HEADS, attention_head_size=HEAD_DIM, local_attn_chunk_length=4,
        local_num_chunks_before=1, local_num_chunks_after=0, is_decoder=False,
        local_attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    config = ReformerConfig(**kwargs)
    layer = hf_reformer.LocalSelfAttention(config)
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for p in layer.parameters():  # non-default, larger than init so that the attention is far from uniform
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    return config, layer


def _ours(config, layer):
    module = LocalSelfAttention(
        num_heads=config.num_attention_heads, head_dim=config.attention_head_size,
        chunk_length=config.local_attn_chunk_length, num_chunks_before=config.local_num_chunks_before,
        num_chunks_after=config.local_num_chunks_after, causal=config.is_decoder,
    )
    params = {"params": {name: {"kernel": jnp.asarray(getattr(layer, name).weight.detach().numpy().T)}
                         for name in ("query", "key", "value")}}
    return module, params


def _inputs(batch, length, pad):
    rng = np.random.default_rng(length * 17 + pad)
    x = rng.normal(size=(batch, length, HIDDEN)).astype(np.float32)
    mask = np.ones((batch, length), np.int64)
    if pad:
        mask[-1, length - pad:] = 0
    return x, mask


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


PARITY_CASES = [
    dict(id="encoder-wrap", cfg=dict(local_attn_chunk_length=4), length=16, pad=0),
    dict(id="encoder-pad-ahead", cfg=dict(local_attn_chunk_length=4, local_num_chunks_after=1), length=16, pad=6),
    dict(id="decoder-pad", cfg=dict(local_attn_chunk_length=2, is_decoder=True), length=12, pad=3),
    dict(id="decoder-ahead", cfg=dict(local_attn_chunk_length=4, local_num_chunks_after=1, is_decoder=True),
         length=12, pad=0),
    dict(id="window-wider-than-sequence", cfg=dict(local_attn_chunk_length=2, local_num_chunks_before=2,
                                                   local_num_chunks_after=1), length=6, pad=2),
    dict(id="no-window-chunk8", cfg=dict(local_attn_chunk_length=8, local_num_chunks_before=0), length=16, pad=9),
    dict(id="full-path-encoder", cfg=dict(local_attn_chunk_length=16), length=12, pad=4),
    dict(id="full-path-decoder", cfg=dict(local_attn_chunk_length=8, is_decoder=True), length=8, pad=2),
]


@pytest.mark.parametrize("case", PARITY_CASES, ids=[c["id"] for c in PARITY_CASES])
def test_forward_matches_hf(case):
    config, layer = _hf_layer(**case["cfg"])
    layer.eval()
    x, mask = _inputs(2, case["length"], case["pad"])
    with torch.no_grad():
        ref = layer(torch.from_numpy(x), attention_mask=torch.from_numpy(mask), output_attentions=True)
    module, params = _ours(config, layer)
    out, probs = jax.jit(functools.partial(module.apply, return_probs=True))(params, x, mask)
    assert out.shape == (2, case["length"], HEADS * HEAD_DIM)
    assert _rel(out, ref.hidden_states.numpy()) < 1e-5
    assert np.asarray(probs).shape == tuple(ref.attention_probs.shape)
    np.testing.assert_allclose(probs, ref.attention_probs.numpy(), atol=1e-5)


def test_forward_without_mask_matches_hf():
    config, layer = _hf_layer(local_attn_chunk_length=4, local_num_chunks_after=1)
    layer.eval()
    x, _ = _inputs(1, 12, 0)
    with torch.no_grad():
        ref = layer(torch.from_numpy(x)).hidden_states.numpy()
    module, params = _ours(config, layer)
    assert _rel(jax.jit(module.apply)(params, x).out, ref) < 1e-5


GRAD_CASES = [PARITY_CASES[1], PARITY_CASES[2], PARITY_CASES[6]]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c["id"] for c in GRAD_CASES])
def test_gradients_match_hf(case):
    config, layer = _hf_layer(**case["cfg"])
    layer.train()  # dropout is 0
    x, mask = _inputs(2, case["length"], case["pad"])
    cot = np.random.default_rng(5).normal(size=(2, case["length"], HEADS * HEAD_DIM)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    out_t = layer(xt, attention_mask=torch.from_numpy(mask)).hidden_states
    (out_t * torch.from_numpy(cot)).sum().backward()

    module, params = _ours(config, layer)

    def loss(p, xx):
        return jnp.sum(module.apply(p, xx, mask, deterministic=False).out * cot)

    grads, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    for name in ("query", "key", "value"):
        assert _rel(grads["params"][name]["kernel"], getattr(layer, name).weight.grad.numpy().T) < 1e-4, name
    assert _rel(grad_x, xt.grad.numpy()) < 1e-4


# --------------------------------------------------------------------------------------- reference-twin properties

CONFIGS = [  # (length, chunk, before, after, causal)
    (8, 2, 1, 0, False), (8, 4, 1, 1, True), (12, 4, 2, 0, False), (8, 2, 0, 2, True), (6, 8, 1, 0, True),
    (6, 2, 3, 1, False),
]


@settings(max_examples=20, deadline=None)
@given(config=st.sampled_from(CONFIGS), seed=st.integers(0, 2**31 - 1), pad_fraction=st.sampled_from([0.0, 0.3, 0.8]))
def test_local_attention_matches_reference(config, seed, pad_fraction):
    length, chunk, before, after, causal = config
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(2, length, HEADS, HEAD_DIM)).astype(np.float32) * s for s in (2, 2, 1))
    mask = (rng.random((2, length)) >= pad_fraction).astype(np.int32)  # may leave windows with no valid key
    kw = dict(chunk_length=chunk, num_chunks_before=before, num_chunks_after=after, attention_mask=mask,
              causal=causal)
    got = local_jit(q, k, v, **kw).out
    np.testing.assert_allclose(got, local_attention_reference(q, k, v, **kw), atol=2e-5, rtol=1e-4)


def test_look_adjacent_is_circular():
    chunks = jnp.arange(4)[None, None, :, None] * 10 + jnp.arange(2)[None, None, None, :]  # [1, 1, 4, 2]
    window = look_adjacent(chunks, 1, 1)
    np.testing.assert_array_equal(window[0, 0, 0], [30, 31, 0, 1, 10, 11])
    np.testing.assert_array_equal(window[0, 0, 3], [20, 21, 30, 31, 0, 1])
    assert look_adjacent(chunks, 0, 0) is chunks


# ------------------------------------------------------------------------------------------------- special cases


@pytest.mark.parametrize("causal", [False, True])
def test_one_chunk_and_covering_window_equal_full_attention(causal):
    rng = np.random.default_rng(3)
    length = 8
    q, k, v = (rng.normal(size=(2, length, HEADS, HEAD_DIM)).astype(np.float32) for _ in range(3))
    mask = np.ones((2, length), np.int32)
    mask[1, 6:] = 0  # every query keeps at least key 0
    valid = jnp.asarray(mask).astype(bool)[:, None, None, :]
    if causal:
        valid = valid & jnp.tril(jnp.ones((length, length), bool))
    dense, _ = jax.jit(dot_product_attention)(q, k, v, mask=valid)
    one_chunk = local_jit(q, k, v, chunk_length=length, attention_mask=mask, causal=causal).out
    two_chunks = local_jit(q, k, v, chunk_length=4, num_chunks_before=1, attention_mask=mask, causal=causal).out
    np.testing.assert_allclose(one_chunk, dense, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(two_chunks, dense, atol=1e-5, rtol=1e-5)


def test_encoder_first_chunk_sees_last_chunk_decoder_does_not():
    """HF's circular look-back: in encoder mode the last chunk influences position 0; causal masking removes it."""
    config, layer = _hf_layer(local_attn_chunk_length=4)
    x, _ = _inputs(1, 12, 0)
    x2 = x.copy()
    x2[0, -1] += 5.0
    for causal in (False, True):
        module, params = _ours(config, layer)
        module = module.clone(causal=causal)
        run = jax.jit(module.apply)
        delta = np.abs(np.asarray(run(params, x).out - run(params, x2).out))
        assert (delta[0, 0] > 1e-4).any() == (not causal)
        assert delta[0, 4:8].max() == 0.0  # chunk 1 window = chunks 0, 1: never sees position 11


def test_params_logical_axes_and_dropout():
    module = LocalSelfAttention(num_heads=HEADS, head_dim=HEAD_DIM, chunk_length=4, dropout_rate=0.5)
    x, mask = _inputs(2, 8, 0)
    boxed = jax.eval_shape(module.init, jax.random.key(0), x, mask)  # metadata only, nothing compiled
    assert set(boxed["params"]) == {"query", "key", "value"}
    for name in ("query", "key", "value"):
        kernel = boxed["params"][name]["kernel"]
        assert kernel.names == ("embed", "heads") and kernel.value.shape == (HIDDEN, HEADS * HEAD_DIM)
    rng = np.random.default_rng(0)
    params = {"params": {n: {"kernel": rng.normal(size=(HIDDEN, HEADS * HEAD_DIM)).astype(np.float32) * 0.4}
                         for n in ("query", "key", "value")}}

    @jax.jit
    def run(key):
        apply = functools.partial(module.apply, params, x, mask, return_probs=True)
        return apply(), apply(deterministic=False, rngs={"dropout": key}), apply(deterministic=False,
                                                                                rngs={"dropout": key})

    (base, base_probs), (d1, probs), (d2, _) = run(key(1))
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, base)
    dropped = np.asarray(probs) == 0
    assert 0.3 < dropped.mean() < 0.7
    np.testing.assert_allclose(np.asarray(probs)[~dropped], 2 * np.asarray(base_probs)[~dropped], rtol=1e-5)


def test_fully_masked_window_sums_values_like_hf():
    """HF quirk reproduced: a chunk whose window holds only padding returns the sum of the window's values."""
    config, layer = _hf_layer(local_attn_chunk_length=4, local_num_chunks_before=0)
    layer.eval()
    x, mask = _inputs(1, 8, 4)  # chunk 1 (positions 4..7) is all padding and sees only itself
    with torch.no_grad():
        ref = layer(torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).hidden_states.numpy()
    module, params = _ours(config, layer)
    out = np.asarray(jax.jit(module.apply)(params, x, mask).out)
    value = x @ np.asarray(params["params"]["value"]["kernel"])
    np.testing.assert_allclose(out[0, 4:], np.broadcast_to(value[0, 4:].sum(0), (4, HEADS * HEAD_DIM)), rtol=1e-5)
    assert _rel(out, ref) < 1e-5


def test_bf16_compute_close_to_fp32():
    rng = np.random.default_rng(6)
    q, k, v = (rng.normal(size=(2, 8, HEADS, HEAD_DIM)).astype(np.float32) for _ in range(3))
    ref = local_jit(q, k, v, chunk_length=4).out
    low = local_jit(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)), chunk_length=4).out
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), ref, atol=0.1)


# ------------------------------------------------------------------------------------------------- jit vs no-jit


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_matches_eager(self):
        rng = np.random.default_rng(8)
        q, k, v = (rng.normal(size=(2, 8, HEADS, HEAD_DIM)).astype(np.float32) for _ in range(3))
        mask = np.ones((2, 8), np.int32)
        mask[0, 5:] = 0
        kw = dict(chunk_length=2, num_chunks_before=1, num_chunks_after=1)

        @self.variant
        def run(q, k, v, mask):
            return local_attention(q, k, v, attention_mask=mask, causal=True, **kw).out

        want = local_attention_reference(q, k, v, attention_mask=mask, causal=True, **kw)
        np.testing.assert_allclose(run(q, k, v, mask), want, atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------- errors


def test_invalid_arguments_raise_value_error():
    x = jnp.zeros((1, 8, HEADS, HEAD_DIM))
    with pytest.raises(ValueError, match="length"):
        local_attention(x, x, x, chunk_length=3)
    with pytest.raises(ValueError, match="chunk_length"):
        local_attention(x, x, x, chunk_length=0)
    with pytest.raises(ValueError, match="num_chunks_after"):
        local_attention(x, x, x, chunk_length=4, num_chunks_after=-1)
    with pytest.raises(ValueError, match="attention_mask"):
        local_attention(x, x, x, chunk_length=4, attention_mask=jnp.ones((2, 8)))
    with pytest.raises(ValueError, match="key/value"):
        local_attention(x, x[:, :4], x, chunk_length=4)
    with pytest.raises(ValueError, match="query"):
        local_attention(x[0], x[0], x[0], chunk_length=4)
    with pytest.raises(ValueError, match="dropout_rate"):
        local_attention(x, x, x, chunk_length=4, dropout_rate=1.0)
    with pytest.raises(ValueError, match="dropout_rng"):
        local_attention(x, x, x, chunk_length=4, dropout_rate=0.1, deterministic=False)
    with pytest.raises(ValueError, match="length"):  # raised before tracing, also under jit
        jax.jit(lambda a: local_attention(a, a, a, chunk_length=3))(x)


@pytest.mark.parametrize("causal,window,rate", [(True, (1, 0), 0.0), (False, (2, 1), 0.3)])
def test_blocked_loop_equals_whole_length(monkeypatch, causal, window, rate):
    """Past ``BLOCK_LENGTH`` positions the attention runs block by block (rematerialised); values and gradients
    equal the whole-length computation (``return_probs`` keeps that path), dropout included."""
    import layers.local

    monkeypatch.setattr(layers.local, "BLOCK_LENGTH", 32)  # 8 chunks of 8: blocks of 4 chunks
    q, k, v = (jax.random.normal(s, (2, 64, 2, 4)) for s in jax.random.split(jax.random.key(0, impl="rbg"), 3))
    mask = jnp.asarray(np.random.RandomState(0).rand(2, 64) > 0.2, jnp.int32)
    kw = dict(chunk_length=8, num_chunks_before=window[0], num_chunks_after=window[1], causal=causal,
              attention_mask=mask, dropout_rate=rate, dropout_rng=jax.random.key(1, impl="rbg"), deterministic=False)
    blocked = jax.jit(lambda q, k, v: local_attention(q, k, v, **kw).out)
    whole = jax.jit(lambda q, k, v: local_attention(q, k, v, return_probs=True, **kw).out)
    np.testing.assert_allclose(blocked(q, k, v), whole(q, k, v), atol=2e-6, rtol=1e-5)
    grads = lambda f: jax.grad(lambda *x: jnp.sum(jnp.sin(f(*x))), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    for got, want in zip(grads(blocked), grads(whole)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
