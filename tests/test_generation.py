"""Generation: greedy decoding through the Reformer cache equals argmax decoding by re-running the full forward
pass on the growing sequence; sampling with top_k=1 equals greedy; eos handling; top-p / temperature semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.generation import generate, process_logits, sample_token
from jaxmodels.reformer import ReformerConfig, ReformerModelWithLMHead

# Local layers span several chunks (chunk 4, look-back 1); the LSH layers (chunk 16) cover the whole decoded
# length, where the full pass is plain causal attention with the self-mask, so cache and full pass agree exactly.
CONFIG = ReformerConfig(
    vocab_size=24, hidden_size=16, num_attention_heads=2, attention_head_size=4, feed_forward_size=20,
    attn_layers=("local", "lsh", "local", "lsh"), local_attn_chunk_length=4, lsh_attn_chunk_length=16,
    num_hashes=2, num_buckets=4, is_decoder=True, axial_pos_shape=(4, 4), axial_pos_embds_dim=(8, 8),
    max_position_embeddings=16, hidden_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
    chunk_size_feed_forward=4, hash_seed=0, eos_token_id=None)
PROMPT, NEW = 3, 9


@pytest.fixture(scope="module")
def model():
    module = ReformerModelWithLMHead(CONFIG)
    params = jax.jit(lambda: module.init(jax.random.key(0, impl="rbg"),
                                         input_ids=jnp.ones((1, 1), jnp.int32))["params"])()
    # Larger-than-init weights make the logits far from ties, so argmax comparisons are meaningful.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1, impl="rbg"), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    prompt = jnp.asarray(np.random.RandomState(0).randint(1, CONFIG.vocab_size, (2, PROMPT)))
    return module, params, prompt


def test_cached_greedy_equals_full_forward(model):
    module, params, prompt = model
    ours = np.asarray(generate(module, params, prompt, max_new_tokens=NEW))
    assert ours.shape == (2, PROMPT + NEW)
    np.testing.assert_array_equal(ours[:, :PROMPT], prompt)
    # Re-run the full forward pass on the growing sequence and take the argmax of its last position. The model's
    # eval auto-padding would pad every length > 4 to 16 (pad ids, mask 0); doing that padding here gives one
    # compiled shape instead of one per length.
    full = jax.jit(lambda p, ids, mask: module.apply({"params": p}, input_ids=ids, attention_mask=mask).logits)
    seq = np.asarray(prompt)
    for _ in range(NEW):
        n = seq.shape[1]
        ids = np.zeros((2, 16), np.int64)
        ids[:, :n] = seq
        mask = (np.arange(16) < n)[None].repeat(2, 0).astype(np.int32)
        nxt = np.asarray(jnp.argmax(full(params, jnp.asarray(ids), jnp.asarray(mask))[:, n - 1], -1))
        seq = np.concatenate([seq, nxt[:, None]], 1)
    np.testing.assert_array_equal(ours, seq)
    assert len(set(seq[0, PROMPT:].tolist())) > 1  # a non-trivial continuation


def test_cached_logits_equal_full_forward(model):
    """The cache's logits (prefill, then one token at a time) equal the full pass position by position."""
    module, params, _ = model
    ids = jnp.asarray(np.random.RandomState(1).randint(1, CONFIG.vocab_size, (2, 12)))
    full = module.apply({"params": params}, input_ids=ids).logits
    cache = module.apply({"params": params}, 2, 12, method="init_cache")
    step = jax.jit(lambda p, x, c: module.apply({"params": p}, input_ids=x, cache=c))
    out = step(params, ids[:, :5], cache)
    steps = [out.logits]
    cache = out.cache
    for t in range(5, 12):
        out = step(params, ids[:, t:t + 1], cache)
        steps.append(out.logits)
        cache = out.cache
    assert int(cache["index"]) == 12
    np.testing.assert_allclose(np.concatenate(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_top_k_one_sampling_is_greedy_and_eos_pads(model):
    module, params, prompt = model
    greedy = np.asarray(generate(module, params, prompt, max_new_tokens=NEW))
    sampled = generate(module, params, prompt, max_new_tokens=NEW, do_sample=True, top_k=1, temperature=0.7,
                       rng=jax.random.key(3, impl="rbg"))
    np.testing.assert_array_equal(sampled, greedy)
    eos = int(greedy[0, PROMPT + 2])
    out = np.asarray(generate(module, params, prompt, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0))
    for row in range(2):
        gen = greedy[row, PROMPT:]
        hits = np.flatnonzero(gen == eos)
        stop = hits[0] + 1 if hits.size else NEW
        np.testing.assert_array_equal(out[row, PROMPT:PROMPT + stop], gen[:stop])
        assert (out[row, PROMPT + stop:] == 0).all()


def test_top_p_and_temperature_semantics():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = lambda **kw: np.isfinite(np.asarray(process_logits(logits, **kw)))[0]
    np.testing.assert_array_equal(kept(top_p=0.7), [True, True, False, False])
    np.testing.assert_array_equal(kept(top_p=0.5), [True, False, False, False])
    np.testing.assert_array_equal(kept(top_p=0.96), [True, True, True, True])
    np.testing.assert_array_equal(kept(top_k=3), [True, True, True, False])
    np.testing.assert_allclose(process_logits(logits, temperature=2.0), logits / 2.0, rtol=1e-6)
    # Draws under top_p=0.7 only hit the kept tokens, in proportion 0.5 : 0.3.
    draws = jax.jit(jax.vmap(lambda k: sample_token(jnp.repeat(logits, 1, 0), k, do_sample=True, top_p=0.7)))(
        jax.random.split(jax.random.key(0, impl="rbg"), 4000))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4)
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / counts.sum() - 0.625) < 0.04
    # A high temperature flattens the distribution: the second token becomes more frequent.
    hot = jax.jit(jax.vmap(lambda k: sample_token(logits, k, do_sample=True, temperature=5.0)))(
        jax.random.split(jax.random.key(1, impl="rbg"), 4000))
    hot_counts = np.bincount(np.asarray(hot).ravel(), minlength=4)
    assert hot_counts[3] / hot_counts.sum() > 0.15
    with pytest.raises(ValueError, match="top_p"):
        process_logits(logits, top_p=0.0)


def test_banned_ngram_tokens_equal_the_dictionary_twin():
    """The static-shape n-gram ban equals HF's per-row dictionary of n-grams, for every fill length and n."""
    from jaxmodels.generation import banned_ngram_tokens, banned_ngram_tokens_reference

    tokens = np.random.RandomState(0).randint(0, 4, (3, 12))  # 4 symbols: many repeated n-grams
    ban = jax.jit(banned_ngram_tokens, static_argnums=(2, 3))
    for n in (1, 2, 3):
        for length in range(1, 13):
            np.testing.assert_array_equal(ban(jnp.asarray(tokens), jnp.int32(length), n, 6),
                                          banned_ngram_tokens_reference(tokens, length, n, 6), err_msg=f"{n} {length}")
