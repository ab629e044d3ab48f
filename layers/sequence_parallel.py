"""Sequence parallelism: MEGA's damped EMA, Reformer's chunked local attention and Longformer's banded attention
with the length sharded.

Both functions take a ``jax.sharding.Mesh`` and the name of its ``sequence`` axis; activations are split along
``length`` into ``S = mesh.shape[axis]`` contiguous shards of ``Ls = length / S`` positions, one per device, and
the work runs under ``jax.shard_map`` (optionally with ``batch`` split over a second mesh axis, ``batch_axis``).
Each is the unsharded primitive (``layers.ema.damped_ema``, ``layers.local.local_attention``, its own reference
twin's subject) computed shard by shard, plus a small cross-shard exchange:

Damped EMA (causal direction; the EMA is linear in its state, so shards compose exactly)::

    per shard r (from a zero state):   y_r, e_r = damped_ema_filter(x_r, return_state=True)   # e_r [B, D, N]
    state entering shard s:            h_in[s] = sum_{r<s} q^(Ls*(s-1-r)) e_r  (+ q^(Ls*s) state)
    correction, local t in [0, Ls):    y_s[t] += sum_n readout * q^(t+1) * h_in[s]

``e_r`` of every shard arrive by one ``all_gather`` (``[S, B, D, N]``), so the cost per device is the local EMA
(O(Ls)) plus O(S*B*D*N) for the combine, with no sequential chain over shards. Bidirectional runs the same with the
second half of the params over the reversed sequence: the shard order reverses, so the carry comes from the right.

Truncation ``k < length`` uses the identity ``layers.ema`` uses for ``scan``/``chunked``: the truncated filter is
the full filter of ``x`` plus the full filter of ``x`` delayed by ``k`` with ``beta' = -beta * q^k`` (the delayed
input leaves the window exactly as it reaches age ``k``). Both streams share ``q``, so their states add and the
carry above is unchanged; the delayed stream of a shard needs the ``k``-shifted input, i.e. at most two
``ppermute`` of (parts of) one shard from ``k // Ls`` and ``k // Ls + 1`` shards away. Cost stays O(Ls) for any k.
Price: inside a shard the two full filters cancel down to the truncated one, so fp32 error grows with about
``Ls / k`` when ``q`` is close to 1 (the chunked algorithm of ``layers.ema`` has the same trade at chunk scale).

Local attention: a shard holds ``Ls / chunk_length`` whole chunks and fetches ``num_chunks_before`` chunks from the
left neighbour and ``num_chunks_after`` from the right one with ``ppermute``. The unsharded primitive takes
neighbouring chunks *circularly* (``look_adjacent``), so the neighbours wrap too: shard 0's left halo is the end
of shard S-1. Key positions are the wrapped global positions, so the causal mask removes exactly what it removes
unsharded.

Banded attention (``layers.banded``): a shard holds whole blocks of the one-sided window ``w`` and runs the same
body as the unsharded function (``banded_attention_shard``), with the block before its first and after its last
from the adjacent shards (``ppermute``; no wrap: the ends of the sequence see padding), the global slots' local
keys and values gathered by a ``psum`` of each shard's rows, and the global rows' softmax over the whole length
combined from per-shard maxima, sums and partial outputs (``pmax`` / ``psum``). Cost per device: its own
``Ls / length`` of the band and of the global rows, plus O(G) rows of communication.

Attention dropout is the unsharded one: ``layers.dropout`` hashes each element's global index, so a shard computes
its block of the very mask ``local_attention`` draws for the whole sequence (``keep_mask_block``).

Not supported (``ValueError`` before tracing): a halo wider than one shard (``num_chunks_before/after *
chunk_length > Ls``); a sequence no longer than one chunk (the unsharded function switches to full attention);
``truncation`` or ``bidirectional`` together with ``state``/``return_state`` (as in ``layers.ema``).

How a model is told to shard: a module that can run sequence-parallel has a field ``sequence_sharding``
(:class:`SequenceSharding`: the mesh, its length axis and the mesh axes that split the batch), set by whoever
builds the model (``train/state.py`` from the run's mesh and logical rules). A module never reads the mesh from
the context, so the same module object always computes the same way. :func:`call_sharded` runs one of the
functions here under that description.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from layers import ema
from layers.banded import (
    CHUNK_LENGTH,
    BandedAttentionOutput,
    GlobalTokens,
    ShardContext,
    banded_attention_shard,
    check_banded_inputs,
    dropout_seeds,
)
from layers.dropout import keep_mask_block, mask_seeds
from layers.local import MASK_VALUE, LocalAttentionOutput, check_chunked_inputs

Array = jax.Array


# ----------------------------------------------------------------------------------------------------------------
# What a sequence-parallel module is given.


@dataclasses.dataclass(frozen=True)
class SequenceSharding:
    """Split ``length`` over mesh axis ``axis`` of ``mesh`` (and ``batch`` over ``batch_axes``, major to minor).

    Hashable (a module field). ``batch_axes`` are the mesh axes the caller's rules put the batch on (the same
    layout as the activations around the shard_map, so nothing is resharded); axes of size 1 are ignored.
    """

    mesh: Mesh
    axis: str = "sequence"
    batch_axes: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise ValueError(f"SequenceSharding.mesh: must be a jax.sharding.Mesh, got {type(self.mesh).__name__}")
        if self.axis not in self.mesh.axis_names:
            raise ValueError(f"SequenceSharding.axis={self.axis!r} is not an axis of the mesh "
                             f"{tuple(self.mesh.axis_names)}")
        object.__setattr__(self, "batch_axes", tuple(self.batch_axes))
        for a in self.batch_axes:
            if a not in self.mesh.axis_names or a == self.axis:
                raise ValueError(f"SequenceSharding.batch_axes={self.batch_axes!r}: {a!r} must be a mesh axis other "
                                 f"than axis={self.axis!r}")

    @property
    def shards(self) -> int:
        """How many pieces the length is split into (1: the module runs unsharded)."""
        return int(self.mesh.shape[self.axis])

    def layout(self, batch: int, length: int) -> tuple[str, ...] | None:
        """The batch axes to call this module's functions with on ``[batch, length, ...]`` activations: those of
        size > 1, or None (batch replicated inside the shard_map: correct, with redundant work) when there are
        none or the batch does not divide over them. A length the shards do not divide raises ``ValueError``."""
        if length % self.shards:
            raise ValueError(f"input length {length} is not a multiple of the {self.axis!r} mesh axis size "
                             f"{self.shards} (the model is sequence-parallel over it); pad the input")
        used = tuple(a for a in self.batch_axes if self.mesh.shape[a] > 1)
        if not used or batch % int(np.prod([self.mesh.shape[a] for a in used])):
            return None
        return used


def call_sharded(fn: Callable[..., Any], sharding: SequenceSharding, batch: int, length: int, *args, **kwargs):
    """``fn(*args, mesh=, axis=, batch_axis=, **kwargs)`` (``sharded_damped_ema`` / ``sharded_local_attention``)
    laid out by ``sharding`` for ``[batch, length, ...]`` activations."""
    return fn(*args, mesh=sharding.mesh, axis=sharding.axis, batch_axis=sharding.layout(batch, length), **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Validation (static shapes only, so it fails before tracing).


def _batch_axes(batch_axis) -> tuple[str, ...]:
    """``batch_axis`` (None, a mesh axis name, or a tuple of them, major to minor) as a tuple."""
    if batch_axis is None:
        return ()
    return (batch_axis,) if isinstance(batch_axis, str) else tuple(batch_axis)


def _check_mesh(mesh, axis, batch_axis, batch: int, length: int) -> int:
    """Returns the number of sequence shards."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: must be a jax.sharding.Mesh, got {type(mesh).__name__}")  # noqa: TRY004
    if axis not in mesh.axis_names:
        raise ValueError(f"axis: {axis!r} is not an axis of the mesh {tuple(mesh.axis_names)}")
    names = _batch_axes(batch_axis)
    for name in names:
        if name not in mesh.axis_names or name == axis:
            raise ValueError(f"batch_axis: must be None or mesh axes other than axis={axis!r}, got {batch_axis!r} "
                             f"for mesh axes {tuple(mesh.axis_names)}")
    split = int(np.prod([mesh.shape[a] for a in names]))
    if batch % split:
        raise ValueError(f"batch: {batch} must be a multiple of the {split} devices of batch_axis={batch_axis!r}")
    shards = mesh.shape[axis]
    if length % shards:
        raise ValueError(f"length: {length} must be a multiple of mesh.shape[{axis!r}]={shards} (pad the sequence)")
    return shards


