"""Jit-compiled autoregressive decoding over a static cache, shared by every decoder family: greedy and sampling
for decoder-only models, greedy, sampling and beam search for encoder-decoders.

Decoder-only protocol (Reformer, MEGA, ``BartForCausalLM``):

- ``init_cache(self, batch_size: int, max_length: int) -> cache``: a pytree of static shapes that carries its own
  fill index; callable without params as ``module.apply({"params": p}, B, T, method="init_cache")``.
- ``module.apply({"params": p}, input_ids=ids [B, t], cache=cache, **model_kwargs)`` treats ``ids`` as the next
  ``t`` tokens after those already in the cache and returns the head's usual output (with ``logits [B, t, V]``)
  plus a ``cache`` field holding the updated cache (``None`` when called without a cache).

``generate`` prefills the whole prompt in one call (with the prompt's ``attention_mask``, so left-padded prompts
decode as their unpadded selves), then runs single-token steps in a ``lax.while_loop`` that stops early once
every row has emitted ``eos_token_id``; rows that finished emit ``pad_token_id``.

Encoder-decoder protocol (a module with an ``encode`` method: ``BartForConditionalGeneration``), as HF Flax's
``encode`` / ``decode`` / ``init_cache`` plus a cache reorder for beam search:

- ``encode(input_ids, attention_mask)`` -> output with ``last_hidden_state [B, S, D]``, run once.
- ``init_cache(rows, max_length, encoder_hidden_states, encoder_attention_mask)`` -> cache for ``rows`` decoder rows
  (``B`` or ``B * num_beams``, beams of an example adjacent); the family computes whatever depends on the encoder
  output alone (cross-attention keys and values) here, once.
- ``decode(decoder_input_ids [rows, t], cache=cache)`` -> output with ``logits [rows, t, V]`` and the updated
  ``cache``.
- ``reorder_cache(cache, rows [R])`` -> the cache in which row r continues row ``rows[r]`` (beam search only).

Everything runs inside one ``jit``: encoding, cache set-up and a ``lax.while_loop`` of single-token decoder steps
with an early exit once every row (greedy, sampling) or every example (beam search) is done. The decoding options
default to the config's generation fields as HF's ``generation_config`` sets them (``max_length``, ``min_length``,
``num_beams``, ``length_penalty``, ``early_stopping``, ``no_repeat_ngram_size``, ``forced_bos_token_id``,
``forced_eos_token_id``, special token ids); logits processors and beam search follow HF's ``generate`` (4.46.3)
step for step, so outputs are the same tokens.

    out = generate(module, params, prompt_ids, max_new_tokens=32)                               # greedy
    out = generate(module, params, prompt_ids, max_new_tokens=32, do_sample=True, top_p=0.9,
                   temperature=0.7, rng=jax.random.key(0))
    out = generate(seq2seq, params, source_ids, attention_mask=mask, num_beams=4)            # [B, max_length]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["generate", "process_logits", "sample_token", "banned_ngram_tokens", "process_scores"]


def largest_k(x: Array, k: int) -> tuple[Array, Array]:
    """``jax.lax.top_k`` (values, indices ``[..., k]``, descending) whose outputs callers may slice. XLA:CPU lowers every top-k to a full sort plus a slice and
    turns that back into its TopK kernel only when nothing else slices the sort's outputs; a later slice of the
    values or indices (the k-th value, the best candidate) merges into that slice and leaves a full sort of the
    vocabulary behind (measured: 170 ms instead of 1 ms per beam-search step over ``[4, 4 * 50265]``). The
    optimization barrier keeps the two slices apart. A third operand keeps the barrier from taking the TopK tuple
    itself, which XLA:CPU's TopK decomposer cannot handle (a check failure when the input is sharded)."""
    values, indices = jax.lax.top_k(x, k)
    values, indices, _ = jax.lax.optimization_barrier((values, indices, jnp.zeros((), jnp.int32)))
    return values, indices


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
        # Plain top_k: sampling slices only the k-th value of one [batch, vocab] top-k per step (largest_k's
        # barrier is for beam search, whose later slices would otherwise turn the TopK kernel into a full sort).
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


