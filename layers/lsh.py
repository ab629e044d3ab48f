"""Locality-sensitive-hashing self-attention (Reformer, Kitaev et al. 2020), numerically as HF ``LSHSelfAttention``.

Algorithm (per batch element and head):
  1. Hash the shared query/key vectors with random rotations ``R [head_dim, num_hashes, rotation_size // 2]``:
     ``bucket = argmax(concat[xR, -xR])`` (per factor when ``num_buckets`` is a list; factors combine as
     ``b0 + f0 * b1 + f0 * f1 * b2 ...``). If the batch contains padding, padding tokens get an extra bucket
     ``num_buckets`` and the stride between hash rounds becomes ``num_buckets + 1``; round h adds ``h * stride``.
  2. Stable-sort the ``num_hashes * length`` (round, position) copies by bucket, cut the sorted sequence into
     chunks of ``chunk_length`` and let every chunk attend to itself and ``num_chunks_before`` /
     ``num_chunks_after`` neighbouring chunks, circularly over the flattened (round x chunk) axis, so the first
     chunk of a round also sees the last chunk of the previous round. Keys are the same vectors normalised as
     ``x / sqrt(mean(x^2) + 1e-6) / sqrt(head_dim)``; queries are not normalised or scaled.
  3. Masks use original positions: padding keys and (decoder) future keys score -1e9, then a token's own key
     scores -1e5 (shared QK would otherwise make it dominate; it stays the fallback for fully masked rows).
  4. Undo the sort and combine the hash rounds with softmax weights over their per-round logsumexps.
  If ``length <= chunk_length`` it is plain full attention with the same key normalisation and masks; the hash
  rounds are ignored.

Live length (``live_length=P``, a traced scalar): the computation of the same attention over only the first ``P``
positions of a longer static buffer (``length`` a multiple of ``chunk_length``; positions ``>= P`` do not exist,
outputs there are unspecified), equal to ``lsh_attention`` on the first ``P`` positions. Exact decoding uses it:
which keys a position sees depends on the ranks of *all* positions in the sorted order (a later token with a
smaller bucket moves the chunk boundaries of earlier ones), so the attention over a growing sequence is only
reproduced by redoing the sort over the sequence so far, in a buffer of static shape. Positions ``>= P`` sort last
(padding bucket, largest positions) and so never change the ranks of positions below ``P``; the chunks of each
round are the first ``P / chunk_length`` of its static chunks, and the circular neighbour of a round's first
chunk is the last *live* chunk of the previous round (gathered by index rather than rolled). ``P <=
chunk_length`` is full attention, chosen at run time.

HF draws rotations with ``torch.randn`` after re-seeding with ``hash_seed``; torch's generator cannot be
reproduced in JAX, so rotations are always injected (an array, or drawn from the ``"lsh"`` PRNG stream by the
module). Hashing is also exposed on its own: a reversible stack saves the buckets of the forward pass and passes
them back, because re-hashing reconstructed activations can flip an argmax.

Layouts: query_key/value ``[batch, length, heads, head_dim]``; rotations ``[heads, head_dim, num_hashes,
rotation_size // 2]``; buckets ``[batch, heads, num_hashes, length]`` int32 *including* the per-round offsets
(as HF returns them). Softmax and logsumexp run in fp32 whatever the compute dtype.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from layers import axes
from layers.dense import Dense
from layers.local import (
    check_chunked_inputs,
    chunks_per_block,
    dropout_probs,
    dropout_probs_block,
    dropout_seeds,
    look_adjacent,
    weighted_masked_softmax_reference,
    windows_of,
)

Array = jax.Array
NumBuckets = Union[int, Sequence[int]]

# HF's fp32 values; scores are fp32 here whatever the compute dtype, so the fp16 variants are never needed.
# Their order matters: a token's own key (-1e5) must beat masked keys (-1e9) so fully masked rows attend to self.
MASK_VALUE = -1e9
SELF_MASK_VALUE = -1e5
KEY_NORM_EPSILON = 1e-6


def bucket_factors(num_buckets: NumBuckets) -> tuple[int, ...]:
    """``num_buckets`` (an even int or a list/tuple of even ints) -> tuple of factors; ValueError otherwise."""
    if isinstance(num_buckets, (int, np.integer)) and not isinstance(num_buckets, bool):
        factors = (int(num_buckets),)
    elif isinstance(num_buckets, (list, tuple)) and len(num_buckets) > 0:
        factors = tuple(num_buckets)
    else:
        raise ValueError(
            f"num_buckets: must be an even int or a non-empty list/tuple of even ints, got {num_buckets!r}")
    for f in factors:
        if not isinstance(f, (int, np.integer)) or isinstance(f, bool) or f < 2 or f % 2:
            raise ValueError(f"num_buckets: every bucket count must be an even int >= 2, got {num_buckets!r}")
    return tuple(int(f) for f in factors)


def rotation_size(num_buckets: NumBuckets) -> int:
    """Width of the rotated space: ``num_buckets``, or the sum of the factors; rotations have half of it."""
    return sum(bucket_factors(num_buckets))


def total_buckets(num_buckets: NumBuckets) -> int:
    """Number of distinct (non-padding) buckets: ``num_buckets``, or the product of the factors."""
    return math.prod(bucket_factors(num_buckets))


def default_num_buckets(length: int, chunk_length: int, max_position_embeddings: int) -> int | tuple[int, int]:
    """HF's rule for ``num_buckets=None`` (``LSHSelfAttention._set_num_buckets``), evaluated on ``length``.

    About ``2 * length / chunk_length`` rounded down to a power of two; factorized into two powers of two when it
    exceeds ``2 * max(int(sqrt(max_position_embeddings // chunk_length)), chunk_length)``. HF fixes the value from
    the *first* chunked length it sees and stores it in the config; models should resolve it once likewise.
    """
    if length <= chunk_length:
        raise ValueError(
            f"length: {length} must exceed chunk_length={chunk_length}; shorter sequences use full attention and "
            "HF never sets num_buckets for them"
        )
    power = (2 * (length // chunk_length)).bit_length() - 1
    limit = 2 * max(int((max_position_embeddings // chunk_length) ** 0.5), chunk_length)
    if 2**power > limit:
        return (2 ** (power // 2), 2 ** (power - power // 2))
    return 2**power


def _check_rotations(rotations: Array, heads: int, head_dim: int, num_buckets: NumBuckets) -> None:
    half = rotation_size(num_buckets) // 2
    shape = tuple(rotations.shape)
    if len(shape) != 4 or shape[0] != heads or shape[1] != head_dim or shape[3] != half:
        raise ValueError(
            f"rotations: expected shape [heads={heads}, head_dim={head_dim}, num_hashes, rotation_size//2={half}] "
            f"for num_buckets={num_buckets!r}, got {shape}"
        )


def lsh_hash(vectors: Array, rotations: Array, num_buckets: NumBuckets, attention_mask: Array | None = None) -> Array:
    """Angular LSH buckets of the shared query/key vectors, as HF ``_hash_vectors``.

    Args:
      vectors: ``[batch, length, heads, head_dim]`` (no gradient flows through hashing).
      rotations: ``[heads, head_dim, num_hashes, rotation_size // 2]``.
      num_buckets: even int, or list/tuple of even factors.
      attention_mask: ``[batch, length]``, 0 = padding. If any token of the batch is padding, padding tokens go to
        the extra bucket ``total_buckets`` and rounds are offset by ``total_buckets + 1`` (HF decides this on the
        whole batch; here it is a traced scalar, so shapes stay static).
    Returns:
      ``[batch, heads, num_hashes, length]`` int32 buckets with round h offset by ``h * stride``.
    """
    batch, length, heads, head_dim = vectors.shape
    _check_rotations(rotations, heads, head_dim, num_buckets)
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, length):
        raise ValueError(f"attention_mask: expected shape {(batch, length)}, got {tuple(attention_mask.shape)}")
    num_hashes = rotations.shape[2]
    # Hash in fp32 even for bf16 compute: a low-precision argmax flips buckets between otherwise equal runs.
    x = jax.lax.stop_gradient(vectors).astype(jnp.float32)
    rotated = jnp.einsum("blhd,hdnr->bhnlr", x, rotations.astype(jnp.float32))
    buckets, start, radix = jnp.zeros(rotated.shape[:-1], jnp.int32), 0, 1
    for factor in bucket_factors(num_buckets):
        part = rotated[..., start:start + factor // 2]
        buckets = buckets + radix * jnp.argmax(jnp.concatenate([part, -part], axis=-1), axis=-1).astype(jnp.int32)
        start, radix = start + factor // 2, radix * factor
    stride = jnp.int32(radix)
    if attention_mask is not None:
        real = attention_mask.astype(bool)
        buckets = jnp.where(real[:, None, None, :], buckets, jnp.int32(radix))
        stride = stride + jnp.any(~real).astype(jnp.int32)
    offsets = jnp.arange(num_hashes, dtype=jnp.int32)[:, None] * stride
    return buckets + offsets


def key_normalize(x: Array) -> Array:
    """``x / sqrt(mean(x^2, -1) + 1e-6) / sqrt(head_dim)`` in fp32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    norm = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + KEY_NORM_EPSILON)
    return (norm / np.sqrt(x.shape[-1])).astype(x.dtype)


def _masked_scores(scores: Array, q_pos: Array, k_pos: Array, key_valid: Array | None, causal: bool) -> Array:
    """Apply padding/causal (-1e9) then self (-1e5) masks by original positions; shapes broadcast to scores."""
    valid = key_valid
    if causal:
        valid = (q_pos >= k_pos) if valid is None else valid & (q_pos >= k_pos)
    if valid is not None:
        scores = jnp.where(valid, scores, MASK_VALUE)
    return jnp.where(q_pos != k_pos, scores, SELF_MASK_VALUE)


class LSHAttentionOutput(NamedTuple):
    out: Array  # [batch, length, heads, head_dim]
    buckets: Array | None  # [batch, heads, num_hashes, length] int32 (None on the full-attention path)
    probs: Array | None  # chunked, sorted order: [batch, heads, num_hashes*num_chunks, chunk, window*chunk];
    # full path: [batch, heads, length, length]


def lsh_attention(
    query_key: Array,
    value: Array,
    *,
    chunk_length: int,
    num_buckets: NumBuckets | None = None,
    num_chunks_before: int = 1,
    num_chunks_after: int = 0,
    rotations: Array | None = None,
    buckets: Array | None = None,
    attention_mask: Array | None = None,
    causal: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_probs: bool = False,
    dtype: Any = None,
    live_length: Array | int | None = None,
) -> LSHAttentionOutput:
    """LSH self-attention with shared queries/keys (after HF's projections).

    Args:
      query_key: ``[batch, length, heads, head_dim]`` shared query/key vectors (queries used raw, keys normalised).
      value: ``[batch, length, heads, head_dim]``.
      chunk_length: chunk of the sorted sequence; ``length`` must be a multiple of it unless
        ``length <= chunk_length`` (then: full attention, no hashing, ``buckets`` returned as None).
      num_buckets: even int or list/tuple of even factors; needed when hashing here (not when ``buckets`` given).
      rotations: ``[heads, head_dim, num_hashes, rotation_size // 2]``; used when ``buckets`` is None.
      buckets: precomputed ``[batch, heads, num_hashes, length]`` from ``lsh_hash`` (or a previous call).
      attention_mask: ``[batch, length]``, 1 = real token; masks keys only (and picks the padding bucket).
      causal: HF ``is_decoder``: key position j visible from query position i iff j <= i.
      live_length: only the first ``live_length`` positions exist (see the module docstring); a multiple of
        ``chunk_length`` or at most ``chunk_length``; ``length`` a multiple of ``chunk_length``. Deterministic,
        no ``return_probs``.
    Returns:
      ``LSHAttentionOutput(out [batch, length, heads, head_dim] in dtype, buckets, probs fp32 or None)``.
    """
    if live_length is not None:
        return _live_lsh_attention(query_key, value, live_length, chunk_length=chunk_length,
                                   num_buckets=num_buckets, num_chunks_before=num_chunks_before,
                                   num_chunks_after=num_chunks_after, rotations=rotations, buckets=buckets,
                                   attention_mask=attention_mask, causal=causal, dtype=dtype)
    check_chunked_inputs("query_key", tuple(query_key.shape), chunk_length, num_chunks_before,
                         num_chunks_after, attention_mask, dropout_rate)
    if tuple(value.shape) != tuple(query_key.shape):
        raise ValueError(f"value: shape {value.shape} must equal query_key shape {query_key.shape}")
    if num_buckets is not None:
        bucket_factors(num_buckets)  # validate even on paths that do not hash
    if (not deterministic and dropout_rate > 0.0) and dropout_rng is None:
        raise ValueError("dropout_rng: required when deterministic=False and dropout_rate > 0")
    batch, length, heads, head_dim = query_key.shape
    chunked = length > chunk_length
    if chunked and buckets is None:
        if rotations is None:
            raise ValueError("rotations: required (or pass buckets) when length > chunk_length")
        if num_buckets is None:
            raise ValueError(
                "num_buckets: is None; resolve it first with default_num_buckets(length, chunk_length, "
                "max_position_embeddings), as HF does on its first chunked call"
            )
        _check_rotations(rotations, heads, head_dim, num_buckets)
    if chunked and buckets is not None:
        if buckets.ndim != 4 or tuple(buckets.shape[:2]) != (batch, heads) or buckets.shape[3] != length:
            raise ValueError(
                f"buckets: expected shape [batch={batch}, heads={heads}, num_hashes, length={length}], "
                f"got {tuple(buckets.shape)}"
            )
        if rotations is not None and rotations.shape[2] != buckets.shape[2]:
            raise ValueError(f"rotations/buckets: num_hashes differ ({rotations.shape[2]} vs {buckets.shape[2]})")
    dtype = dtype or query_key.dtype
    qk = jnp.swapaxes(query_key.astype(dtype), 1, 2)  # [B, H, L, D]
    v = jnp.swapaxes(value.astype(dtype), 1, 2)
    key_valid = None if attention_mask is None else attention_mask.astype(bool)

    if not chunked:
        out, probs = _full_attention(qk, v, key_valid, causal, dropout_rate, dropout_rng, deterministic, dtype)
        return LSHAttentionOutput(out, None, probs if return_probs else None)

    if buckets is None:
        buckets = lsh_hash(query_key, rotations, num_buckets, attention_mask)
    num_chunks = buckets.shape[2] * length // chunk_length
    block = chunks_per_block(num_chunks, chunk_length)
    if not return_probs and block < num_chunks:
        out = _blocked_chunked_attention(query_key.astype(dtype), value.astype(dtype), buckets, key_valid, block, chunk_length=chunk_length, causal=causal,
                                         num_chunks_before=num_chunks_before, num_chunks_after=num_chunks_after,
                                         seeds=dropout_seeds(dropout_rate, dropout_rng, deterministic),
                                         dropout_rate=dropout_rate, dtype=dtype)
        probs = None
    else:
        out, probs = _chunked_attention(qk, v, buckets, key_valid, chunk_length=chunk_length, causal=causal,
                                        adjacent=lambda t: look_adjacent(t, num_chunks_before, num_chunks_after),
                                        dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                                        deterministic=deterministic, dtype=dtype)
    return LSHAttentionOutput(out, jax.lax.stop_gradient(buckets).astype(jnp.int32), probs if return_probs else None)


def _full_attention(qk, v, key_valid, causal, dropout_rate, dropout_rng, deterministic, dtype):
    """The ``length <= chunk_length`` path: ``qk``/``v [B, H, L, D]`` -> (out ``[B, L, H, D]``, probs)."""
    length = qk.shape[2]
    scores = jnp.einsum("bhld,bhmd->bhlm", qk, key_normalize(qk), preferred_element_type=jnp.float32)
    positions = jnp.arange(length)
    scores = _masked_scores(scores, positions[:, None], positions[None, :],
                            None if key_valid is None else key_valid[:, None, None, :], causal)
    probs = jnp.exp(scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True))
    probs = dropout_probs(probs, dropout_rate, dropout_rng, deterministic)
    out = jnp.matmul(probs.astype(dtype), v)
    return jnp.swapaxes(out, 1, 2).astype(dtype), probs


def _chunked_attention(qk, v, buckets, key_valid, *, chunk_length, causal, adjacent, dropout_rate, dropout_rng,
                       deterministic, dtype):
    """Sort, chunk, attend within ``adjacent`` windows, unsort, combine rounds: ``qk``/``v [B, H, L, D]``,
    ``buckets [B, H, n, L]`` -> (out ``[B, L, H, D]``, probs in sorted order). ``adjacent`` maps chunked
    ``[B, H, N, C, ...]`` to windows ``[B, H, N, W*C, ...]`` (``look_adjacent``, or the live-length gather)."""
    batch, heads, length, head_dim = qk.shape
    buckets = jax.lax.stop_gradient(buckets).astype(jnp.int32)
    num_hashes = buckets.shape[2]
    sorted_len = num_hashes * length
    num_chunks = sorted_len // chunk_length

    # Stable sort of the (round, position) copies; offsets keep the rounds apart, ties keep original order.
    sort_idx = jnp.argsort(buckets.reshape(batch, heads, sorted_len), axis=-1, stable=True)
    undo_idx = jnp.argsort(sort_idx, axis=-1)  # inverse permutation
    pos = sort_idx % length  # original position of each sorted copy, [B, H, n*L]

    gather = lambda t: jnp.take_along_axis(t, pos[..., None], axis=2)  # noqa: E731  [B, H, n*L, D]
    chunk = lambda t: t.reshape(batch, heads, num_chunks, chunk_length, *t.shape[3:])  # noqa: E731
    q = chunk(gather(qk))
    k_window = adjacent(key_normalize(q))
    v_window = adjacent(chunk(gather(v)))
    scores = jnp.einsum("bhncd,bhnkd->bhnck", q, k_window, preferred_element_type=jnp.float32)

    q_pos = chunk(pos)  # [B, H, N, C]
    k_pos = adjacent(q_pos)  # [B, H, N, W*C]
    window_valid = None
    if key_valid is not None:
        window_valid = jnp.take_along_axis(key_valid[:, None, None, :], k_pos, axis=-1)[..., None, :]
    scores = _masked_scores(scores, q_pos[..., :, None], k_pos[..., None, :], window_valid, causal)

    logits = jax.nn.logsumexp(scores, axis=-1, keepdims=True)  # [B, H, N, C, 1]
    probs = jnp.exp(scores - logits)
    probs = dropout_probs(probs, dropout_rate, dropout_rng, deterministic)
    out = jnp.einsum("bhnck,bhnkd->bhncd", probs.astype(dtype), v_window, preferred_element_type=jnp.float32)

    # Back to (round, position) order; per-round outputs and logsumexps.
    out = jnp.take_along_axis(out.reshape(batch, heads, sorted_len, head_dim), undo_idx[..., None], axis=2)
    logits = jnp.take_along_axis(logits.reshape(batch, heads, sorted_len), undo_idx, axis=2)
    out = out.reshape(batch, heads, num_hashes, length, head_dim)
    if num_hashes > 1:
        # Each round's output is normalised over its own window; weighting by softmax(logsumexp) turns the sum
        # into one softmax over the union of the windows. Written as exp(x - logsumexp(x)) rather than
        # jax.nn.softmax on purpose: rows whose only target is the token itself (decoder position 0, fully padded
        # rows) have logsumexps near -1e5, where the fp32 spacing is ~8e-3, and HF's weights then sum to 1 only
        # up to that rounding; the same formula reproduces HF's output there instead of differing by ~0.5%.
        round_logits = logits.reshape(batch, heads, num_hashes, length)
        weights = jnp.exp(round_logits - jax.nn.logsumexp(round_logits, axis=2, keepdims=True))
        out = jnp.sum(out * weights[..., None], axis=2)
    else:
        out = out[:, :, 0]
    return jnp.swapaxes(out, 1, 2).astype(dtype), probs


def _sort_order(buckets, length):
    """Stable sort of the (round, position) copies by bucket: ``(sort_idx, undo_idx, pos)``, int32 ``[B, H, n*L]``
    (offsets keep the rounds apart, ties keep original order; ``pos`` is each sorted copy's original position)."""
    batch, heads, num_hashes = buckets.shape[:3]
    sort_idx = jnp.argsort(buckets.reshape(batch, heads, num_hashes * length), axis=-1, stable=True)
    return sort_idx, jnp.argsort(sort_idx, axis=-1), sort_idx % length


def _unsort_and_combine(out, logits, undo_idx, num_hashes, length, dtype):
    """Sorted ``out [B, H, n*L, D]`` (fp32) and ``logits [B, H, n*L]`` -> ``[B, L, H, D]``: back to (round, position)
    order, then the rounds combined by their softmax over logsumexps."""
    batch, heads, _, head_dim = out.shape
    out = jnp.take_along_axis(out, undo_idx[..., None], axis=2)
    logits = jnp.take_along_axis(logits, undo_idx, axis=2)
    out = out.reshape(batch, heads, num_hashes, length, head_dim)
    if num_hashes > 1:
        # See _chunked_attention for why exp(x - logsumexp(x)) and not jax.nn.softmax.
        round_logits = logits.reshape(batch, heads, num_hashes, length)
        weights = jnp.exp(round_logits - jax.nn.logsumexp(round_logits, axis=2, keepdims=True))
        out = jnp.sum(out * weights[..., None], axis=2)
    else:
        out = out[:, :, 0]
    return jnp.swapaxes(out, 1, 2).astype(dtype)


def _blocked_chunked_attention(qk, v, buckets, key_valid, block, *, chunk_length, causal, num_chunks_before,
                               num_chunks_after, seeds, dropout_rate, dtype):
    """``_chunked_attention`` (with ``look_adjacent`` windows, no probs) as a loop over blocks of ``block`` sorted
    chunks (``layers.local.BLOCK_LENGTH``), each block's body rematerialised in the backward pass. Only the sort
    order (int32) and the per-position outputs are whole-length: a block gathers its own rows of ``qk``/``v`` by the
    sort order, so no sorted copy, window, score or probability tensor of the whole sequence is ever built. Every
    block computes what the whole-length path computes for its chunks (dropout: the same mask entries).
    ``qk``/``v`` are ``[B, L, H, D]`` here (gathered from in place: no transposed copy of the whole length)."""
    batch, length, heads, head_dim = qk.shape
    buckets = jax.lax.stop_gradient(buckets).astype(jnp.int32)
    num_hashes = buckets.shape[2]
    sorted_len = num_hashes * length
    num_chunks = sorted_len // chunk_length
    width = num_chunks_before + 1 + num_chunks_after
    sort_idx, undo_idx, pos = _sort_order(buckets, length)
    del sort_idx
    pos_c = pos.reshape(batch, heads, num_chunks, chunk_length)
    probs_shape = (batch, heads, num_chunks, chunk_length, width * chunk_length)

    def one_block(index):
        start = index * block
        chunk_ids = (start - num_chunks_before + jnp.arange(block + width - 1)) % num_chunks
        ext_pos = jnp.take(pos_c, chunk_ids, axis=2, mode="clip")  # [B, H, G + W - 1, C]
        rows = jnp.swapaxes(ext_pos.reshape(batch, heads, -1), 1, 2)[..., None]  # [B, R, H, 1]
        gather = lambda t: jnp.swapaxes(jnp.take_along_axis(t, rows, axis=1), 1, 2).reshape(  # noqa: E731
            ext_pos.shape + (head_dim,))  # [B, H, G + W - 1, C, D]
        ext_qk, ext_v = gather(qk), gather(v)
        middle = lambda t: jax.lax.slice_in_dim(t, num_chunks_before, num_chunks_before + block, axis=2)  # noqa
        q = middle(ext_qk)
        k_window = windows_of(key_normalize(ext_qk), block, width)
        v_window = windows_of(ext_v, block, width)
        scores = jnp.einsum("bhncd,bhnkd->bhnck", q, k_window, preferred_element_type=jnp.float32)
        q_pos = middle(ext_pos)  # [B, H, G, C]
        k_pos = windows_of(ext_pos, block, width)  # [B, H, G, W*C]
        window_valid = None
        if key_valid is not None:
            window_valid = jnp.take_along_axis(key_valid[:, None, None, :], k_pos, axis=-1)[..., None, :]
        scores = _masked_scores(scores, q_pos[..., :, None], k_pos[..., None, :], window_valid, causal)
        logits = jax.nn.logsumexp(scores, axis=-1, keepdims=True)  # [B, H, G, C, 1]
        probs = jnp.exp(scores - logits)
        probs = dropout_probs_block(probs, dropout_rate, seeds, probs_shape, (0, 0, start, 0, 0))
        out = jnp.einsum("bhnck,bhnkd->bhncd", probs.astype(dtype), v_window, preferred_element_type=jnp.float32)
        return out.reshape(batch, heads, block * chunk_length, head_dim), logits.reshape(batch, heads, -1)

    out, logits = jax.lax.map(jax.checkpoint(one_block, prevent_cse=False), jnp.arange(num_chunks // block))
    out = jnp.moveaxis(out, 0, 2).reshape(batch, heads, sorted_len, head_dim)
    logits = jnp.moveaxis(logits, 0, 2).reshape(batch, heads, sorted_len)
    return _unsort_and_combine(out, logits, undo_idx, num_hashes, length, dtype)


def live_chunk_windows(num_hashes: int, chunks_per_round: int, live_chunks: Array, num_chunks_before: int,
                       num_chunks_after: int) -> Array:
    """``[num_hashes * chunks_per_round, window]`` static-layout chunk indices of each chunk's window when only the
    first ``live_chunks`` (traced) chunks of every round exist: ``look_adjacent``'s circular neighbours over the
    live chunks, in its order (``-before .. +after``). Rows of dead chunks hold some valid index (unused)."""
    static = jnp.arange(num_hashes * chunks_per_round)
    live = (static // chunks_per_round) * live_chunks + static % chunks_per_round
    offsets = jnp.arange(-num_chunks_before, num_chunks_after + 1)
    neighbour = (live[:, None] + offsets[None, :]) % (num_hashes * live_chunks)
    return (neighbour // live_chunks) * chunks_per_round + neighbour % live_chunks


def _live_lsh_attention(query_key, value, live_length, *, chunk_length, num_buckets, num_chunks_before,
                        num_chunks_after, rotations, buckets, attention_mask, causal, dtype):
    """``lsh_attention`` over the first ``live_length`` positions of a static buffer (module docstring)."""
    batch, length, heads, head_dim = query_key.shape
    if length > chunk_length and length % chunk_length:  # a buffer within one chunk is full attention
        raise ValueError(f"query_key: with live_length, the static length {length} must be a multiple of "
                         f"chunk_length={chunk_length}")
    live_length = jnp.asarray(live_length, jnp.int32)
    exists = jnp.arange(length) < live_length
    key_valid = jnp.broadcast_to(exists, (batch, length))
    if attention_mask is not None:
        key_valid = key_valid & attention_mask.astype(bool)
    dtype = dtype or query_key.dtype
    qk = jnp.swapaxes(query_key.astype(dtype), 1, 2)
    v = jnp.swapaxes(value.astype(dtype), 1, 2)

    def full(_):
        return _full_attention(qk, v, key_valid, causal, 0.0, None, True, dtype)[0]

    def chunked(_):
        hashed = buckets
        if hashed is None:
            if rotations is None or num_buckets is None:
                raise ValueError("rotations and num_buckets: required with live_length (or pass buckets)")
            hashed = lsh_hash(query_key, rotations, num_buckets, key_valid)
        windows = live_chunk_windows(hashed.shape[2], length // chunk_length, live_length // chunk_length,
                                     num_chunks_before, num_chunks_after)

        def adjacent(t):  # [B, H, N, C, ...] -> [B, H, N, W*C, ...]
            picked = jnp.take(t, windows, axis=2)  # [B, H, N, W, C, ...]
            return picked.reshape(picked.shape[:3] + (-1,) + picked.shape[5:])

        return _chunked_attention(qk, v, hashed, key_valid, chunk_length=chunk_length, causal=causal,
                                  adjacent=adjacent, dropout_rate=0.0, dropout_rng=None, deterministic=True,
                                  dtype=dtype)[0]

    if length <= chunk_length:
        return LSHAttentionOutput(full(None), None, None)
    return LSHAttentionOutput(jax.lax.cond(live_length > chunk_length, chunked, full, None), None, None)


# ---------------------------------------------------------------------------------------------------------------
# Reference twins (tests only): slow, written from the definition, no sorting or chunk gathering.


def lsh_hash_reference(vectors, rotations, num_buckets, attention_mask=None):
    """Slow twin of ``lsh_hash`` (float64 numpy, tests only), in cross-polytope form, one round at a time.

    For a factor f with projections p (f/2 of them): bucket = j if p_j > 0 else j + f/2, with j = argmax |p|.
    """
    x = np.asarray(vectors, np.float64)
    r = np.asarray(rotations, np.float64)
    batch, length, heads, _ = x.shape
    num_hashes = r.shape[2]
    factors = bucket_factors(num_buckets)
    out = np.zeros((batch, heads, num_hashes, length), np.int64)
    padded = None if attention_mask is None else ~np.asarray(attention_mask).astype(bool)
    stride = math.prod(factors) + (1 if padded is not None and padded.any() else 0)
    for h in range(num_hashes):
        bucket, start, radix = np.zeros((batch, heads, length), np.int64), 0, 1
        for f in factors:
            p = np.einsum("blhd,hdr->bhlr", x, r[:, :, h, start:start + f // 2])
            j = np.argmax(np.abs(p), axis=-1)
            positive = np.take_along_axis(p, j[..., None], axis=-1)[..., 0] > 0
            bucket += radix * np.where(positive, j, j + f // 2)
            start, radix = start + f // 2, radix * f
        if padded is not None:
            bucket = np.where(padded[:, None, :], math.prod(factors), bucket)
        out[:, :, h] = bucket + h * stride
    return out


def lsh_window_counts_reference(buckets, chunk_length, num_chunks_before, num_chunks_after):
    """``[batch, heads, length, length]``: times key j lies in the windows of query i's copies, over all rounds.

    The rank of copy t = (round, position) in the stable sort is the number of copies with a smaller bucket, or
    an equal bucket and a smaller flat index; copies u and t share a window iff chunk(u) - chunk(t) is one of
    ``-before..after`` modulo the number of chunks (counted with multiplicity, as HF concatenates the chunks).
    """
    b = np.asarray(buckets)
    batch, heads, num_hashes, length = b.shape
    flat = b.reshape(batch, heads, num_hashes * length)
    t = np.arange(num_hashes * length)
    before_t = (flat[..., None, :] < flat[..., :, None]) | (
        (flat[..., None, :] == flat[..., :, None]) & (t[None, :] < t[:, None]))
    rank = before_t.sum(-1)
    chunk = rank // chunk_length
    num_chunks = num_hashes * length // chunk_length
    diff = (chunk[..., None, :] - chunk[..., :, None]) % num_chunks  # [B, H, query copy, key copy]
    mult = sum((diff == d % num_chunks).astype(np.int64) for d in range(-num_chunks_before, num_chunks_after + 1))
    return mult.reshape(batch, heads, num_hashes, length, num_hashes, length).sum(axis=(2, 4))


def lsh_attention_reference(query_key, value, buckets=None, *, chunk_length, num_chunks_before=1,
                            num_chunks_after=0, attention_mask=None, causal=False):
    """Slow twin of ``lsh_attention`` (float64 numpy) over the full ``[length, length]`` score matrix (tests only).

    Scores ``q_i . normalise(q_j)`` with padding/future keys at -1e9 and j == i at -1e5; each key j weighted by its
    window multiplicity (all ones when ``length <= chunk_length``). Combining the hash rounds with softmax over
    their logsumexps equals this single multiplicity-weighted softmax over the union of the windows.
    Returns ``[batch, length, heads, head_dim]`` float64.
    """
    x = np.swapaxes(np.asarray(query_key, np.float64), 1, 2)
    v = np.swapaxes(np.asarray(value, np.float64), 1, 2)
    batch, heads, length, head_dim = x.shape
    k = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + KEY_NORM_EPSILON) / np.sqrt(head_dim)
    scores = x @ np.swapaxes(k, -1, -2)
    scores = np.where(lsh_valid_keys_reference(attention_mask, batch, length, causal), scores, MASK_VALUE)
    scores = np.where(np.eye(length, dtype=bool), SELF_MASK_VALUE, scores)
    probs = weighted_masked_softmax_reference(
        scores, lsh_counts_reference(buckets, length, chunk_length, num_chunks_before, num_chunks_after))
    return np.swapaxes(probs @ v, 1, 2)


def lsh_valid_keys_reference(attention_mask, batch, length, causal):
    """``[batch, 1, length, length]`` bool: key j is a real token and (if causal) j <= i (tests only)."""
    valid = np.ones((batch, 1, length, length), bool)
    if attention_mask is not None:
        valid = valid & np.asarray(attention_mask).astype(bool)[:, None, None, :]
    if causal:
        valid = valid & (np.arange(length)[:, None] >= np.arange(length)[None, :])
    return valid


def lsh_counts_reference(buckets, length, chunk_length, num_chunks_before, num_chunks_after):
    """Window multiplicities: ``lsh_window_counts_reference``, or all ones on the full-attention path."""
    if length <= chunk_length:
        return np.ones((length, length), np.int64)
    return lsh_window_counts_reference(buckets, chunk_length, num_chunks_before, num_chunks_after)


# ---------------------------------------------------------------------------------------------------------------


class LSHSelfAttention(nn.Module):
    """HF ``LSHSelfAttention``: shared ``query_key`` and ``value`` projections (no biases, kernels
    ``[hidden, heads * head_dim]`` = torch ``weight.T``), LSH attention, no output projection.

    ``hidden_states [batch, length, hidden] -> LSHAttentionOutput(out [batch, length, heads * head_dim], buckets,
    probs)``. Rotations: pass ``rotations [heads, head_dim, num_hashes, rotation_size // 2]``, or they are drawn
    (standard normal) from the ``"lsh"`` PRNG stream. ``num_buckets=None`` is resolved per call from the length
    with ``default_num_buckets`` (HF freezes its first value; configs should resolve it once).
    """

    num_heads: int
    head_dim: int
    chunk_length: int
    num_buckets: NumBuckets | None = None
    num_hashes: int = 1
    num_chunks_before: int = 1
    num_chunks_after: int = 0
    causal: bool = False  # HF `is_decoder`
    max_position_embeddings: int = 4096  # only for num_buckets=None
    dropout_rate: float = 0.0  # HF `lsh_attention_probs_dropout_prob`
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(stddev=0.02)

    @nn.compact
    def __call__(
        self,
        hidden_states: Array,
        attention_mask: Array | None = None,
        *,
        rotations: Array | None = None,
        buckets: Array | None = None,
        num_hashes: int | None = None,
        deterministic: bool = True,
        return_probs: bool = False,
        live_length: Array | None = None,
    ) -> LSHAttentionOutput:
        """``live_length``: only the first ``live_length`` positions exist (``lsh_attention``), for exact decoding
        in a static buffer; needs a fixed ``num_buckets``."""
        width = self.num_heads * self.head_dim

        def project(name: str) -> Array:
            y = Dense(width, (axes.EMBED, axes.HEADS), use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)(hidden_states)
            y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS))
            return y.reshape(y.shape[:-1] + (self.num_heads, self.head_dim))

        query_key, value = project("query_key"), project("value")
        length = hidden_states.shape[1]
        num_buckets = self.num_buckets
        chunked = length > self.chunk_length
        if chunked and num_buckets is None:
            if live_length is not None:
                raise ValueError("num_buckets=None: attention over a growing sequence (live_length) needs a fixed "
                                 "bucket count; HF's rule would change it with the length")
            num_buckets = default_num_buckets(length, self.chunk_length, self.max_position_embeddings)
        if chunked and buckets is None and rotations is None:
            n = self.num_hashes if num_hashes is None else num_hashes
            if n < 1:
                raise ValueError(f"num_hashes: must be >= 1, got {n}")
            shape = (self.num_heads, self.head_dim, n, rotation_size(num_buckets) // 2)
            rotations = jax.random.normal(self.make_rng("lsh"), shape, jnp.float32)
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out, buckets, probs = lsh_attention(
            query_key, value, chunk_length=self.chunk_length, num_buckets=num_buckets,
            num_chunks_before=self.num_chunks_before, num_chunks_after=self.num_chunks_after,
            rotations=rotations, buckets=buckets, attention_mask=attention_mask, causal=self.causal,
            dropout_rate=self.dropout_rate, dropout_rng=dropout_rng, deterministic=deterministic,
            return_probs=return_probs, dtype=self.dtype, live_length=live_length,
        )
        out = out.reshape(out.shape[:-2] + (width,))
        out = nn.with_logical_constraint(out, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_HEADS))
        return LSHAttentionOutput(out, buckets, probs)
