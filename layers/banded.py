"""Sliding-window attention with global tokens (Longformer's), in blocked form with static shapes.

Every position has a *key mode* (HF's merged mask): 0 padding, 1 local, 2 global. With one-sided window ``w``:

- a **local or padded query** ``i`` attends to the local keys ``j`` with ``|i - j| <= w`` and to every global key
  (each key once: a global key inside the band is counted in its global column only), with the local ``key`` and
  ``value`` projections; padded queries return 0;
- a **global query** (slot ``g``, the g-th global token in position order) attends to every non-padded key, with
  its own projections ``global_query`` / ``global_key`` / ``global_value``; its output replaces the local one.

Blocked band: the length is cut into blocks of ``w``; block ``c`` attends to the keys of blocks ``c - 1, c, c + 1``
(an invalid block beyond each end, no wrap), one dense einsum giving ``[w, 3w]`` scores per block, of which the
band ``|i - j| <= w`` is kept by a mask: ``3w / (2w + 1)``, about 1.5x the band's products, against HF's ~2x
(overlapping 2w-chunks) and its copies. Global tokens live in ``G`` static *slots* (``GlobalTokens``: position of
each slot, validity, and each position's slot), so nothing has a data-dependent shape; ``G = 0`` compiles the
purely local path. Softmax is fp32; masked scores are the finite ``finfo(float32).min``, so a padded row (no valid
key) is finite before it is zeroed and carries no NaN into the gradient.

Layouts: ``query/key/value/global_key/global_value [batch, length, heads, head_dim]``, ``global_query [batch, G,
heads, head_dim]`` (the global projection of the slots' rows), ``key_mode [batch, length]`` int. Returned
probabilities, as HF returns them (after dropout): ``probs [batch, heads, length, G + 2w + 1]`` (weights to the global slots, then
the band at offsets ``-w .. w``; zero on global and padded rows) and ``global_probs [batch, heads, length, G]``
(slot g's weights over the keys; an unused slot holds the uniform ``1 / length``, as HF).

The same body runs on a whole sequence or, under ``shard_map``, on one shard of it (:class:`ShardContext`; see
``layers.sequence_parallel.sharded_banded_attention``): the neighbouring blocks come from the adjacent shards, the
slots' local keys and values are gathered with a ``psum``, and the global rows' softmax is combined across shards.

``banded_attention_reference`` is the slow twin: dense ``[length, length]`` masks through
``layers.attention.dot_product_attention``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from layers.attention import dot_product_attention
from layers.dropout import keep_mask_block, mask_seeds

Array = jax.Array

PAD, LOCAL, GLOBAL = 0, 1, 2  # key modes
MASK_VALUE = float(jnp.finfo(jnp.float32).min)
# Query positions per step of the local rows: longer sequences run as a scan over steps whose scores are recomputed
# in the backward pass, so the [positions, heads, 3w] scores and their gradients live one step at a time.
CHUNK_LENGTH = 2048


class GlobalTokens(NamedTuple):
    """The static slots of the global tokens (see :func:`global_tokens`).

    ``index [batch, G]`` int32: position of slot g (0 where unused); ``valid [batch, G]`` bool: slot g is used;
    ``slot [batch, length]`` int32: the slot of each global position, -1 elsewhere.
    """

    index: Array
    valid: Array
    slot: Array


class BandedAttentionOutput(NamedTuple):
    """``out [batch, length, heads, head_dim]``; ``probs`` and ``global_probs`` (HF's layouts, see the module
    docstring) or None when not asked for (``global_probs`` is also None with no slots)."""

    out: Array
    probs: Array | None = None
    global_probs: Array | None = None


def global_tokens(key_mode: Array, max_global: int) -> GlobalTokens:
    """Slots of the global positions (``key_mode == 2``) in position order, ``max_global`` of them per row.

    A row with more global tokens than slots keeps the first ``max_global`` (its callers check counts first).
    ``key_mode [batch, length]`` -> :class:`GlobalTokens`.
    """
    batch, length = key_mode.shape
    is_global = key_mode == GLOBAL
    rank = jnp.cumsum(is_global, axis=1, dtype=jnp.int32) - 1
    slot = jnp.where(is_global & (rank < max_global), rank, -1)
    rows = jnp.arange(batch)[:, None]
    index = jnp.zeros((batch, max_global), jnp.int32).at[rows, jnp.where(slot >= 0, slot, max_global)].set(
        jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)), mode="drop")
    valid = jnp.arange(max_global)[None, :] < jnp.sum(is_global, axis=1)[:, None]
    return GlobalTokens(index, valid, slot)


def check_banded_inputs(query_shape: tuple[int, ...], key_mode_shape: tuple[int, ...], one_sided_window: int,
                        local_length: int | None = None) -> None:
    """Static checks (before tracing): ValueError naming the argument and the rule."""
    if len(query_shape) != 4:
        raise ValueError(f"query: expected rank 4 [batch, length, heads, head_dim], got shape {query_shape}")
    if isinstance(one_sided_window, bool) or not isinstance(one_sided_window, int) or one_sided_window < 1:
        raise ValueError(f"one_sided_window: must be a positive int, got {one_sided_window!r}")
    if tuple(key_mode_shape) != tuple(query_shape[:2]):
        raise ValueError(f"key_mode: expected shape {tuple(query_shape[:2])} [batch, length], got "
                         f"{tuple(key_mode_shape)}")
    length = query_shape[1] if local_length is None else local_length
    if length % one_sided_window:
        what = "length" if local_length is None else "the local length (length / shards)"
        raise ValueError(f"one_sided_window: {what} {length} must be a multiple of one_sided_window="
                         f"{one_sided_window} (the block size); pad the sequence")


@dataclasses.dataclass(frozen=True)
class ShardContext:
    """Where the body of :func:`banded_attention_shard` runs: on the whole sequence (``axis`` None), or inside a
    ``shard_map`` on shard ``axis_index(axis)`` of ``shards`` contiguous pieces of the length (and, with
    ``batch_axis``, on a piece of the batch)."""

    axis: str | None = None
    shards: int = 1
    batch_axis: str | None = None

    def position_offset(self, local_length: int):
        return 0 if self.axis is None else lax.axis_index(self.axis) * local_length

    def batch_offset(self, local_batch: int):
        return 0 if self.batch_axis is None else lax.axis_index(self.batch_axis) * local_batch

    def neighbour_blocks(self, blocks: Array) -> tuple[Array, Array]:
        """``blocks [batch, n, w, ...]`` -> the block before the first and after the last, ``[batch, 1, w, ...]``
        each: from the adjacent shards, zeros (padding) beyond the ends of the sequence."""
        first, last = blocks[:, :1], blocks[:, -1:]
        if self.axis is None or self.shards == 1:
            return jnp.zeros_like(last), jnp.zeros_like(first)
        # ppermute leaves a device nobody sends to with zeros: shard 0 gets no left block, the last no right one.
        left = lax.ppermute(last, self.axis, [(i, i + 1) for i in range(self.shards - 1)])
        right = lax.ppermute(first, self.axis, [(i + 1, i) for i in range(self.shards - 1)])
        return left, right

    def take_positions(self, t: Array, index: Array) -> Array:
        """``t [batch, local_length, ...]`` at the global positions ``index [batch, G]`` -> ``[batch, G, ...]``:
        each shard contributes the rows it holds (zeros for the others), summed over the shards."""
        local = t.shape[1]
        at = index - self.position_offset(local)
        inside = (at >= 0) & (at < local)
        rows = jnp.take_along_axis(t, jnp.clip(at, 0, local - 1).reshape(at.shape + (1,) * (t.ndim - 2)), axis=1)
        if self.axis is None:
            return rows
        rows = jnp.where(inside.reshape(inside.shape + (1,) * (t.ndim - 2)), rows, jnp.zeros((), t.dtype))
        return lax.psum(rows, self.axis)

    def sum(self, x: Array) -> Array:
        return x if self.axis is None else lax.psum(x, self.axis)

    def max(self, x: Array) -> Array:
        return x if self.axis is None else lax.pmax(x, self.axis)


def _blocks(t: Array, w: int) -> Array:
    """``[batch, length, ...]`` -> ``[batch, length / w, w, ...]``."""
    return t.reshape((t.shape[0], t.shape[1] // w, w) + t.shape[2:])


def _head_blocks(t: Array, w: int) -> Array:
    """``[batch, length, heads, d]`` -> ``[batch, length / w, heads, w, d]``: the layout of a batched matmul over
    (batch, block, head), so the products need no transposes of their operands or results."""
    return jnp.swapaxes(_blocks(t, w), 2, 3)


def _windows(blocks: Array, left: Array, right: Array) -> Array:
    """Blocks ``[batch, n, ..., w, (d)]`` (the position axis 2 for key modes, 3 for heads' blocks) with the blocks
    before and after (``[batch, 1, ...]``) -> ``[.., 3w, ..]``: blocks ``c - 1, c, c + 1`` side by side for every c."""
    ext = jnp.concatenate([left, blocks, right], axis=1)
    n = blocks.shape[1]
    axis = 2 if blocks.ndim == 3 else 3
    return jnp.concatenate([ext[:, :n], ext[:, 1:n + 1], ext[:, 2:]], axis=axis)


def _dropout(probs: Array, rate: float, seeds: Array, global_shape: tuple[int, ...], offset: tuple) -> Array:
    keep = keep_mask_block(seeds, probs.shape, rate, global_shape=global_shape, offset=offset)
    return jnp.where(keep, probs / (1.0 - rate), 0.0)


def _blocks_per_step(blocks: int, w: int, chunk_length: int | None) -> int:
    """The largest divisor of ``blocks`` that keeps a step at most ``chunk_length`` positions (at least one)."""
    if chunk_length is None or blocks * w <= chunk_length:
        return blocks
    per = max(1, chunk_length // w)
    while blocks % per:
        per -= 1
    return per


def banded_attention_shard(
    query: Array, key: Array, value: Array, key_mode: Array, *, one_sided_window: int,
    slots: GlobalTokens | None = None, global_query: Array | None = None, global_key: Array | None = None,
    global_value: Array | None = None, dropout_rate: float = 0.0, seeds: Array | None = None,
    return_probs: bool = False, dtype: Any = None, chunk_length: int | None = CHUNK_LENGTH,
    shard: ShardContext = ShardContext(), global_shape: tuple[int, int] | None = None,
) -> BandedAttentionOutput:
    """The body of :func:`banded_attention` on a piece of the sequence (``shard``); arguments as there, except
    ``seeds [2, 2]`` uint32 (local and global dropout mask seeds, None: no dropout) and ``global_shape`` (the whole
    ``(batch, length)``, for the dropout masks' global indices; default the arguments' own)."""
    batch, local, heads, head_dim = query.shape
    w = one_sided_window
    dtype = dtype or query.dtype
    g = 0 if slots is None else slots.index.shape[1]
    total_batch, total_length = global_shape or (batch, local)
    # Scaled before the products, as HF does.
    blocks = (_head_blocks((query / math.sqrt(head_dim)).astype(dtype), w), _head_blocks(key.astype(dtype), w),
              _head_blocks(value.astype(dtype), w), _blocks(key_mode, w))  # [B, n, H, w, d] and [B, n, w]
    halos = tuple(shard.neighbour_blocks(t) for t in blocks[1:])
    key_g = value_g = None
    if g:  # [B, H, G, d]: the slots' local keys and values
        key_g, value_g = (jnp.swapaxes(shard.take_positions(t.astype(dtype), slots.index), 1, 2) for t in (key, value))
    r = jnp.arange(w)[:, None]
    first_block = shard.position_offset(local) // w

    def rows(q, k, v, mode, halos, start):
        """Blocks ``start ..`` of the shard: queries ``q [B, m, H, w, d]``, keys / values / modes of the same
        blocks and the blocks around them -> (out ``[B, m, H, w, d]`` fp32, probs ``[B, m, H, w, G + 3w]``)."""
        k, v, mode = (_windows(t, *halo) for t, halo in zip((k, v, mode), halos))  # [B, m, H, 3w, d], [B, m, 3w]
        j = jnp.arange(3 * w)[None, :]
        in_band = (j >= r) & (j <= r + 2 * w)  # query r of a block, key j of its window: |i - j| <= w
        scores = jnp.einsum("bchqd,bchkd->bchqk", q, k, preferred_element_type=jnp.float32)
        scores = jnp.where(in_band & (mode == LOCAL)[:, :, None, None, :], scores, MASK_VALUE)
        if g:
            scores_g = jnp.einsum("bchqd,bhgd->bchqg", q, key_g, preferred_element_type=jnp.float32)
            scores_g = jnp.where(slots.valid[:, None, None, None, :], scores_g, MASK_VALUE)
            scores = jnp.concatenate([scores_g, scores], axis=-1)
        probs = jax.nn.softmax(scores, axis=-1)
        own = mode[:, :, w:2 * w]  # the queries' own modes (the middle block of each window)
        probs = jnp.where((own != PAD)[:, :, None, :, None], probs, 0.0)  # padded queries: 0
        if seeds is not None:
            probs = _dropout(probs, dropout_rate, seeds[0], (total_batch, total_length // w, heads, w, g + 3 * w),
                             (shard.batch_offset(batch), first_block + start, 0, 0, 0))
        p = probs.astype(dtype)
        out = jnp.einsum("bchqk,bchkd->bchqd", p[..., g:], v, preferred_element_type=jnp.float32)
        if g:
            out = out + jnp.einsum("bchqg,bhgd->bchqd", p[..., :g], value_g, preferred_element_type=jnp.float32)
        return out, (probs if return_probs else None)

    n = local // w
    per = _blocks_per_step(n, w, chunk_length)
    if per == n:
        out, probs = rows(*blocks, halos, 0)
    else:
        # Steps of `per` blocks, each recomputed in the backward pass: the scores live one step at a time. A step's
        # surrounding blocks are its neighbours' edge blocks (or the shard's halo at either end).
        steps = n // per
        split = lambda t: jnp.moveaxis(t.reshape((batch, steps, per) + t.shape[2:]), 1, 0)  # noqa: E731
        edges = tuple((jnp.concatenate([left, t[:, per - 1:-1:per]], axis=1),
                       jnp.concatenate([t[:, per::per], right], axis=1))
                      for t, (left, right) in zip(blocks[1:], halos))
        step_halos = tuple(tuple(jnp.moveaxis(e, 1, 0)[:, :, None] for e in pair) for pair in edges)
        body = jax.checkpoint(lambda _, xs: (None, rows(*xs[:4], xs[4], xs[5] * per)), prevent_cse=False,
                              policy=jax.checkpoint_policies.nothing_saveable)
        _, (out, probs) = lax.scan(body, None, (*(split(t) for t in blocks), step_halos, jnp.arange(steps)))
        merge = lambda t: jnp.moveaxis(t, 0, 1).reshape((batch, n) + t.shape[3:])  # noqa: E731
        out, probs = merge(out), None if probs is None else merge(probs)
    out = jnp.swapaxes(out, 2, 3).reshape(batch, local, heads, head_dim)

    global_probs = None
    if g and global_query is not None:
        qg = (global_query / math.sqrt(head_dim)).astype(dtype)
        scores = jnp.einsum("bghd,blhd->bhgl", qg, global_key.astype(dtype), preferred_element_type=jnp.float32)
        # An unused slot masks its whole row (uniform weights, as HF), a used one the padded keys.
        ok = (key_mode != PAD)[:, None, None, :] & slots.valid[:, None, :, None]
        scores = jnp.where(ok, scores, MASK_VALUE)
        top = shard.max(lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
        e = jnp.exp(scores - top)
        global_probs = e / shard.sum(jnp.sum(e, axis=-1, keepdims=True))  # [B, H, G, L]
        dropped_g = global_probs
        if seeds is not None:
            dropped_g = _dropout(global_probs, dropout_rate, seeds[1], (total_batch, heads, g, total_length),
                                 (shard.batch_offset(batch), 0, 0, shard.position_offset(local)))
        out_g = shard.sum(jnp.einsum("bhgl,blhd->bghd", dropped_g.astype(dtype), global_value.astype(dtype),
                                     preferred_element_type=jnp.float32))  # [B, G, H, d]
        rows = jnp.take_along_axis(out_g, jnp.maximum(slots.slot, 0)[:, :, None, None], axis=1)  # [B, L, H, d]
        out = jnp.where((slots.slot >= 0)[:, :, None, None], rows, out)
    out = out.astype(dtype)
    if not return_probs:
        return BandedAttentionOutput(out)
    # As HF returns them: after dropout.
    band = jnp.take_along_axis(probs[..., g:], (r + jnp.arange(2 * w + 1)[None, :])[None, None, None], axis=-1)
    local_probs = jnp.concatenate([probs[..., :g], band], axis=-1)  # [B, n, H, w, G + 2w + 1]
    local_probs = jnp.swapaxes(local_probs, 1, 2).reshape(batch, heads, local, g + 2 * w + 1)
    if global_probs is not None:
        # A global row's output came from its global attention: its local weights are reported as 0 (HF).
        local_probs = jnp.where((slots.slot >= 0)[:, None, :, None], 0.0, local_probs)
        global_probs = jnp.swapaxes(dropped_g, 2, 3)
    return BandedAttentionOutput(out, local_probs, global_probs)


def banded_attention(
    query: Array, key: Array, value: Array, key_mode: Array, *, one_sided_window: int,
    slots: GlobalTokens | None = None, global_query: Array | None = None, global_key: Array | None = None,
    global_value: Array | None = None, dropout_rate: float = 0.0, dropout_rng: Array | None = None,
    deterministic: bool = True, return_probs: bool = False, dtype: Any = None,
    chunk_length: int | None = CHUNK_LENGTH,
) -> BandedAttentionOutput:
    """Sliding-window attention with global tokens (module docstring).

    Args:
      query, key, value: ``[batch, length, heads, head_dim]``, the local projections (unscaled: queries are divided
        by ``sqrt(head_dim)`` here, as HF does); ``length`` a multiple of ``one_sided_window``.
      key_mode: ``[batch, length]`` int, 0 padding / 1 local / 2 global.
      one_sided_window: ``w`` (HF's ``attention_window // 2``): keys at distance at most w are in the band.
      slots: the global slots (:func:`global_tokens` of ``key_mode``); None (or zero slots) for no global token.
      global_query: ``[batch, G, heads, head_dim]``, the global query projection of the slots' rows;
        global_key, global_value: ``[batch, length, heads, head_dim]``, the global key / value projections of
        every row. None (all three) computes only the local rows (a global row then keeps its local output).
      dropout_rate / dropout_rng / deterministic: attention-probability dropout (``layers.dropout``'s hashed masks).
      return_probs: also return the probabilities in HF's layouts.
      dtype: compute dtype of the products (default the query's); softmax is fp32.
      chunk_length: query positions per step of the local rows (:data:`CHUNK_LENGTH`; None: one step); the
        values do not depend on it.
    Returns:
      :class:`BandedAttentionOutput`.
    """
    check_banded_inputs(tuple(query.shape), tuple(key_mode.shape), one_sided_window)
    return banded_attention_shard(
        query, key, value, key_mode, one_sided_window=one_sided_window, slots=slots, global_query=global_query,
        global_key=global_key, global_value=global_value, dropout_rate=dropout_rate,
        seeds=dropout_seeds(dropout_rate, dropout_rng, deterministic), return_probs=return_probs, dtype=dtype,
        chunk_length=chunk_length)


def dropout_seeds(rate: float, rng: Array | None, deterministic: bool) -> Array | None:
    """``[2, 2]`` uint32 mask seeds (local probs, global probs) when dropout is active, else None."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate: must be in [0, 1), got {rate!r}")
    if deterministic or rate == 0.0:
        return None
    if rng is None:
        raise ValueError("dropout_rng: required when deterministic=False and dropout_rate > 0")
    return jnp.stack([mask_seeds(jax.random.fold_in(rng, i)) for i in range(2)])


def banded_attention_reference(query, key, value, key_mode, *, one_sided_window: int, slots=None,
                               global_query=None, global_key=None, global_value=None):
    """Slow twin (tests only): dense ``[length, length]`` masks through ``dot_product_attention``.

    Returns ``(out [batch, length, heads, head_dim], probs [batch, heads, length, length] (the local rows' weights
    over every key; zero on global and padded rows), global_probs [batch, heads, G, length] or None)``.
    """
    batch, length = key_mode.shape
    position = jnp.arange(length)
    near = jnp.abs(position[:, None] - position[None, :]) <= one_sided_window
    is_global = key_mode == GLOBAL
    allowed = (near[None] & (key_mode == LOCAL)[:, None, :]) | is_global[:, None, :]  # [B, L, L]
    out, probs = dot_product_attention(query, key, value, mask=allowed[:, None])
    is_row = key_mode != PAD
    out = jnp.where(is_row[:, :, None, None], out, 0.0)
    probs = jnp.where(is_row[:, None, :, None], probs, 0.0)
    if slots is None or global_query is None:
        return out, probs, None
    g = slots.index.shape[1]
    out_g, global_probs = dot_product_attention(global_query, global_key, global_value,
                                                mask=(key_mode != PAD)[:, None, None, :])
    global_probs = jnp.where(slots.valid[:, None, :, None], global_probs, 1.0 / length)
    rank = jnp.cumsum(is_global, axis=1) - 1  # the g-th global token (position order) is slot g
    owner = (rank[:, :, None] == jnp.arange(g)) & is_global[:, :, None]  # [B, L, G]
    rows = jnp.einsum("blg,bghd->blhd", owner.astype(out.dtype), out_g)
    out = jnp.where(is_global[:, :, None, None], rows, out)
    probs = jnp.where(is_global[:, None, :, None], 0.0, probs)
    return out, probs, global_probs
