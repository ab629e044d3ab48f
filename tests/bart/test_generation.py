"""BART generation against HF PyTorch ``generate`` (4.46.3), token for token, and cached decoding against the full
pass.

The random model (untied head, an eos logit bias) is chosen so that greedy rows stop at different steps (one runs to
``max_length``), beam search differs from greedy, and the encoder batch is padded. Beam-search options that are
traced (``length_penalty``, ``early_stopping``, ``min_length``, forced BOS / EOS) share one compiled program, and
options a call leaves out come from the config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from jaxmodels.generation import generate
from tests.bart.pairs import BASE, EOS, PAD, build_pair, random_params
from tests.oracle import assert_close, require_torch

VOCAB = 48
GEN = {**BASE, "vocab_size": VOCAB, "encoder_attention_heads": 4, "decoder_attention_heads": 2, "decoder_layers": 2,
       "max_position_embeddings": 32, "forced_eos_token_id": None, "tie_word_embeddings": False}
NEW = 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(HF model, ours, params, encoder ids [3, 9], mask): row 1 padded after its eos."""
    hf_model, module, params = build_pair(tmp_path_factory.mktemp("bart_generation"), "BartForConditionalGeneration",
                                          GEN, seed=2, eos_logit_bias=3.0)
    rng = np.random.RandomState(0)
    ids = rng.randint(4, VOCAB, (3, 9))
    ids[:, 0], ids[:, -1] = 0, EOS
    mask = np.ones_like(ids)
    ids[1, 5], ids[1, 6:], mask[1, 6:] = EOS, PAD, 0
    return hf_model, module, params, ids, mask


def _hf_generate(pair, **kwargs) -> np.ndarray:
    torch = require_torch()
    hf_model, _, _, ids, mask = pair
    with torch.no_grad():
        return hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs).numpy()


def _ours(pair, **kwargs) -> np.ndarray:
    _, module, params, ids, mask = pair
    return np.asarray(generate(module, params, jnp.asarray(ids), attention_mask=jnp.asarray(mask), **kwargs))


def _assert_same(ours: np.ndarray, theirs: np.ndarray, max_length: int):
    """HF cuts its rows to the longest; ours are ``max_length`` long, pad after the end."""
    assert ours.shape == (theirs.shape[0], max_length)
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    assert (ours[:, theirs.shape[1]:] == PAD).all()


def _eos_steps(sequences: np.ndarray) -> list:
    return [int(np.flatnonzero(row[1:] == EOS)[0]) + 1 if (row[1:] == EOS).any() else None for row in sequences]


def test_greedy_equals_hf(pair):
    theirs = _hf_generate(pair, max_new_tokens=NEW, min_new_tokens=2)
    _assert_same(_ours(pair, max_new_tokens=NEW, min_new_tokens=2), theirs, 1 + NEW)
    steps = _eos_steps(theirs)
    assert None in steps and len(set(steps)) == 3, steps  # rows stop at different steps, one never stops


BEAM_OPTIONS = {
    "early_stopping=False": dict(),
    "early_stopping=True-lp2": dict(early_stopping=True, length_penalty=2.0),
    "never-lp0.5-forced_bos_eos": dict(early_stopping="never", length_penalty=0.5, forced_bos_token_id=0,
                                       forced_eos_token_id=EOS),
}


@pytest.mark.parametrize("name", list(BEAM_OPTIONS))
def test_beam_search_equals_hf(pair, name):
    """Options left out come from the config (here num_beams, max_length, min_length), as HF's generation_config."""
    _, module, params, ids, mask = pair
    configured = module.clone(config=module.config.replace(num_beams=3, max_length=1 + NEW, min_length=3))
    ours = np.asarray(generate(configured, params, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                               **BEAM_OPTIONS[name]))
    theirs = _hf_generate(pair, max_new_tokens=NEW, min_new_tokens=2, num_beams=3, **BEAM_OPTIONS[name])
    _assert_same(ours, theirs, 1 + NEW)
    if name == "early_stopping=True-lp2":  # the scanned decoder (split_decoding=False) decodes the same
        scanned = generate(configured.clone(split_decoding=False), params, jnp.asarray(ids),
                           attention_mask=jnp.asarray(mask), **BEAM_OPTIONS[name])
        np.testing.assert_array_equal(scanned, ours)
    if name == "early_stopping=False":
        greedy = _hf_generate(pair, max_new_tokens=NEW, min_new_tokens=2)
        assert theirs.shape != greedy.shape or (theirs != greedy).any()
        assert len(set(_eos_steps(theirs))) > 1


