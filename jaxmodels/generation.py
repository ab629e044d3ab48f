"""Jit-compiled autoregressive decoding (greedy and sampling) over a static cache, shared by every decoder family.

Protocol a decoder head module implements (Reformer does; BART, MEGA, RemBERT follow the same):

- ``init_cache(self, batch_size: int, max_length: int) -> cache``: a pytree of static shapes that carries its own
  fill index; callable without params as ``module.apply({"params": p}, B, T, method="init_cache")``.
- ``module.apply({"params": p}, input_ids=ids [B, t], cache=cache, **model_kwargs)`` treats ``ids`` as the next
  ``t`` tokens after those already in the cache and returns the head's usual output (with ``logits [B, t, V]``)
  plus a ``cache`` field holding the updated cache (``None`` when called without a cache).

``generate`` prefills the whole prompt in one call (with the prompt's ``attention_mask``, so left-padded prompts
decode as their unpadded selves), then runs single-token steps in a ``lax.while_loop`` that stops early once
every row has emitted ``eos_token_id``; rows that finished emit ``pad_token_id``.

    out = generate(module, params, prompt_ids, max_new_tokens=32)                               # greedy
    out = generate(module, params, prompt_ids, max_new_tokens=32, do_sample=True, top_p=0.9,
                   temperature=0.7, rng=jax.random.key(0))
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["generate", "process_logits", "sample_token"]


def process_logits(logits: Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """``logits [..., vocab]`` -> fp32 logits divided by ``temperature`` with filtered tokens at ``-inf``.

    ``top_k > 0`` keeps the k largest; ``top_p < 1`` keeps the smallest set of most likely tokens whose probability
    mass reaches ``top_p`` (a token is kept when the mass of the tokens before it is below ``top_p``; the most
    likely token is always kept), as HF's ``TopPLogitsWarper``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0 (use do_sample=False for greedy decoding)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    if top_k < 0:
        raise ValueError(f"top_k={top_k}: must be >= 0")
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        keep_sorted = keep_sorted.at[..., 0].set(True)
        keep = jnp.zeros_like(keep_sorted).at[
            tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def sample_token(logits: Array, rng: Array | None, *, do_sample: bool, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> Array:
    """``logits [batch, vocab]`` -> token ids ``[batch]`` int32 (argmax, or a draw from the filtered softmax)."""
    if not do_sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def _build(module, batch: int, prompt_len: int, max_new_tokens: int, do_sample: bool, temperature: float,
           top_k: int, top_p: float, eos_token_id: int | None, pad_token_id: int):
    total = prompt_len + max_new_tokens

    def run(params, input_ids, attention_mask, rng, model_kwargs):
        variables = {"params": params}
        cache = module.apply(variables, batch, total, method="init_cache")
        prompt_mask = {} if attention_mask is None else {"attention_mask": attention_mask}
        out = module.apply(variables, input_ids=input_ids, cache=cache, **prompt_mask, **model_kwargs)
        tokens = jnp.full((batch, total), pad_token_id, jnp.int32).at[:, :prompt_len].set(input_ids.astype(jnp.int32))

        def cond(state):
            step, _, _, _, finished = state
            return (step < max_new_tokens) & ~jnp.all(finished)

        def body(state):
            step, tokens, logits, cache, finished = state
            key = None if rng is None else jax.random.fold_in(rng, step)
            token = sample_token(logits, key, do_sample=do_sample, temperature=temperature, top_k=top_k,
                                 top_p=top_p)
            token = jnp.where(finished, pad_token_id, token)
            if eos_token_id is not None:
                finished = finished | (token == eos_token_id)
            tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, prompt_len + step))
            # The step after the last token is wasted work, but keeps the loop body uniform.
            out = module.apply(variables, input_ids=token[:, None], cache=cache, **model_kwargs)
            return step + 1, tokens, out.logits[:, -1], out.cache, finished

        state = (jnp.zeros((), jnp.int32), tokens, out.logits[:, -1], out.cache, jnp.zeros((batch,), bool))
        return jax.lax.while_loop(cond, body, state)[1]

    return jax.jit(run)


@functools.lru_cache(maxsize=32)
def _build_cached(*args):
    return _build(*args)


def generate(module, params: Any, input_ids: Array, *, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, rng: Array | None = None,
             eos_token_id: int | None = None, pad_token_id: int = 0, attention_mask: Array | None = None,
             **model_kwargs) -> Array:
    """Decodes ``max_new_tokens`` after ``input_ids [batch, prompt]``; returns ``[batch, prompt + max_new_tokens]``.

    ``attention_mask [batch, prompt]`` (1 = token) marks prompt padding (left-pad prompts of unequal length); the
    generated tokens are real. ``model_kwargs`` (arrays, e.g. Reformer's ``lsh_rotations``) are passed to every
    model call. Compiled functions are reused across calls with the same module, shapes and decoding options.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, prompt_length], got {tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; it must match input_ids "
                         f"{tuple(input_ids.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be a positive int")
    if do_sample and rng is None:
        raise ValueError("rng: a PRNG key is required when do_sample=True")
    if do_sample:
        process_logits(jnp.zeros((1, 2)), temperature=temperature, top_k=top_k, top_p=top_p)  # validate options
    batch, prompt_len = input_ids.shape
    args = (module, batch, prompt_len, max_new_tokens, do_sample, float(temperature), int(top_k), float(top_p),
            eos_token_id, pad_token_id)
    try:
        fn = _build_cached(*args)
    except TypeError:  # an unhashable module (e.g. a config holding a dict): compile for this call only
        fn = _build(*args)
    return fn(params, input_ids, attention_mask, rng if do_sample else None, model_kwargs)