# ----------------------------------------------------------------------------------------------------------------
# Damped EMA.


def _half_params(params: Mapping[str, Array], half: slice) -> dict[str, Array]:
    """Causal params of one direction: rows ``half`` of the four ``[D', N]`` params, ``residual_weight`` as is."""
    out = {name: params[name][half] for name in ema.PARAM_NAMES[:4]}
    out["residual_weight"] = params["residual_weight"]
    return out


def _receive(block: Array, hops: int, *, axis: str, shards: int, reverse: bool) -> Array:
    """``block`` of the shard ``hops`` ranks earlier in processing order; zeros where there is none (no wrap).

    Rank = device index along ``axis`` forward, ``shards - 1 - index`` for the reversed (backward) direction.
    """
    if hops == 0:
        return block
    if hops >= shards:
        return jnp.zeros_like(block)
    step = -hops if reverse else hops
    return lax.ppermute(block, axis, [(i, i + step) for i in range(shards) if 0 <= i + step < shards])


def _delayed_stream(x: Array, delay: int, **ring) -> Array:
    """This shard's slice of the whole (direction's) sequence delayed by ``delay``, zeros before its start.

    ``x [B, Ls, D]`` -> ``[B, Ls, D]``: position t holds global ``t - delay``, i.e. shard ``rank - hops`` at
    ``t - within`` for ``t >= within`` and shard ``rank - hops - 1`` at ``Ls + t - within`` before that.
    """
    local = x.shape[1]
    hops, within = divmod(delay, local)
    near = _receive(x[:, : local - within], hops, **ring)
    if not within:
        return near
    return jnp.concatenate([_receive(x[:, local - within:], hops + 1, **ring), near], axis=1)


