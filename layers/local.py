"""Chunked local self-attention (Reformer ``LocalSelfAttention``).

The sequence is cut into chunks of ``chunk_length``; every query chunk attends to its own chunk plus
``num_chunks_before`` chunks before and ``num_chunks_after`` chunks after it. The neighbouring chunks are taken
*circularly* (the chunk before chunk 0 is the last chunk), exactly as Hugging Face does: in encoder mode the last
tokens are therefore visible from the first chunk. In decoder mode the causal mask removes the wrapped keys.
A sequence no longer than one chunk falls back to plain full attention.

Layouts: queries/keys/values ``[batch, length, heads, head_dim]``; chunked weights
``[batch, heads, num_chunks, chunk_length, window * chunk_length]`` with
``window = num_chunks_before + 1 + num_chunks_after``. Softmax always runs in fp32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from layers import axes
from layers.dense import Dense
from layers.dropout import dropout, keep_mask_block, mask_seeds

Array = jax.Array

# Hugging Face's fp32 mask value. It is applied to fp32 scores whatever the compute dtype, so its fp16 variant
# (-1e4) is never needed. A finite value (not finfo.min) keeps HF's behaviour for rows with no valid key: with
# probs = exp(s - logsumexp(s)) in fp32, logsumexp = fl(-1e9 + log n) = -1e9, so each of the n window entries
# gets weight 1 and the output is the window's value *sum* (HF's quirk, reproduced on purpose).
MASK_VALUE = -1e9


def look_adjacent(x: Array, num_chunks_before: int, num_chunks_after: int, chunk_axis: int = 2) -> Array:
    """Append the neighbouring chunks, circularly, to every chunk.

    Args:
      x: ``[..., num_chunks, chunk_length, ...]`` with the chunk index on ``chunk_axis`` and the within-chunk
        position on ``chunk_axis + 1``.
    Returns:
      ``[..., num_chunks, (before + 1 + after) * chunk_length, ...]``: for chunk ``c`` the concatenation of chunks
      ``c - before, ..., c, ..., c + after`` (indices modulo ``num_chunks``), in that order.
    """
    if num_chunks_before == 0 and num_chunks_after == 0:
        return x
    pieces = [jnp.roll(x, -offset, axis=chunk_axis) for offset in range(-num_chunks_before, num_chunks_after + 1)]
    return jnp.concatenate(pieces, axis=chunk_axis + 1)


# Chunked attention over a long sequence runs as a loop over blocks of about this many positions (a whole number of
# chunks), each block's body rematerialised in the backward pass: windows, scores and probabilities
# ([heads, chunks, chunk, window * chunk], 8x the size of the queries with 64-position chunks) then exist for one
# block at a time instead of the whole length. The values do not depend on it (the same ops per chunk).
BLOCK_LENGTH = 4096


def chunks_per_block(num_chunks: int, chunk_length: int, block_length: int | None = None) -> int:
    """The largest divisor of ``num_chunks`` that spans at most ``block_length`` (default ``BLOCK_LENGTH``)
    positions (at least 1)."""
    block_length = BLOCK_LENGTH if block_length is None else block_length
    target = max(1, min(num_chunks, block_length // chunk_length))
    return max(d for d in range(1, target + 1) if num_chunks % d == 0)


def window_block(x: Array, start, count: int, num_chunks_before: int, num_chunks_after: int) -> Array:
    """``look_adjacent(x)[:, :, start:start + count]`` without building the windows of every chunk.

    ``x [B, H, N, C, ...]`` (chunk axis 2), ``start`` may be traced. Returns ``[B, H, count, W*C, ...]``, the
    circular windows of chunks ``start .. start + count - 1``.
    """
    n, width = x.shape[2], num_chunks_before + 1 + num_chunks_after
    index = (start - num_chunks_before + jnp.arange(count + width - 1)) % n
    picked = jnp.take(x, index, axis=2, mode="clip")  # [B, H, count + W - 1, C, ...]
    return windows_of(picked, count, width)


def windows_of(picked: Array, count: int, width: int) -> Array:
    """``[B, H, count + W - 1, C, ...] -> [B, H, count, W*C, ...]``: chunk i's window is chunks i .. i + W - 1."""
    if width == 1:
        return picked
    pieces = [jax.lax.slice_in_dim(picked, o, o + count, axis=2) for o in range(width)]
    return jnp.concatenate(pieces, axis=3)