def _cached_or_fresh(build, *args):
    """The compiled function for ``args``, reused across calls with equal ones (an unhashable module, e.g. a config
    holding a dict, compiles for this call only)."""
    try:
        return build(*args)
    except TypeError:
        return build.__wrapped__(*args)


def generate(module, params: Any, input_ids: Array, *, max_new_tokens: int | None = None, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, rng: Array | None = None,
             eos_token_id: int | None = None, pad_token_id: int | None = None, attention_mask: Array | None = None,
             max_length: int | None = None, min_length: int | None = None, min_new_tokens: int | None = None,
             num_beams: int | None = None, length_penalty: float | None = None,
             early_stopping: bool | str | None = None, no_repeat_ngram_size: int | None = None,
             forced_bos_token_id: int | None = None, forced_eos_token_id: int | None = None,
             decoder_start_token_id: int | None = None, **model_kwargs) -> Array:
    """Decodes from ``input_ids [batch, length]``; compiled functions are reused across calls with the same module,
    shapes and options.

    Decoder-only modules: ``input_ids`` is the prompt; returns ``[batch, prompt + max_new_tokens]``.
    ``attention_mask [batch, prompt]`` (1 = token) marks prompt padding (left-pad prompts of unequal length; the
    generated tokens are real). ``max_new_tokens`` is required, ``eos_token_id`` None never stops, ``pad_token_id``
    defaults to 0, and ``model_kwargs`` (arrays, e.g. Reformer's ``lsh_rotations``) are passed to every model call;
    the encoder-decoder options below are refused.

    Encoder-decoder modules (see the module docstring): ``input_ids`` (and ``attention_mask``) are the encoder
    inputs; returns the decoder sequences ``[batch, max_length]``, starting with ``decoder_start_token_id`` and
    padded with ``pad_token_id`` after their end (HF returns the same rows, cut to the longest). Every option left
    None takes the config's value, as HF's ``generation_config``: ``max_length`` (or ``1 + max_new_tokens``),
    ``min_length`` (or ``1 + min_new_tokens``), ``num_beams`` (1: greedy or sampling), ``length_penalty``,
    ``early_stopping`` (True, False or "never"), ``no_repeat_ngram_size``, ``forced_bos_token_id`` (forced as the
    first generated token), ``forced_eos_token_id`` (forced at ``max_length - 1``), the special token ids.
    Sampling draws from ``process_logits`` (``temperature``, ``top_k``, ``top_p``) after the logits processors.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; it must match input_ids "
                         f"{tuple(input_ids.shape)}")
    if do_sample and rng is None:
        raise ValueError("rng: a PRNG key is required when do_sample=True")
    if do_sample:
        process_logits(jnp.zeros((1, 2)), temperature=temperature, top_k=top_k, top_p=top_p)  # validate options
    if callable(getattr(module, "encode", None)):
        if model_kwargs:
            raise ValueError(f"{sorted(model_kwargs)}: encoder-decoder generation takes no extra model arguments")
        options, values = _seq2seq_options(
            module.config, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id, max_length=max_length,
            min_length=min_length, min_new_tokens=min_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, no_repeat_ngram_size=no_repeat_ngram_size,
            forced_bos_token_id=forced_bos_token_id, forced_eos_token_id=forced_eos_token_id,
            decoder_start_token_id=decoder_start_token_id)
        fn = _cached_or_fresh(_build_seq2seq_cached, module, options)
        return fn(params, input_ids, attention_mask, rng if do_sample else None, values)

    seq2seq_only = dict(max_length=max_length, min_length=min_length,
                        min_new_tokens=min_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                        early_stopping=early_stopping, no_repeat_ngram_size=no_repeat_ngram_size,
                        forced_bos_token_id=forced_bos_token_id, forced_eos_token_id=forced_eos_token_id,
                        decoder_start_token_id=decoder_start_token_id)
    given = sorted(k for k, v in seq2seq_only.items() if v is not None)
    if given:
        raise ValueError(f"{given}: options of encoder-decoder generation; {type(module).__name__} is a decoder-only "
                         "model (it has no encode method)")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be a positive int")
    batch, prompt_len = input_ids.shape
    args = (module, batch, prompt_len, max_new_tokens, do_sample, float(temperature), int(top_k), float(top_p),
            eos_token_id, 0 if pad_token_id is None else pad_token_id)
    fn = _cached_or_fresh(_build_cached, *args)
    return fn(params, input_ids, attention_mask, rng if do_sample else None, model_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Encoder-decoder generation
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Seq2SeqOptions:
    """The options of one encoder-decoder generation that shape the program (hashable: the compile-cache key).
    The others (:class:`_Seq2SeqValues`) are traced, so changing them does not recompile."""

    max_length: int
    num_beams: int
    no_repeat_ngram_size: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Seq2SeqValues:
    """Traced options (int32 / float32 scalars): token ids (-1 = none), ``min_length``, ``length_penalty`` and
    ``early_stopping`` as 0 (False), 1 (True) or 2 ("never")."""

    min_length: Array
    length_penalty: Array
    early_stopping: Array
    eos_token_id: Array
    pad_token_id: Array
    decoder_start_token_id: Array
    forced_bos_token_id: Array
    forced_eos_token_id: Array


def _seq2seq_options(config, *, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id,
                     max_length, min_length, min_new_tokens, num_beams, length_penalty, early_stopping,
                     no_repeat_ngram_size, forced_bos_token_id, forced_eos_token_id,
                     decoder_start_token_id) -> tuple[_Seq2SeqOptions, _Seq2SeqValues]:
    """Options given, else the config's (HF's global generation defaults when the config has no such field);
    each is checked here, naming it."""

    def pick(name, value, default):
        return value if value is not None else getattr(config, name, default)

    def positive_int(name, value, minimum):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}={value!r}: must be an int >= {minimum}")
        return value

    if max_new_tokens is not None:
        max_length = 1 + positive_int("max_new_tokens", max_new_tokens, 1)
    max_length = positive_int("max_length", pick("max_length", max_length, 20), 2)
    min_length = positive_int("min_length", pick("min_length", min_length, 0), 0)
    if min_new_tokens is not None:
        min_length = max(min_length, 1 + positive_int("min_new_tokens", min_new_tokens, 0))
    num_beams = positive_int("num_beams", pick("num_beams", num_beams, 1), 1)
    if do_sample and num_beams > 1:
        raise ValueError(f"num_beams={num_beams} with do_sample=True: beam sampling is not supported")
    length_penalty = pick("length_penalty", length_penalty, 1.0)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty={length_penalty!r}: must be a number")
    early_stopping = pick("early_stopping", early_stopping, False)
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping={early_stopping!r}: must be True, False or 'never'")
    no_repeat_ngram_size = positive_int("no_repeat_ngram_size", pick("no_repeat_ngram_size", no_repeat_ngram_size,
                                                                      0), 0)
    if no_repeat_ngram_size >= max_length:
        no_repeat_ngram_size = 0  # no n-gram that long fits in a sequence plus its next token: HF bans nothing
    vocab = getattr(config, "vocab_size", None)
    ids = {}
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id),
                        ("decoder_start_token_id", decoder_start_token_id),
                        ("forced_bos_token_id", forced_bos_token_id), ("forced_eos_token_id", forced_eos_token_id)):
        value = pick(name, value, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0 or
                                  (vocab is not None and value >= vocab)):
            raise ValueError(f"{name}={value!r}: must be a token id in [0, vocab_size={vocab})")
        if value is None and name in ("pad_token_id", "decoder_start_token_id"):
            raise ValueError(f"{name} is None (in the call and in the config): generation needs it")
        ids[name] = jnp.asarray(-1 if value is None else value, jnp.int32)
    static = _Seq2SeqOptions(max_length=max_length, num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size,
                             do_sample=bool(do_sample), temperature=float(temperature), top_k=int(top_k),
                             top_p=float(top_p))
    mode = 2 if early_stopping == "never" else int(early_stopping)
    values = _Seq2SeqValues(min_length=jnp.asarray(min_length, jnp.int32),
                            length_penalty=jnp.asarray(length_penalty, jnp.float32),
                            early_stopping=jnp.asarray(mode, jnp.int32), **ids)
    return static, values


def banned_ngram_tokens(tokens: Array, length: Array, ngram_size: int, vocab_size: int) -> Array:
    """``[rows, vocab]`` bool: the tokens that would repeat an n-gram of ``tokens [rows, T]`` (first ``length``
    filled), HF's ``NoRepeatNGramLogitsProcessor`` with static shapes: every earlier n-gram whose first n-1 tokens
    equal the last n-1 tokens bans its last token. O(T * n) per step; nothing is banned while ``length < n - 1``."""
    rows, total = tokens.shape
    n = ngram_size
    starts = total - n + 1
    windows = jnp.stack([tokens[:, j:j + starts] for j in range(n)], axis=-1)  # [rows, starts, n]
    prefix = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(length - (n - 1), 0), n - 1, axis=1)
    match = jnp.all(windows[..., :n - 1] == prefix[:, None, :], axis=-1)
    match = match & (jnp.arange(starts) <= length - n)[None, :] & (length + 1 >= n)
    banned = jnp.zeros((rows, vocab_size), jnp.int32)
    banned = banned.at[jnp.arange(rows)[:, None], windows[..., n - 1]].max(match.astype(jnp.int32))
    return banned > 0


def banned_ngram_tokens_reference(tokens, length: int, ngram_size: int, vocab_size: int):
    """Slow twin (tests only): HF's dictionary of n-grams per row, in Python."""
    import numpy as np

    out = np.zeros((len(tokens), vocab_size), bool)
    for r, row in enumerate(np.asarray(tokens)[:, :length].tolist()):
        if length + 1 < ngram_size:
            continue
        seen: dict = {}
        for gram in zip(*[row[i:] for i in range(ngram_size)]):
            seen.setdefault(tuple(gram[:-1]), []).append(gram[-1])
        out[r, seen.get(tuple(row[length - ngram_size + 1:]), [])] = True
    return out