def _causal_shard(half: Mapping[str, Array], x: Array, state: Array | None, *, axis: str, shards: int,
                  varying_axes: tuple[str, ...], reverse: bool, truncation: int | None, return_state: bool,
                  algorithm: str, chunk_size: int, precision) -> tuple[Array, Array | None]:
    """One direction of the EMA filter on this shard, the carry from earlier shards included.

    ``x [B, Ls, D]`` fp32, masked and (``reverse``) already flipped in time. Returns ``(y [B, Ls, D] fp32,
    final state [B, D, N] replicated over ``axis`` or None)``.
    """
    local = x.shape[1]
    length = local * shards
    zero = None
    if algorithm != "fft":
        # scan/chunked carry their state through lax.scan, whose carry must vary over the mesh axes like x does;
        # a zero state is free for them (the fft path would pay two more contractions, and needs none).
        zero = jnp.zeros((x.shape[0], x.shape[2], half["kernel_projection_matrix"].shape[1]), jnp.float32)
        zero = lax.pcast(zero, varying_axes, to="varying")
    run = lambda p, u: ema.damped_ema_filter(
        p, u, algorithm=algorithm, chunk_size=chunk_size, state=zero, return_state=True, precision=precision)
    coeffs = ema.ema_coefficients(half)
    y, end = run(half, x)
    if truncation is not None and truncation < length:
        leave = dict(half, ema_expansion_matrix=-half["ema_expansion_matrix"] * jnp.exp(truncation * coeffs.log_q))
        ring = {"axis": axis, "shards": shards, "reverse": reverse}
        y_leave, end_leave = run(leave, _delayed_stream(x, truncation, **ring))
        y, end = y + y_leave, end + end_leave

    index = lax.axis_index(axis)
    rank = shards - 1 - index if reverse else index
    ranks = jnp.arange(shards)
    ranks = shards - 1 - ranks if reverse else ranks
    hops = rank - 1 - ranks  # [S]: shard r's end state reaches this shard's start after `hops` whole shards
    # The clamp keeps exp finite where the weight is dropped: inf * 0 in the backward pass would be NaN.
    decay = jnp.exp((jnp.maximum(hops, 0) * local)[:, None, None] * coeffs.log_q)  # [S, D, N]
    weight = jnp.where((hops >= 0)[:, None, None], decay, 0.0)
    h_in = jnp.einsum("sdn,sbdn->bdn", weight, lax.all_gather(end, axis), precision=precision)
    if state is not None:
        h_in = h_in + jnp.exp(rank * local * coeffs.log_q) * state
    out_of_state = coeffs.readout[..., None] * jnp.exp(coeffs.log_q[..., None] * jnp.arange(1, local + 1))
    y = y + jnp.einsum("bdn,dnl->bld", h_in, out_of_state, precision=precision)

    final = None
    if return_state:
        final = lax.psum(jnp.exp((shards - 1 - rank) * local * coeffs.log_q) * end, axis)
        if state is not None:
            final = final + jnp.exp(length * coeffs.log_q) * state
    return y, final