def dropout_probs_block(probs: Array, rate: float, seeds: Array | None, global_shape, offset) -> Array:
    """The block at ``offset`` of ``dropout_probs`` on the whole ``global_shape`` probabilities (the same mask:
    ``layers.dropout`` hashes the global index); ``seeds`` from ``mask_seeds`` (None: no dropout)."""
    if seeds is None:
        return probs
    keep = keep_mask_block(seeds, probs.shape, rate, global_shape=global_shape, offset=offset)
    return jnp.where(keep, probs / jnp.asarray(1.0 - rate, probs.dtype), jnp.zeros((), probs.dtype))


def dropout_seeds(rate: float, rng: Array | None, deterministic: bool) -> Array | None:
    """``mask_seeds(rng)`` when dropout is on, else None (the one draw ``dropout_probs`` makes from ``rng``)."""
    if deterministic or rate == 0.0:
        return None
    if rng is None:
        raise ValueError("dropout_rng: required when deterministic=False and dropout_rate > 0")
    return mask_seeds(rng)


def dropout_probs(probs: Array, rate: float, rng: Array | None, deterministic: bool) -> Array:
    """Inverted dropout on attention probabilities (any shape), as torch's: kept entries scaled by 1/(1-rate)."""
    if deterministic or rate == 0.0:
        return probs
    if rng is None:
        raise ValueError("dropout_rng: required when deterministic=False and dropout_rate > 0")
    return dropout(probs, rate, rng)


