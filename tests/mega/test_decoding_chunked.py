"""Cached decoding with chunking (Mega-chunk): step-by-step equality with our and HF's full pass where HF's own chunked
decoding crashes, left-padded prompts, and greedy ``jaxmodels.generation.generate``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.mega.decoding_loops import B, CASES, L, PROMPT, check_decoding, decode_steps
from tests.mega.pairs import BASE, build_pair
from tests.oracle import assert_close

@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("chunk")])
def test_chunked_cached_decoding_equals_full_pass(tmp_path, name):
    check_decoding(tmp_path, name)


def test_left_padded_batch_decodes_like_full_pass(tmp_path):
    """Left-padded prompts (padding mask 0) through the cache equal the full pass with the same mask, per step."""
    cfg = {**BASE, **CASES["chunk4-softmax"], "is_decoder": True, "bidirectional": False}
    _, module, params = build_pair(tmp_path, "MegaForCausalLM", cfg)
    rng = np.random.RandomState(1)
    ids = rng.randint(2, BASE["vocab_size"], (B, L))
    mask = np.ones((B, L), np.int32)
    mask[1, :3] = 0
    full = jax.jit(lambda p, x, m: module.apply({"params": p}, x, attention_mask=m).logits)(
        params, jnp.asarray(ids), jnp.asarray(mask))
    ours = decode_steps(module, params, ids, mask)
    assert np.all(np.isfinite(ours))
    assert_close(ours, full, 1e-5, "left-padded decoding vs full pass")


def test_generate_greedy_matches_full_pass_argmax(tmp_path):
    """``jaxmodels.generation.generate`` on chunked MegaForCausalLM: each greedy token is the argmax of our full pass.

    A causal model's logits at position t depend only on tokens <= t, so one fixed-length full pass (tokens so far,
    zeros after) gives every step's reference with a single compile.
    """
    from jaxmodels.generation import generate

    cfg = {**BASE, **CASES["chunk4-relu2"], "is_decoder": True, "bidirectional": False}
    _, module, params = build_pair(tmp_path, "MegaForCausalLM", cfg, qk_gain=4.0)
    prompt = np.random.RandomState(3).randint(2, BASE["vocab_size"], (B, PROMPT))
    out = np.asarray(generate(module, params, jnp.asarray(prompt), max_new_tokens=L - PROMPT))
    assert out.shape == (B, L) and np.array_equal(out[:, :PROMPT], prompt)
    full = jax.jit(lambda p, x: module.apply({"params": p}, x).logits)
    tokens = np.zeros((B, L), np.int32)
    tokens[:, :PROMPT] = prompt
    for t in range(PROMPT, L):
        tokens[:, t] = np.argmax(np.asarray(full(params, jnp.asarray(tokens)))[:, t - 1], axis=-1)
    np.testing.assert_array_equal(out, tokens)