def sharded_damped_ema(
    params: Mapping[str, Array],
    x: Array,
    padding_mask: Array | None = None,
    *,
    mesh: Mesh,
    axis: str = "sequence",
    batch_axis: str | None = None,
    bidirectional: bool = False,
    truncation: int | None = None,
    algorithm: str = "fft",
    chunk_size: int = 64,
    state: Array | None = None,
    return_state: bool = False,
    dtype: Any = None,
    precision=lax.Precision.HIGHEST,
) -> tuple[Array, Array | None]:
    """``layers.ema.damped_ema`` with ``length`` sharded over ``mesh`` axis ``axis`` (algorithm: module docstring).

    Args:
      params: as ``damped_ema`` (``[D', ndim]`` x4 and ``residual_weight [embed]``), replicated.
      x: ``[batch, length, embed]``; ``length`` a multiple of ``mesh.shape[axis]``.
      padding_mask: ``[batch, length]``, 1/True for real tokens.
      mesh / axis: the mesh and the name of the axis that splits ``length``.
      batch_axis: optional other mesh axis (or tuple of axes, major to minor) splitting ``batch`` (None: replicated
        over the other mesh axes).
      algorithm / chunk_size: the local algorithm of each shard (``"chunked"`` needs the local length
        ``length / shards`` to be a multiple of ``chunk_size``).
      state / return_state: carried state ``[batch, embed, ndim]`` in / out (causal, untruncated), as
        ``damped_ema``; the returned state is that after the last position of the last shard.
    Returns:
      ``(out [batch, length, embed] sharded like x, new_state [batch, embed, ndim] fp32 or None)``.
    """
    ema._check_call(params, x, padding_mask, bidirectional=bidirectional, truncation=truncation, algorithm="fft",
                    chunk_size=chunk_size, state=state, return_state=return_state)
    ema._check_algorithm(algorithm, chunk_size)
    batch, length, embed = x.shape
    shards = _check_mesh(mesh, axis, batch_axis, batch, length)
    local = length // shards
    if algorithm == "chunked" and local % chunk_size:
        raise ValueError(f"chunk_size: algorithm='chunked' needs the local length {local} (length {length} / "
                         f"{shards} shards) to be a multiple of chunk_size={chunk_size}")
    out_dtype = x.dtype if dtype is None else dtype
    options = {"axis": axis, "shards": shards, "varying_axes": (axis, *_batch_axes(batch_axis)),
               "truncation": truncation, "algorithm": algorithm, "chunk_size": chunk_size, "precision": precision}

    def shard(params, x, padding_mask, state):
        x32, masked = ema.ema_input(x, padding_mask)
        state = None if state is None else state.astype(jnp.float32)
        y, final = _causal_shard(_half_params(params, slice(0, embed)), masked, state, reverse=False,
                                 return_state=return_state, **options)
        if bidirectional:
            y_back, _ = _causal_shard(_half_params(params, slice(embed, 2 * embed)), jnp.flip(masked, axis=1), None,
                                      reverse=True, return_state=False, **options)
            y = y + jnp.flip(y_back, axis=1)
        return ema.ema_output(y, x32, params, out_dtype), final

    sharded = jax.shard_map(
        shard, mesh=mesh,
        in_specs=(P(), P(batch_axis, axis, None), P(batch_axis, axis), P(batch_axis, None, None)),
        out_specs=(P(batch_axis, axis, None), P(batch_axis, None, None)),
    )
    return sharded(dict(params), x, padding_mask, state)