def check_chunked_inputs(name: str, shape: tuple[int, ...], chunk_length: int, before: int, after: int,
                         attention_mask: Array | None, dropout_rate: float) -> None:
    """Static argument checks shared by local and LSH attention: ValueError naming the field, before tracing."""
    if len(shape) != 4:
        raise ValueError(f"{name}: expected rank 4 [batch, length, heads, head_dim], got shape {shape}")
    if not isinstance(chunk_length, (int, np.integer)) or chunk_length < 1:
        raise ValueError(f"chunk_length: must be a positive int, got {chunk_length!r}")
    for field, value in (("num_chunks_before", before), ("num_chunks_after", after)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{field}: must be a non-negative int, got {value!r}")
    batch, length = shape[0], shape[1]
    if length > chunk_length and length % chunk_length:
        raise ValueError(
            f"length: {length} must be a multiple of chunk_length={chunk_length} when longer than one chunk "
            "(pad the sequence, as HF's Reformer does in eval mode)"
        )
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask: expected shape {(batch, length)} [batch, length], got {tuple(attention_mask.shape)}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate: must be in [0, 1), got {dropout_rate}")


class LocalAttentionOutput(NamedTuple):
    out: Array  # [batch, length, heads, head_dim]
    probs: Array | None  # chunked [batch, heads, chunks, chunk, window*chunk] or full [batch, heads, length, length]


def local_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    chunk_length: int,
    num_chunks_before: int = 1,
    num_chunks_after: int = 0,
    attention_mask: Array | None = None,
    causal: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_probs: bool = False,
    dtype: Any = None,
) -> LocalAttentionOutput:
    """Chunked local attention, numerically as HF ``LocalSelfAttention`` (after its projections).

    Args:
      query, key, value: ``[batch, length, heads, head_dim]`` (unscaled; keys are divided by ``sqrt(head_dim)``).
      chunk_length: chunk size; ``length`` must be a multiple of it unless ``length <= chunk_length``, which
        runs plain full attention.
      num_chunks_before / num_chunks_after: circular look-back / look-ahead in chunks.
      attention_mask: ``[batch, length]``, 1/True = real token; masks keys only.
      causal: HF ``is_decoder``; query position i may attend key positions j <= i (original positions).
        A query with no valid key in its window returns the sum of the window's values (see ``MASK_VALUE``).
    Returns:
      ``LocalAttentionOutput(out [batch, length, heads, head_dim] in dtype, probs or None)``; ``probs`` (fp32,
      after dropout, as HF returns them) is
      ``[batch, heads, num_chunks, chunk_length, window * chunk_length]`` when chunked, else
      ``[batch, heads, length, length]``.
    """
    check_chunked_inputs("query", tuple(query.shape), chunk_length, num_chunks_before, num_chunks_after,
                         attention_mask, dropout_rate)
    if tuple(key.shape) != tuple(query.shape) or tuple(value.shape) != tuple(query.shape):
        raise ValueError(f"key/value: shapes {key.shape}/{value.shape} must equal query shape {query.shape}")
    if not deterministic and dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError("dropout_rng: required when deterministic=False and dropout_rate > 0")
    dtype = dtype or query.dtype
    batch, length, heads, head_dim = query.shape
    to_bhld = lambda t: jnp.swapaxes(t.astype(dtype), 1, 2)  # noqa: E731
    q, k, v = to_bhld(query), to_bhld(key), to_bhld(value)
    # HF scales the keys (not the scores) by 1/sqrt(d); identical up to rounding, kept for parity.
    k = k / jnp.asarray(np.sqrt(head_dim), dtype)
    positions = jnp.arange(length)
    key_valid = None if attention_mask is None else attention_mask.astype(bool)

    if length > chunk_length and not return_probs:
        num_chunks = length // chunk_length
        block = chunks_per_block(num_chunks, chunk_length)
        if block < num_chunks:
            out = _blocked_local_attention(q, k, v, key_valid, block, chunk_length=chunk_length,
                                           num_chunks_before=num_chunks_before, num_chunks_after=num_chunks_after,
                                           causal=causal, seeds=dropout_seeds(dropout_rate, dropout_rng, deterministic),
                                           dropout_rate=dropout_rate, dtype=dtype)
            return LocalAttentionOutput(jnp.swapaxes(out, 1, 2), None)

    if length <= chunk_length:
        scores = jnp.einsum("bhld,bhmd->bhlm", q, k, preferred_element_type=jnp.float32)
        q_pos, k_pos = positions[:, None], positions[None, :]  # [L, 1], [1, L]
        key_valid = None if key_valid is None else key_valid[:, None, None, :]
        v_window = v
    else:
        num_chunks = length // chunk_length
        chunk = lambda t: t.reshape(batch, heads, num_chunks, chunk_length, head_dim)  # noqa: E731
        adjacent = lambda t: look_adjacent(t, num_chunks_before, num_chunks_after)  # noqa: E731
        q, k_window, v_window = chunk(q), adjacent(chunk(k)), adjacent(chunk(v))
        scores = jnp.einsum("bhncd,bhnkd->bhnck", q, k_window, preferred_element_type=jnp.float32)
        chunk_pos = positions.reshape(1, 1, num_chunks, chunk_length)
        q_pos = chunk_pos[..., :, None]  # [1, 1, N, C, 1]
        k_pos = adjacent(chunk_pos)[..., None, :]  # [1, 1, N, 1, W*C]
        if key_valid is not None:
            key_valid = adjacent(key_valid.reshape(batch, 1, num_chunks, chunk_length))[..., None, :]

    valid = key_valid
    if causal:
        valid = (q_pos >= k_pos) if valid is None else valid & (q_pos >= k_pos)
    if valid is not None:
        scores = jnp.where(valid, scores, MASK_VALUE)
    probs = jnp.exp(scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True))
    probs = dropout_probs(probs, dropout_rate, dropout_rng, deterministic)
    out = jnp.matmul(probs.astype(dtype), v_window)
    out = out.reshape(batch, heads, length, head_dim)
    return LocalAttentionOutput(jnp.swapaxes(out, 1, 2), probs if return_probs else None)


