"""Decoding helpers of the MEGA tests: our prefill + single-token loop through the cache, HF's incremental loop,
and the check that ours equals both full passes while HF's own incremental decoding does not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.mega.pairs import BASE, build_pair
from tests.oracle import assert_close, rel_err, require_torch

B, L, PROMPT = 2, 12, 5  # the prompt crosses a chunk boundary at chunk_size 4
CASES = {
    "softmax": dict(attention_activation="softmax", relative_positional_bias="rotary"),
    "laplace": dict(attention_activation="laplace", relative_positional_bias="simple"),
    "relu2": dict(attention_activation="relu2", relative_positional_bias="rotary"),
    "chunk4-softmax": dict(use_chunking=True, chunk_size=4, attention_activation="softmax",
                           relative_positional_bias="simple"),
    "chunk4-relu2": dict(use_chunking=True, chunk_size=4, attention_activation="relu2",
                         relative_positional_bias="rotary"),
}


def decode_steps(module, params, ids, mask=None, max_length=L):
    """Logits of our prefill (first PROMPT tokens) and then single-token steps, concatenated: ``[b, l, vocab]``."""
    prefill = jax.jit(lambda p, c, x, m: module.apply({"params": p}, x, attention_mask=m, cache=c))
    step = jax.jit(lambda p, c, x, m: module.apply({"params": p}, x, attention_mask=m, cache=c))
    cache = module.apply({"params": params}, ids.shape[0], max_length, method="init_cache")
    mask = np.ones(ids.shape, np.int32) if mask is None else mask
    out = prefill(params, cache, jnp.asarray(ids[:, :PROMPT]), jnp.asarray(mask[:, :PROMPT]))
    logits, cache = [out.logits], out.cache
    for t in range(PROMPT, ids.shape[1]):
        out = step(params, cache, jnp.asarray(ids[:, t:t + 1]), jnp.asarray(mask[:, t:t + 1]))
        logits.append(out.logits)
        cache = out.cache
    assert int(cache.index) == ids.shape[1]
    return np.concatenate([np.asarray(x) for x in logits], axis=1)


def hf_incremental(hf_model, ids):
    torch = require_torch()
    t = torch.tensor(ids)
    out = hf_model(t[:, :PROMPT], use_cache=True)
    logits, past = [out.logits], out.past_key_values
    for i in range(PROMPT, ids.shape[1]):
        out = hf_model(t[:, i:i + 1], past_key_values=past, use_cache=True)
        logits.append(out.logits)
        past = out.past_key_values
    return torch.cat(logits, 1).detach().numpy()


def check_decoding(tmp_path, name) -> dict:
    """Ours (prefill + steps) vs our and HF's full pass; HF's incremental decoding shown wrong. Returns the errors."""
    torch = require_torch()
    cfg = {**BASE, **CASES[name], "is_decoder": True, "bidirectional": False}
    hf_model, module, params = build_pair(tmp_path, "MegaForCausalLM", cfg, qk_gain=8.0)
    ids = np.random.RandomState(0).randint(2, BASE["vocab_size"], (B, L))

    full = jax.jit(lambda p, x: module.apply({"params": p}, x).logits)(params, jnp.asarray(ids))
    hf_full = hf_model(torch.tensor(ids), use_cache=False).logits
    assert_close(full, hf_full, 1e-5, "full pass vs HF")
    # Non-chunked caches get spare slots (max_length > L): unfilled slots must not leak into attention.
    ours = decode_steps(module, params, ids, max_length=L if cfg.get("use_chunking") else 2 * L)
    err_ours = assert_close(ours, full, 1e-5, "cached decoding vs our full pass")
    assert_close(ours, hf_full, 1e-5, "cached decoding vs HF full pass")

    # The reference fails here: element attention decodes with the wrong normaliser, chunked decoding crashes.
    errs = {"ours_vs_full": err_ours}
    if cfg.get("use_chunking"):
        with pytest.raises(RuntimeError):
            hf_incremental(hf_model, ids)
    elif cfg["attention_activation"] != "softmax":
        errs["hf_incremental_vs_hf_full"] = err_hf = rel_err(hf_incremental(hf_model, ids), hf_full)
        assert err_hf > 1e-3 and err_hf > 100 * err_ours, (err_hf, err_ours)
    return errs