# ----------------------------------------------------------------------------------------------------------------
# Chunked local attention.


def _with_halo(t: Array, before: int, after: int, *, pos_axis: int, axis: str, shards: int) -> Array:
    """``t`` with the last ``before`` positions of the left shard prepended and the first ``after`` positions of
    the right shard appended along ``pos_axis``, both circular over the ``axis`` ring (as ``look_adjacent``)."""
    pieces = []
    if before:
        tail = lax.slice_in_dim(t, t.shape[pos_axis] - before, t.shape[pos_axis], axis=pos_axis)
        pieces.append(lax.ppermute(tail, axis, [(i, (i + 1) % shards) for i in range(shards)]))
    pieces.append(t)
    if after:
        head = lax.slice_in_dim(t, 0, after, axis=pos_axis)
        pieces.append(lax.ppermute(head, axis, [(i, (i - 1) % shards) for i in range(shards)]))
    return jnp.concatenate(pieces, axis=pos_axis) if len(pieces) > 1 else t


def _windows(t: Array, num_chunks: int, window: int, chunk_axis: int) -> Array:
    """``[..., num_chunks + window - 1, C, ...]`` -> ``[..., num_chunks, window * C, ...]``: chunk c gets chunks
    ``c .. c + window - 1`` of the haloed sequence, i.e. ``c - before .. c + after`` of the shard (as
    ``look_adjacent``, whose order it keeps)."""
    pieces = [lax.slice_in_dim(t, i, i + num_chunks, axis=chunk_axis) for i in range(window)]
    return jnp.concatenate(pieces, axis=chunk_axis + 1)