def _blocked_local_attention(q, k, v, key_valid, block, *, chunk_length, num_chunks_before, num_chunks_after, causal,
                             seeds, dropout_rate, dtype):
    """The chunked path of ``local_attention`` as a loop over blocks of ``block`` chunks (``BLOCK_LENGTH``):
    ``q``/``k``/``v [B, H, L, D]`` (k already scaled) -> out ``[B, H, L, D]``. Every block computes exactly what the
    whole-length path computes for its chunks (same windows, masks, dropout mask entries); its body is
    rematerialised in the backward pass, so only one block's windows, scores and probabilities are ever live."""
    batch, heads, length, head_dim = q.shape
    num_chunks = length // chunk_length
    width = num_chunks_before + 1 + num_chunks_after
    chunk = lambda t: t.reshape(t.shape[:2] + (num_chunks, chunk_length) + t.shape[3:])  # noqa: E731
    qc, kc, vc = chunk(q), chunk(k), chunk(v)
    positions = chunk(jnp.arange(length, dtype=jnp.int32)[None, None])  # [1, 1, N, C]
    valid_c = None if key_valid is None else chunk(key_valid[:, None])  # [B, 1, N, C]
    probs_shape = (batch, heads, num_chunks, chunk_length, width * chunk_length)

    def one_block(index):
        start = index * block
        windows = lambda t: window_block(t, start, block, num_chunks_before, num_chunks_after)  # noqa: E731
        qb = jax.lax.dynamic_slice_in_dim(qc, start, block, axis=2)
        scores = jnp.einsum("bhncd,bhnkd->bhnck", qb, windows(kc), preferred_element_type=jnp.float32)
        q_pos = jax.lax.dynamic_slice_in_dim(positions, start, block, axis=2)[..., :, None]  # [1, 1, G, C, 1]
        k_pos = windows(positions)[..., None, :]  # [1, 1, G, 1, W*C]
        valid = None if valid_c is None else windows(valid_c)[..., None, :]
        if causal:
            valid = (q_pos >= k_pos) if valid is None else valid & (q_pos >= k_pos)
        if valid is not None:
            scores = jnp.where(valid, scores, MASK_VALUE)
        probs = jnp.exp(scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True))
        probs = dropout_probs_block(probs, dropout_rate, seeds, probs_shape, (0, 0, start, 0, 0))
        return jnp.matmul(probs.astype(dtype), windows(vc))  # [B, H, G, C, D]

    out = jax.lax.map(jax.checkpoint(one_block, prevent_cse=False), jnp.arange(num_chunks // block))
    return jnp.moveaxis(out, 0, 2).reshape(batch, heads, length, head_dim)


def local_window_counts(length: int, chunk_length: int, num_chunks_before: int, num_chunks_after: int) -> np.ndarray:
    """``[length, length]`` int: how many times key j appears in the attention window of query i.

    Counts can exceed 1 when the window is wider than the number of chunks (the circular look-back then visits a
    chunk twice and HF attends to those keys twice). Used by the reference twins (tests only).
    """
    if length <= chunk_length:
        return np.ones((length, length), np.int64)
    num_chunks = length // chunk_length
    q_chunk = np.arange(length)[:, None] // chunk_length
    k_chunk = np.arange(length)[None, :] // chunk_length
    counts = np.zeros((length, length), np.int64)
    for offset in range(-num_chunks_before, num_chunks_after + 1):
        counts += (q_chunk + offset) % num_chunks == k_chunk
    return counts


def weighted_masked_softmax_reference(scores, counts):
    """float64 numpy softmax over the last axis in which entry j is repeated ``counts[..., j]`` times (tests only)."""
    scores = np.asarray(scores, np.float64)
    counts = np.broadcast_to(np.asarray(counts), scores.shape)
    present = counts > 0
    top = np.max(np.where(present, scores, -np.inf), axis=-1, keepdims=True)
    weights = np.where(present, counts * np.exp(np.where(present, scores - top, 0.0)), 0.0)
    return weights / weights.sum(axis=-1, keepdims=True)


def local_attention_reference(query, key, value, *, chunk_length, num_chunks_before=1, num_chunks_after=0,
                              attention_mask=None, causal=False):
    """Slow twin (float64 numpy): full ``[length, length]`` attention restricted to the circular chunk band, keys
    counted with multiplicity (see ``local_window_counts``) (tests only).

    Padding keys and (if causal) future keys score -1e9. A row with no valid key reproduces HF's fp32 arithmetic:
    its logsumexp is fl(-1e9 + log n) = -1e9 (the fp32 spacing there is 64), so every window entry gets weight 1
    and the output is the *sum* of the window's values, not their mean. Returns ``[batch, length, heads,
    head_dim]`` float64.
    """
    q, k, v = (np.swapaxes(np.asarray(t, np.float64), 1, 2) for t in (query, key, value))
    batch, heads, length, head_dim = q.shape
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(head_dim)
    valid = np.ones((batch, 1, length, length), bool)
    if attention_mask is not None:
        valid = valid & np.asarray(attention_mask).astype(bool)[:, None, None, :]
    if causal:
        valid = valid & (np.arange(length)[:, None] >= np.arange(length)[None, :])
    scores = np.where(valid, scores, MASK_VALUE)
    counts = local_window_counts(length, chunk_length, num_chunks_before, num_chunks_after)
    probs = weighted_masked_softmax_reference(scores, counts)
    no_valid_key = ~np.any(valid & (counts > 0), axis=-1, keepdims=True)
    probs = np.where(no_valid_key, counts, probs)
    return np.swapaxes(probs @ v, 1, 2)


class LocalSelfAttention(nn.Module):
    """HF ``LocalSelfAttention``: ``query``/``key``/``value`` projections (no biases, kernels
    ``[hidden, heads * head_dim]``), chunked local attention, no output projection.

    ``hidden_states [batch, length, hidden] -> LocalAttentionOutput(out [batch, length, heads * head_dim], probs)``.

    ``sequence_sharding`` (``layers.sequence_parallel.SequenceSharding``; None: unsharded): with a length axis of
    S > 1 shards and a sequence longer than one chunk, the attention runs ``sharded_local_attention`` (each device
    its ``length / S`` positions plus halo chunks from its neighbours), equal to the unsharded computation.
    """

    num_heads: int
    head_dim: int
    chunk_length: int
    num_chunks_before: int = 1
    num_chunks_after: int = 0
    causal: bool = False  # HF `is_decoder`
    dropout_rate: float = 0.0  # HF `local_attention_probs_dropout_prob`
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(stddev=0.02)
    sequence_sharding: Any = None

    @nn.compact
    def __call__(self, hidden_states: Array, attention_mask: Array | None = None, *, deterministic: bool = True,
                 return_probs: bool = False) -> LocalAttentionOutput:
        width = self.num_heads * self.head_dim

        def project(name: str) -> Array:
            y = Dense(width, (axes.EMBED, axes.HEADS), use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)(hidden_states)
            y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS))
            return y.reshape(y.shape[:-1] + (self.num_heads, self.head_dim))

        q, k, v = project("query"), project("key"), project("value")
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        options = dict(chunk_length=self.chunk_length, num_chunks_before=self.num_chunks_before,
                       num_chunks_after=self.num_chunks_after, attention_mask=attention_mask, causal=self.causal,
                       dropout_rate=self.dropout_rate, dropout_rng=dropout_rng, deterministic=deterministic,
                       return_probs=return_probs, dtype=self.dtype)
        batch, length = hidden_states.shape[:2]
        sharding = self.sequence_sharding
        if sharding is not None and sharding.shards > 1 and length > self.chunk_length:
            from layers.sequence_parallel import call_sharded, sharded_local_attention  # it imports this module

            out, probs = call_sharded(sharded_local_attention, sharding, batch, length, q, k, v, **options)
        else:
            out, probs = local_attention(q, k, v, **options)
        out = out.reshape(out.shape[:-2] + (width,))
        return LocalAttentionOutput(nn.with_logical_constraint(out, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS)), probs)
