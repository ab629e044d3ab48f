"""RemBertForCausalLM decoding through the static cache: prefill then one token at a time equals the full pass
(ours and HF's) at every position, with and without cross-attention; greedy ``jaxmodels.generation.generate``
equals HF's greedy ``generate`` token for token (one prompt, and a batch of two, also cross-attending)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.generation import generate
from tests.oracle import assert_close, require_torch
from tests.rembert.pairs import BASE, build_pair, config_for

L, PROMPT, SLOTS = 9, 4, 12  # spare slots: unfilled ones must stay invisible
CROSS = config_for("RemBertForCausalLM", {**BASE, "cross": True})
PLAIN = {**config_for("RemBertForCausalLM", BASE), "hidden_act": "gelu_new"}


@pytest.mark.parametrize("cfg", [PLAIN, CROSS], ids=["plain", "cross-attention"])
def test_cached_decoding_equals_the_full_pass(cfg):
    torch = require_torch()
    hf_model, module, params = build_pair("RemBertForCausalLM", cfg)
    rng = np.random.RandomState(0)
    ids = rng.randint(3, BASE["vocab_size"], (2, L))
    enc = {}
    if cfg["add_cross_attention"]:
        enc = dict(encoder_hidden_states=rng.randn(2, 5, BASE["hidden_size"]).astype(np.float32),
                   encoder_attention_mask=np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    jenc = {k: jnp.asarray(v) for k, v in enc.items()}
    full = jax.jit(lambda p, x: module.apply({"params": p}, x, **jenc).logits)(params, jnp.asarray(ids))
    theirs = hf_model(torch.tensor(ids), **{k: torch.tensor(v) for k, v in enc.items()}).logits
    assert_close(full, theirs, 1e-5, "full pass vs HF")

    call = jax.jit(lambda p, x, c, e: module.apply({"params": p}, x, cache=c, **e))
    cache = module.apply({"params": params}, 2, SLOTS, method="init_cache")
    out = call(params, jnp.asarray(ids[:, :PROMPT]), cache, jenc)  # the encoder's keys are stored here
    steps, cache = [out.logits], out.cache
    for t in range(PROMPT, L):
        out = call(params, jnp.asarray(ids[:, t:t + 1]), cache, {})  # ... and reused from the cache here
        steps.append(out.logits)
        cache = out.cache
    assert int(cache.index) == L and bool(cache.mask[:, :L].all()) and not bool(cache.mask[:, L:].any())
    assert (cache.cross_key is not None) == bool(enc)
    cached = jnp.concatenate(steps, axis=1)
    # Logits within 1e-5 of both full passes at every position.
    assert_close(cached, full, 1e-5, "cached vs our full pass")
    assert_close(cached, theirs, 1e-5, "cached vs HF full pass")


@pytest.mark.parametrize("batch,cfg", [(1, PLAIN), (2, PLAIN), (2, CROSS)], ids=["1", "2", "2-cross-attention"])
def test_greedy_generate_equals_hf(batch, cfg):
    """Encoder states go to every call, as generate passes its model kwargs; the cache keeps the first ones."""
    torch = require_torch()
    hf_model, module, params = build_pair("RemBertForCausalLM", cfg)
    rng = np.random.RandomState(batch)
    prompt = rng.randint(3, BASE["vocab_size"], (batch, PROMPT))
    enc = {}
    if cfg["add_cross_attention"]:
        enc = dict(encoder_hidden_states=rng.randn(batch, 5, BASE["hidden_size"]).astype(np.float32),
                   encoder_attention_mask=(np.arange(5) < np.array([[5], [3]])).astype(np.int64))
    new = SLOTS - PROMPT
    ours = np.asarray(generate(module, params, jnp.asarray(prompt), max_new_tokens=new,
                               eos_token_id=cfg["eos_token_id"], pad_token_id=cfg["pad_token_id"],
                               **{k: jnp.asarray(v) for k, v in enc.items()}))
    theirs = hf_model.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                               max_new_tokens=new, do_sample=False,
                               **{k: torch.tensor(v) for k, v in enc.items()}).numpy()
    # HF stops once every row has emitted eos; the rest is padding in ours.
    theirs = np.pad(theirs, ((0, 0), (0, ours.shape[1] - theirs.shape[1])), constant_values=cfg["pad_token_id"])
    np.testing.assert_array_equal(ours, theirs)
    assert len(set(ours[0, PROMPT:].tolist())) > 1  # a non-trivial continuation