def process_scores(scores: Array, tokens: Array, length: Array, options: _Seq2SeqOptions,
                   values: _Seq2SeqValues) -> Array:
    """HF's logits processors on ``scores [rows, vocab]`` (fp32) for the token after the first ``length`` of
    ``tokens [rows, T]``: no repeated n-grams, eos banned below ``min_length``, ``forced_bos_token_id`` as the
    first generated token, ``forced_eos_token_id`` as the last (at ``max_length - 1``). Banned tokens get -inf; a
    forced token gets 0 and every other -inf."""
    vocab = scores.shape[-1]
    if options.no_repeat_ngram_size > 0:
        scores = jnp.where(banned_ngram_tokens(tokens, length, options.no_repeat_ngram_size, vocab), -jnp.inf, scores)
    classes = jnp.arange(vocab)
    scores = jnp.where((classes == values.eos_token_id) & (length < values.min_length), -jnp.inf, scores)
    for forced, at in ((values.forced_bos_token_id, 1), (values.forced_eos_token_id, options.max_length - 1)):
        only = jnp.where(classes == forced, 0.0, -jnp.inf).astype(scores.dtype)
        scores = jnp.where((forced >= 0) & (length == at), only[None, :], scores)
    return scores


def _build_seq2seq(module, o: _Seq2SeqOptions):
    """The jitted generation for ``o`` (``jax.jit`` compiles it once per input shape)."""

    def start(params, input_ids, attention_mask, v):
        """Encoder output once, a cache with its cross-attention state for ``rows``, decoder rows [start, pad...]."""
        rows = input_ids.shape[0] * o.num_beams
        variables = {"params": params}
        encoded = module.apply(variables, input_ids=input_ids, attention_mask=attention_mask, method="encode")
        cache = module.apply(variables, rows, o.max_length, encoded.last_hidden_state, attention_mask,
                             method="init_cache")
        tokens = jnp.full((rows, o.max_length), v.pad_token_id, jnp.int32).at[:, 0].set(v.decoder_start_token_id)
        return variables, cache, tokens

    def step_logits(variables, tokens, cache, length):
        """fp32 logits ``[rows, vocab]`` of the token after the first ``length``, and the updated cache."""
        last = jax.lax.dynamic_slice_in_dim(tokens, length - 1, 1, axis=1)
        out = module.apply(variables, last, cache=cache, method="decode")
        return out.logits[:, -1].astype(jnp.float32), out.cache

    def greedy(params, input_ids, attention_mask, rng, v):
        variables, cache, tokens = start(params, input_ids, attention_mask, v)
        rows = tokens.shape[0]

        def cond(state):
            length, _, _, finished = state
            return (length < o.max_length) & ~jnp.all(finished)

        def body(state):
            length, tokens, cache, finished = state
            logits, cache = step_logits(variables, tokens, cache, length)
            scores = process_scores(logits, tokens, length, o, v)
            key = None if rng is None else jax.random.fold_in(rng, length)
            token = sample_token(scores, key, do_sample=o.do_sample, temperature=o.temperature, top_k=o.top_k,
                                 top_p=o.top_p)
            token = jnp.where(finished, v.pad_token_id, token)
            finished = finished | (token == v.eos_token_id)
            tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], length, axis=1)
            return length + 1, tokens, cache, finished

        state = (jnp.ones((), jnp.int32), tokens, cache, jnp.zeros((rows,), bool))
        return jax.lax.while_loop(cond, body, state)[1]

    def beam_search(params, input_ids, attention_mask, rng, v):
        variables, cache, tokens = start(params, input_ids, attention_mask, v)
        batch, k = input_ids.shape[0], o.num_beams
        rows = batch * k
        hyps = _BeamHypotheses.empty(batch, k, o.max_length, v.pad_token_id)
        # Only beam 0 is live at first (all beams hold the same start): the others start at -1e9, as HF's.
        scores = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(-1e9)

        def cond(state):
            length, _, _, _, hyps = state
            return (length < o.max_length) & ~jnp.all(hyps.done)

        def body(state):
            length, tokens, cache, scores, hyps = state
            logits, cache = step_logits(variables, tokens, cache, length)
            logprobs = process_scores(jax.nn.log_softmax(logits, axis=-1), tokens, length, o, v)
            vocab = logprobs.shape[-1]
            total = (logprobs + scores.reshape(rows, 1)).reshape(batch, k * vocab)
            # 2K candidates per example: at most K of them (one per beam) end in eos, so K others continue.
            top_scores, top = largest_k(total, 2 * k)
            parent_rows = jnp.arange(batch)[:, None] * k + top // vocab  # [batch, 2K] rows of `tokens`
            token = (top % vocab).astype(jnp.int32)
            ends = token == v.eos_token_id
            # Finished hypotheses: eos candidates among the K best, scored sum_logprobs / generated_len ** lp with
            # generated_len = length (the new eos counted, the start token not).
            ended = jnp.take(tokens, parent_rows[:, :k], axis=0)  # [batch, K, T]
            ended = jax.lax.dynamic_update_slice_in_dim(ended, token[:, :k, None], length, axis=2)
            penalised = top_scores[:, :k] / length.astype(jnp.float32) ** v.length_penalty
            for r in range(k):  # one at a time, in rank order: each may evict the worst kept hypothesis
                hyps = hyps.add(ended[:, r], penalised[:, r], ends[:, r] & ~hyps.done)
            # The K best candidates that do not end continue (a stable sort keeps their rank order).
            keep = jnp.argsort(ends, axis=1, stable=True)[:, :k]
            scores = jnp.take_along_axis(top_scores, keep, axis=1)
            next_rows = jnp.take_along_axis(parent_rows, keep, axis=1).reshape(rows)
            next_tokens = jnp.take_along_axis(token, keep, axis=1).reshape(rows, 1)
            tokens = jax.lax.dynamic_update_slice_in_dim(jnp.take(tokens, next_rows, axis=0), next_tokens, length,
                                                         axis=1)
            cache = module.apply(variables, cache, next_rows, method="reorder_cache")
            hyps = hyps.update_done(top_scores[:, 0], length + 1, o.max_length, v)
            return length + 1, tokens, cache, scores, hyps

        state = (jnp.ones((), jnp.int32), tokens, cache, scores, hyps)
        length, tokens, _, scores, hyps = jax.lax.while_loop(cond, body, state)
        # Examples still open at max_length: their K live beams compete with the finished hypotheses.
        open_rows = tokens.reshape(batch, k, o.max_length)
        penalised = scores / (length - 1).astype(jnp.float32) ** v.length_penalty
        for r in range(k):
            hyps = hyps.add(open_rows[:, r], penalised[:, r], ~hyps.done)
        return hyps.best()

    return jax.jit(beam_search if o.num_beams > 1 else greedy)