def sharded_local_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mesh: Mesh,
    axis: str = "sequence",
    batch_axis: str | None = None,
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
    """``layers.local.local_attention`` with ``length`` sharded over ``mesh`` axis ``axis``.

    Args:
      query, key, value: ``[batch, length, heads, head_dim]``; ``length / mesh.shape[axis]`` (the local length)
        a multiple of ``chunk_length`` and at least ``max(num_chunks_before, num_chunks_after) * chunk_length``,
        and ``length > chunk_length``.
      chunk_length / num_chunks_before / num_chunks_after / attention_mask ``[batch, length]`` / causal /
        dropout_rate / dropout_rng / deterministic / dtype: as ``local_attention`` (circular neighbours, HF's
        sum-of-values for a query with no valid key, the same dropout mask).
      mesh / axis / batch_axis: as ``sharded_damped_ema``.
    Returns:
      ``LocalAttentionOutput(out [batch, length, heads, head_dim] in dtype, probs or None)``; ``probs`` fp32
      ``[batch, heads, num_chunks, chunk_length, window * chunk_length]`` with ``num_chunks`` sharded.
    """
    check_chunked_inputs("query", tuple(query.shape), chunk_length, num_chunks_before, num_chunks_after,
                         attention_mask, dropout_rate)
    if tuple(key.shape) != tuple(query.shape) or tuple(value.shape) != tuple(query.shape):
        raise ValueError(f"key/value: shapes {key.shape}/{value.shape} must equal query shape {query.shape}")
    dropping = not deterministic and dropout_rate > 0.0
    if dropping and dropout_rng is None:
        raise ValueError("dropout_rng: required when deterministic=False and dropout_rate > 0")
    batch, length, heads, head_dim = query.shape
    if length <= chunk_length:
        raise ValueError(f"length: {length} must exceed chunk_length={chunk_length}; a single chunk runs full "
                         "attention in local_attention, which there is no point in sharding")
    shards = _check_mesh(mesh, axis, batch_axis, batch, length)
    local = length // shards
    if local % chunk_length:
        raise ValueError(f"chunk_length: the local length {local} (length {length} / {shards} shards) must be a "
                         f"multiple of chunk_length={chunk_length}")
    for field, value_ in (("num_chunks_before", num_chunks_before), ("num_chunks_after", num_chunks_after)):
        if value_ * chunk_length > local:
            raise ValueError(f"{field}: the halo {value_} * chunk_length={chunk_length} exceeds the local length "
                             f"{local}; halos come from the adjacent shard only (use fewer shards)")
    dtype = dtype or query.dtype
    num_chunks = local // chunk_length
    window = num_chunks_before + 1 + num_chunks_after
    before, after = num_chunks_before * chunk_length, num_chunks_after * chunk_length
    halo = lambda t, pos_axis: _with_halo(t, before, after, pos_axis=pos_axis, axis=axis, shards=shards)

    probs_shape = (batch, heads, length // chunk_length, chunk_length, window * chunk_length)

    def shard(query, key, value, attention_mask, seeds):
        to_bhld = lambda t: jnp.swapaxes(t.astype(dtype), 1, 2)
        q, k, v = to_bhld(query), to_bhld(key), to_bhld(value)
        k = k / jnp.asarray(np.sqrt(head_dim), dtype)  # keys scaled, as local_attention (HF)
        chunk = lambda t: t.reshape(t.shape[:2] + (-1, chunk_length) + t.shape[3:])
        q = chunk(q)  # [B, H, n, C, d]
        k_window = _windows(chunk(halo(k, 2)), num_chunks, window, 2)  # [B, H, n, W*C, d]
        v_window = _windows(chunk(halo(v, 2)), num_chunks, window, 2)
        scores = jnp.einsum("bhncd,bhnkd->bhnck", q, k_window, preferred_element_type=jnp.float32)

        start = lax.axis_index(axis) * local
        q_pos = (start + jnp.arange(local)).reshape(num_chunks, chunk_length)[..., None]  # [n, C, 1]
        # Wrapped global positions of the haloed keys: the causal mask then drops exactly the wrapped keys.
        k_pos = (start - before + jnp.arange(local + before + after)) % length
        k_pos = _windows(k_pos.reshape(-1, chunk_length), num_chunks, window, 0)[:, None, :]  # [n, 1, W*C]
        valid = None
        if attention_mask is not None:
            key_valid = halo(attention_mask.astype(bool), 1).reshape(attention_mask.shape[0], -1, chunk_length)
            valid = _windows(key_valid, num_chunks, window, 1)[:, None, :, None, :]  # [B, 1, n, 1, W*C]
        if causal:
            valid = (q_pos >= k_pos) if valid is None else valid & (q_pos >= k_pos)
        if valid is not None:
            scores = jnp.where(valid, scores, MASK_VALUE)
        probs = jnp.exp(scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True))
        if dropping:
            # This shard's block of the mask of the whole [B, H, N, C, W*C] probabilities.
            first_row = 0 if batch_axis is None else lax.axis_index(batch_axis) * probs.shape[0]
            keep = keep_mask_block(seeds, probs.shape, dropout_rate, global_shape=probs_shape,
                                   offset=(first_row, 0, lax.axis_index(axis) * num_chunks, 0, 0))
            probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
        out = jnp.matmul(probs.astype(dtype), v_window).reshape(q.shape[:2] + (local, head_dim))
        return jnp.swapaxes(out, 1, 2), (probs if return_probs else None)

    seeds = mask_seeds(dropout_rng) if dropping else jnp.zeros((2,), jnp.uint32)
    seq = P(batch_axis, axis, None, None)
    out, probs = jax.shard_map(
        shard, mesh=mesh,
        in_specs=(seq, seq, seq, P(batch_axis, axis), P()),
        out_specs=(seq, P(batch_axis, None, axis, None, None)),
    )(query, key, value, attention_mask, seeds)
    return LocalAttentionOutput(out, probs)


