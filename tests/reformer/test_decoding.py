"""Reformer decoding that equals the full pass, in the hard regime: LSH chunks far shorter than prompt + generated
length, several hash rounds, factorized buckets, local + LSH mixes, a wider look-back, padded prompts.

The full pass over a prefix is the reference: at every step, greedy ``generate`` picks the argmax of the eval
forward pass over the tokens so far, and the cached logits equal that pass's logits at the new position. (The
pass over the *whole* final sequence is not a reference any left-to-right decoder can meet: chunked LSH attention
lets later tokens move earlier ones between chunks; a test below shows it.) The HF-style ``decoding="incremental"``
cache is shown to be an approximation there, and the first generated token equals HF's with injected rotations.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.generation import generate
from jaxmodels.reformer import ReformerConfig, ReformerModelWithLMHead
from tests.oracle import require_torch

BASE = dict(vocab_size=24, hidden_size=16, num_attention_heads=2, attention_head_size=8, feed_forward_size=20,
            is_decoder=True, axial_pos_embds=False, max_position_embeddings=32, hidden_dropout_prob=0.0,
            local_attention_probs_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0, eos_token_id=None,
            local_attn_chunk_length=4, lsh_attn_chunk_length=4)
CONFIGS = {
    # chunk 4 against a 17-token sequence, two hash rounds: what the user met.
    "local-lsh-2-rounds": dict(attn_layers=("local", "lsh", "local", "lsh"), num_hashes=2, num_buckets=4),
    "lsh-factorized-3-rounds": dict(attn_layers=("lsh", "lsh"), num_hashes=3, num_buckets=(2, 4)),
    "lsh-look-back-2": dict(attn_layers=("lsh", "local"), num_hashes=1, num_buckets=8, lsh_num_chunks_before=2,
                            local_attn_chunk_length=8),
}
PROMPT, NEW = 5, 12


@functools.cache
def _model(name: str, decoding: str = "exact"):
    config = ReformerConfig(**{**BASE, **CONFIGS[name]})
    module = ReformerModelWithLMHead(config, decoding=decoding)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), input_ids=jnp.ones((1, 1), jnp.int32))["params"])
    # Larger-than-init weights: logits far from ties, so argmax comparisons are meaningful.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    rotations = jnp.asarray(np.random.RandomState(2).randn(*config.rotations_shape(32)), jnp.float32)
    return module, params, rotations


@functools.cache
def _full_pass(name: str):
    """The eval forward pass (logits), one compile per padded length."""
    module, _, _ = _model(name)
    return jax.jit(lambda p, ids, mask, rot: module.apply({"params": p}, input_ids=ids, attention_mask=mask,
                                                          lsh_rotations=rot).logits)


def _prefix_logits(name, params, rotations, ids, mask, n):
    """Logits of the full pass over the first ``n`` tokens at position ``n - 1``, padded as the model pads in
    eval (to a multiple of the chunk lcm, pad id 0 and mask 0), done here so lengths share compiles."""
    config = _model(name)[0].config
    padded = n if n % config.lcm_chunk_length == 0 else (n // config.lcm_chunk_length + 1) * config.lcm_chunk_length
    ids_p = np.zeros((ids.shape[0], padded), np.int32)
    mask_p = np.zeros((ids.shape[0], padded), np.int32)
    ids_p[:, :n], mask_p[:, :n] = ids[:, :n], mask[:, :n]
    return np.asarray(_full_pass(name)(params, jnp.asarray(ids_p), jnp.asarray(mask_p), rotations))[:, n - 1]


def _prompt(padded: bool):
    rng = np.random.RandomState(3)
    ids = rng.randint(1, BASE["vocab_size"], (2, PROMPT)).astype(np.int32)
    mask = np.ones_like(ids)
    if padded:  # row 1 is left-padded by two: its first tokens are padding the model must ignore
        mask[1, :2] = 0
        ids[1, :2] = 0
    return ids, mask


@pytest.mark.parametrize("name,padded", [("local-lsh-2-rounds", True), ("lsh-factorized-3-rounds", False),
                                         ("lsh-look-back-2", True)])
def test_greedy_generate_is_the_full_pass_at_every_step(name, padded):
    module, params, rotations = _model(name)
    ids, mask = _prompt(padded)
    out = np.asarray(generate(module, params, jnp.asarray(ids), max_new_tokens=NEW, lsh_rotations=rotations,
                              attention_mask=jnp.asarray(mask)))
    full_mask = np.concatenate([mask, np.ones((2, NEW), np.int32)], axis=1)
    want = [np.argmax(_prefix_logits(name, params, rotations, out, full_mask, n), -1)
            for n in range(PROMPT, PROMPT + NEW)]
    np.testing.assert_array_equal(out[:, PROMPT:], np.stack(want, 1))
    assert len(set(out[:, PROMPT:].ravel().tolist())) > 1  # a non-trivial continuation


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_logits_are_the_full_pass_logits(name):
    module, params, rotations = _model(name)
    ids = np.random.RandomState(4).randint(1, BASE["vocab_size"], (2, PROMPT + NEW)).astype(np.int32)
    mask = np.ones_like(ids)
    step = jax.jit(lambda p, x, c: module.apply({"params": p}, input_ids=x, cache=c, lsh_rotations=rotations))
    cache = module.init_cache(2, PROMPT + NEW)
    out = step(params, jnp.asarray(ids[:, :PROMPT]), cache)
    np.testing.assert_allclose(out.logits[:, -1], _prefix_logits(name, params, rotations, ids, mask, PROMPT),
                               rtol=1e-5, atol=1e-5)
    cache = out.cache
    for n in range(PROMPT + 1, PROMPT + NEW + 1):
        out = step(params, jnp.asarray(ids[:, n - 1:n]), cache)
        cache = out.cache
        np.testing.assert_allclose(out.logits[:, -1], _prefix_logits(name, params, rotations, ids, mask, n),
                                   rtol=1e-5, atol=1e-5, err_msg=f"position {n - 1}")


def test_incremental_cache_is_an_approximation_where_exact_is_not():
    """The HF-style cache (decoding="incremental") drifts from the full pass once the text outgrows an LSH chunk;
    the exact mode does not (the previous test). What today's default must never do again."""
    name = "local-lsh-2-rounds"
    _, params, rotations = _model(name)
    approx, _, _ = _model(name, "incremental")
    ids, mask = _prompt(False)
    out = np.asarray(generate(approx, params, jnp.asarray(ids), max_new_tokens=NEW, lsh_rotations=rotations))
    full_mask = np.ones_like(out)
    want = np.stack([np.argmax(_prefix_logits(name, params, rotations, out, full_mask, n), -1)
                     for n in range(PROMPT, PROMPT + NEW)], 1)
    assert (out[:, PROMPT:] != want).any()