@functools.lru_cache(maxsize=32)
def _build_seq2seq_cached(*args):
    return _build_seq2seq(*args)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _BeamHypotheses:
    """The K best finished hypotheses of each example (HF's ``BeamHypotheses`` with static shapes).

    tokens ``[batch, K, T]`` (pad after the end), scores ``[batch, K]`` (length-penalised), count ``[batch]``
    (slots filled, in order), done ``[batch]`` (no better hypothesis can come, by ``early_stopping``).
    """

    tokens: Array
    scores: Array
    count: Array
    done: Array

    @staticmethod
    def empty(batch: int, k: int, max_length: int, pad: Array) -> "_BeamHypotheses":
        return _BeamHypotheses(jnp.full((batch, k, max_length), pad, jnp.int32), jnp.zeros((batch, k), jnp.float32),
                               jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))

    def _worst(self) -> Array:
        k = self.scores.shape[1]
        filled = jnp.arange(k)[None, :] < self.count[:, None]
        return jnp.min(jnp.where(filled, self.scores, jnp.inf), axis=1)

    def add(self, tokens: Array, score: Array, offer: Array) -> "_BeamHypotheses":
        """Offers ``tokens [batch, T]`` with ``score [batch]`` where ``offer [batch]``: taken while fewer than K are
        kept, else only if better than the worst kept, which it replaces."""
        k = self.scores.shape[1]
        full = self.count >= k
        slot = jnp.where(full, jnp.argmin(self.scores, axis=1), self.count)
        take = offer & (~full | (score > self._worst()))
        into = (jnp.arange(k)[None, :] == slot[:, None]) & take[:, None]  # [batch, K]
        return dataclasses.replace(
            self, tokens=jnp.where(into[..., None], tokens[:, None, :], self.tokens),
            scores=jnp.where(into, score[:, None], self.scores), count=self.count + (take & ~full))

    def update_done(self, best_score: Array, length: Array, max_length: int,
                    v: _Seq2SeqValues) -> "_BeamHypotheses":
        """HF's ``is_done`` after a step reaching ``length`` tokens, ``best_score [batch]`` the best candidate:
        K hypotheses kept and (``early_stopping`` True) nothing more, or (False) the best candidate scored at the
        current length cannot beat the worst kept, or ("never") not even at ``max_length`` when the penalty
        rewards length (``length_penalty`` > 0)."""
        full = self.count >= self.scores.shape[1]
        generated = jnp.where((v.early_stopping == 2) & (v.length_penalty > 0.0), max_length - 1, length - 1)
        beaten = self._worst() >= best_score / generated.astype(jnp.float32) ** v.length_penalty
        finished = full & ((v.early_stopping == 1) | beaten)
        return dataclasses.replace(self, done=self.done | finished)

    def best(self) -> Array:
        """``[batch, T]``: each example's best hypothesis."""
        k = self.scores.shape[1]
        filled = jnp.arange(k)[None, :] < self.count[:, None]
        slot = jnp.argmax(jnp.where(filled, self.scores, -jnp.inf), axis=1)
        return jnp.take_along_axis(self.tokens, slot[:, None, None], axis=1)[:, 0]