# ----------------------------------------------------------------------------------------------------------------
# Banded attention with global tokens.


def sharded_banded_attention(
    query: Array,
    key: Array,
    value: Array,
    key_mode: Array,
    *,
    mesh: Mesh,
    axis: str = "sequence",
    batch_axis: str | None = None,
    one_sided_window: int,
    slots: GlobalTokens | None = None,
    global_query: Array | None = None,
    global_key: Array | None = None,
    global_value: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    return_probs: bool = False,
    dtype: Any = None,
    chunk_length: int | None = CHUNK_LENGTH,
) -> BandedAttentionOutput:
    """``layers.banded.banded_attention`` with ``length`` sharded over ``mesh`` axis ``axis``.

    Arguments as ``banded_attention`` (same values, gradients and dropout masks); the local length
    ``length / mesh.shape[axis]`` must be a multiple of ``one_sided_window``. ``slots`` and ``global_query``
    (``[batch, G, ...]``) are replicated over ``axis``; everything of length ``length`` is split along it, the
    returned probabilities too. mesh / axis / batch_axis: as ``sharded_damped_ema``.
    """
    check_banded_inputs(tuple(query.shape), tuple(key_mode.shape), one_sided_window)
    batch, length = key_mode.shape
    shards = _check_mesh(mesh, axis, batch_axis, batch, length)
    check_banded_inputs(tuple(query.shape), tuple(key_mode.shape), one_sided_window, local_length=length // shards)
    context = ShardContext(axis, shards, batch_axis)

    def shard(query, key, value, key_mode, slots, global_query, global_key, global_value, seeds):
        return banded_attention_shard(
            query, key, value, key_mode, one_sided_window=one_sided_window, slots=slots, global_query=global_query,
            global_key=global_key, global_value=global_value, dropout_rate=dropout_rate, seeds=seeds,
            return_probs=return_probs, dtype=dtype, chunk_length=chunk_length, shard=context,
            global_shape=(batch, length))

    seq, rows, per_slot = P(batch_axis, axis, None, None), P(batch_axis, axis), P(batch_axis, None)
    probs = P(batch_axis, None, axis, None)
    return jax.shard_map(
        shard, mesh=mesh,
        in_specs=(seq, seq, seq, rows, P() if slots is None else GlobalTokens(per_slot, per_slot, rows),
                  P(batch_axis, None, None, None), seq, seq, P()),
        out_specs=BandedAttentionOutput(seq, probs, probs),
    )(query, key, value, key_mode, slots, global_query, global_key, global_value,
      dropout_seeds(dropout_rate, dropout_rng, deterministic))


def sharded_take_positions(x: Array, index: Array, *, mesh: Mesh, axis: str = "sequence",
                           batch_axis: str | None = None) -> Array:
    """``x [batch, length, ...]`` split over ``axis``, at the positions ``index [batch, G]`` -> ``[batch, G, ...]``
    (replicated over ``axis``): each shard gives the rows it holds, summed, without gathering ``x``."""
    batch, length = x.shape[:2]
    shards = _check_mesh(mesh, axis, batch_axis, batch, length)
    context = ShardContext(axis, shards, batch_axis)
    rest = (None,) * (x.ndim - 2)
    return jax.shard_map(
        context.take_positions, mesh=mesh,
        in_specs=(P(batch_axis, axis, *rest), P(batch_axis, None)),
        out_specs=P(batch_axis, None, *rest),
    )(x, index)