@pytest.mark.parametrize("num_beams", [1, 2])
def test_no_repeat_ngram_equals_hf(pair, num_beams):
    kwargs = dict(max_new_tokens=NEW, num_beams=num_beams, no_repeat_ngram_size=2, min_new_tokens=4)
    ours = _ours(pair, **kwargs)
    _assert_same(ours, _hf_generate(pair, **kwargs), 1 + NEW)
    for row in ours:  # no bigram twice
        row = row[:np.flatnonzero(row == PAD)[0]] if (row == PAD).any() else row
        bigrams = list(zip(row[:-1].tolist(), row[1:].tolist()))
        assert len(bigrams) == len(set(bigrams))


def test_sampling_top_k_one_is_greedy(pair):
    greedy = _ours(pair, max_new_tokens=NEW)
    sampled = _ours(pair, max_new_tokens=NEW, do_sample=True, top_k=1, temperature=0.5, rng=jax.random.key(0))
    np.testing.assert_array_equal(sampled, greedy)


def test_cached_decoding_equals_full_pass(pair):
    """``decode`` with a cache for 2 beams per example (cross keys/values per example, not repeated; a 3-token prefix,
    then one token at a time, spare slots) equals the full decoder pass on the repeated batch, and HF's. (The module's
    default splits the decoder per layer; the scanned decoder, ``split_decoding=False``, is checked through beam
    search above.)"""
    torch = require_torch()
    hf_model, module, params, ids, mask = pair
    dec = np.random.RandomState(1).randint(3, VOCAB, (3, 7))
    dec[:, 0] = EOS
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          decoder_input_ids=torch.tensor(dec)).logits

    @jax.jit
    def run(p, ids, mask, dec):
        v = {"params": p}
        encoded = module.apply(v, ids, mask, method="encode")
        full = module.apply(v, dec, encoded, mask, method="decode").logits
        rows = jnp.repeat(dec, 2, axis=0)
        cache = module.apply(v, rows.shape[0], 10, encoded.last_hidden_state, mask, method="init_cache")
        out = module.apply(v, rows[:, :3], cache=cache, method="decode")
        steps = [out.logits]
        for t in range(3, dec.shape[1]):
            out = module.apply(v, rows[:, t:t + 1], cache=out.cache, method="decode")
            steps.append(out.logits)
        return full, jnp.concatenate(steps, axis=1), out.cache

    full, cached, cache = run(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    assert_close(full, theirs, 1e-5, "decode (full pass) vs HF")
    # The default cache holds one buffer per decoder layer (split_decoding): cross keys per example, self keys per row.
    assert len(cache.cross_key) == len(cache.self_key) == module.config.decoder_layers
    assert cache.cross_key[0].shape[0] == 3 and cache.self_key[0].shape[0] == 6 and int(cache.index) == dec.shape[1]
    assert_close(cached, np.repeat(np.asarray(theirs), 2, axis=0), 1e-5, "cached decoding, 2 beams per example")


def test_causal_lm_decoding_through_the_decoder_only_protocol():
    """``BartForCausalLM`` (no encoder states) decodes through ``generate``'s decoder-only path: each generated token
    is the argmax of the full causal pass over the tokens before it."""
    config = {**GEN, "model_type": "bart", "architectures": ["BartForCausalLM"]}
    module = jaxmodels.from_config(config)
    params = random_params(module)
    prompt = jnp.asarray(np.random.RandomState(2).randint(3, VOCAB, (2, 3)))
    out = np.asarray(generate(module, params, prompt, max_new_tokens=5))
    np.testing.assert_array_equal(out[:, :3], prompt)
    # Causal: the logits at position t - 1 of one full pass over all 8 tokens see tokens < t only.
    full = np.asarray(jax.jit(lambda p, x: module.apply({"params": p}, x).logits)(params, jnp.asarray(out)))
    np.testing.assert_array_equal(out[:, 3:], full[:, 2:-1].argmax(-1))
    assert len(set(out[:, 3:].ravel().tolist())) > 1