def test_the_whole_sequence_pass_is_not_causal_in_its_chunks():
    """Why the reference is the pass over the prefix: over the whole sequence, a later token with a smaller bucket
    moves an earlier one to another chunk, so the earlier position's output changes with the future."""
    name = "local-lsh-2-rounds"
    _, params, rotations = _model(name)
    ids = np.random.RandomState(5).randint(1, BASE["vocab_size"], (2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    whole = np.asarray(_full_pass(name)(params, jnp.asarray(ids), jnp.asarray(mask), rotations))
    moved = [n for n in range(5, 16) if not np.allclose(whole[:, n - 1], _prefix_logits(name, params, rotations,
                                                                                          ids, mask, n), atol=1e-4)]
    assert moved, "some position's logits should depend on later tokens"


def test_first_generated_token_equals_hf():
    """The prompt goes through the full pass, so the first new token is HF's (HF's rotations injected: it re-seeds
    with hash_seed before every hash, so every LSH layer uses torch.randn of the rotation shape)."""
    torch = require_torch()
    from transformers import ReformerConfig as HFConfig
    from transformers import ReformerModelWithLMHead as HFModel

    from jaxmodels.reformer.convert import key_fn
    from jaxmodels.hf_io import params_to_state_dict

    name = "local-lsh-2-rounds"
    module, params, _ = _model(name)
    config = module.config
    hf = HFModel(HFConfig(**{**config.to_hf_dict(), "hash_seed": 7})).eval()
    state = {k: torch.tensor(v) for k, v in params_to_state_dict(params, key_fn(config)).items()}
    hf.load_state_dict(state, strict=False)
    torch.manual_seed(7)
    rotations = jnp.asarray(torch.randn(config.rotations_shape(PROMPT + 3)).numpy())
    ids, _ = _prompt(False)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(ids, dtype=torch.long), max_new_tokens=1, do_sample=False,
                             num_hashes=config.num_hashes).numpy()
    ours = np.asarray(generate(module, params, jnp.asarray(ids), max_new_tokens=1, lsh_rotations=rotations))
    np.testing.assert_array_equal(ours, theirs)


def test_generation_within_one_chunk_is_the_full_pass():
    """Prompt + new tokens shorter than every chunk: the buffer is not a multiple of the chunk length and the
    attention is full (the quickstart's short samples; this once raised a chunk-multiple error)."""
    config = ReformerConfig(**{**BASE, **CONFIGS["local-lsh-2-rounds"], "local_attn_chunk_length": 16,
                               "lsh_attn_chunk_length": 16})
    module = ReformerModelWithLMHead(config)
    _, params, rotations = _model("local-lsh-2-rounds")
    ids, mask = _prompt(padded=True)
    new = 6  # 5 + 6 = 11 slots, within one chunk of 16
    out = np.asarray(generate(module, params, jnp.asarray(ids), max_new_tokens=new, lsh_rotations=rotations,
                              attention_mask=jnp.asarray(mask)))
    full_mask = np.concatenate([mask, np.ones((2, new), np.int32)], axis=1)
    for n in range(PROMPT, PROMPT + new):
        logits = module.apply({"params": params}, input_ids=jnp.asarray(out[:, :n]),
                              attention_mask=jnp.asarray(full_mask[:, :n]), lsh_rotations=rotations).logits
        np.testing.assert_array_equal(out[:, n], np.argmax(np.asarray(logits[:, -1]), -1), err_msg=f"step {n}")
