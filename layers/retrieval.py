"""Maximum-inner-product search (MIPS): the ``k`` rows of an index with the largest ``query . row``.

REALM's evidence index is 13.35M rows of 128 floats (6.8 GB fp32); scoring a batch of queries against all of it at
once would form a ``[queries, 13.35M]`` matrix (3.4 GB for 64 queries). Here the index is read in chunks of rows
inside one loop, keeping a running top-k:

    per chunk c:   s_c = queries @ index[c]^T            [Q, chunk]   (precision HIGHEST: exact fp32 products)
                   best = top_k(concat(best, top_k(s_c)))  [Q, k]

so memory is ``O(Q * (chunk + k))`` whatever the index size, and the loop is traced once. Ties go to the lower row
id, as ``lax.top_k`` over the full score matrix does: the running best always holds lower ids than the chunk, and
``top_k`` is stable, so the chunked result equals the full one exactly (scores and ids), ties included.

Sharded (:func:`sharded_mips_topk`): the index rows are split over one mesh axis (6.8 GB -> 0.85 GB per chip on 8);
every shard runs the chunked search on its rows with its global row offset, the per-shard ``[Q, k]`` lists are
``all_gather``-ed in shard order and merged with one more ``top_k`` (still exact, still lowest id first on ties).
:func:`sharded_take` gathers rows (embeddings, token ids) of such a row-sharded table by global id.

``approx=True`` selects each chunk's candidates with ``lax.approx_max_k`` (TPU's partial-reduction top-k, an
approximation with ``recall_target``; other backends compute it exactly) and merges them exactly.

Rows at or after ``num_valid`` are padding (an index padded to a multiple of the shard count) and are never
returned. ``mips_topk_reference`` is the slow twin: the full score matrix and one ``top_k``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

Array = jax.Array

DEFAULT_CHUNK = 16384  # rows scored per loop step: [64, 16384] fp32 scores are 4 MiB


class TopK(NamedTuple):
    """``scores [Q, k]`` (fp32, descending) and ``ids [Q, k]`` (int32 global row ids) of the best rows per query."""

    scores: Array
    ids: Array


def _check(queries, index, k, chunk, name: str = "index") -> None:
    if queries.ndim != 2 or index.ndim != 2 or queries.shape[1] != index.shape[1]:
        raise ValueError(f"queries must be [num_queries, dim] and {name} [num_rows, dim] with the same dim; got "
                         f"{tuple(queries.shape)} and {tuple(index.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: must be a positive int")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: must be a positive int (rows scored per step)")


def _scores(queries: Array, rows: Array, precision) -> Array:
    """``[Q, P] x [c, P] -> [Q, c]`` in fp32 (bf16 rows are accumulated in fp32)."""
    return jnp.einsum("qp,cp->qc", queries, rows.astype(queries.dtype), precision=precision,
                      preferred_element_type=jnp.float32)


def _select(scores: Array, k: int, approx: bool, recall_target: float) -> tuple[Array, Array]:
    """Up to ``k`` best columns of ``scores [Q, c]``: ``(values, positions)``, ``min(k, c)`` of them."""
    kk = min(k, scores.shape[1])
    if approx:
        return lax.approx_max_k(scores, kk, recall_target=recall_target)
    return lax.top_k(scores, kk)


def _merge(best: TopK, scores: Array, ids: Array, k: int) -> TopK:
    """The ``k`` best of ``best`` and the candidates ``(scores, ids) [Q, m]``; ``best`` first, so ties keep it."""
    all_scores = jnp.concatenate([best.scores, scores], axis=1)
    all_ids = jnp.concatenate([best.ids, ids], axis=1)
    top, position = lax.top_k(all_scores, k)
    return TopK(top, jnp.take_along_axis(all_ids, position, axis=1))


def mips_topk(queries: Array, index: Array, k: int, *, chunk: int = DEFAULT_CHUNK, precision=lax.Precision.HIGHEST,
              approx: bool = False, recall_target: float = 0.95, num_valid: int | None = None) -> TopK:
    """The ``k`` rows of ``index [N, P]`` with the largest inner product with each of ``queries [Q, P]``.

    Args:
      chunk: rows scored per loop step (memory ``O(Q * (chunk + k))``).
      precision: of the score matmul; HIGHEST keeps fp32 products exact on TPU (its default bf16 passes reorder
        near-ties).
      approx: pick each chunk's candidates with ``lax.approx_max_k`` at ``recall_target``.
      num_valid: rows at or after it are padding, never returned (default: all ``N`` rows are real).
    Returns:
      :class:`TopK` ``[Q, k]``. Raises ``ValueError`` when ``k`` exceeds the valid rows.
    """
    _check(queries, index, k, chunk)
    valid = index.shape[0] if num_valid is None else num_valid
    if k > valid:
        raise ValueError(f"k={k} is larger than the index ({valid} valid rows)")
    return _chunked_topk(queries, index, k, chunk, precision, approx, recall_target, num_valid, 0)


def _chunked_topk(queries, index, k, chunk, precision, approx, recall_target, num_valid, id_offset) -> TopK:
    """:func:`mips_topk` without the checks: ``num_valid`` (local rows) and ``id_offset`` may be traced scalars,
    and ``index`` may hold fewer than ``k`` rows (a shard; its missing entries are -inf placeholders, id -1)."""
    n = index.shape[0]
    c = min(chunk, n)
    q = queries.shape[0]
    # Placeholders lose to every real score; their id -1 never survives a search over >= k valid rows.
    best = TopK(jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))

    def step(best: TopK, rows: Array, first) -> TopK:
        scores = _scores(queries, rows, precision)
        local = first + jnp.arange(rows.shape[0], dtype=jnp.int32)
        if num_valid is not None:
            scores = jnp.where(local[None, :] < num_valid, scores, -jnp.inf)
        values, position = _select(scores, k, approx, recall_target)
        return _merge(best, values, (local + id_offset)[position].astype(jnp.int32), k)

    full = n // c
    if full:
        best = lax.fori_loop(
            0, full, lambda i, b: step(b, lax.dynamic_slice_in_dim(index, i * c, c, axis=0), i * c), best)
    if n % c:
        best = step(best, index[full * c:], jnp.int32(full * c))
    return best


def mips_topk_reference(queries, index, k: int) -> TopK:
    """Slow twin (tests only): the full ``[Q, N]`` score matrix at HIGHEST precision, then one ``top_k``."""
    scores = jnp.matmul(queries, jnp.asarray(index).T, precision=lax.Precision.HIGHEST).astype(jnp.float32)
    values, ids = lax.top_k(scores, k)
    return TopK(values, ids.astype(jnp.int32))


def _check_sharded(index, mesh: Mesh, axis: str, name: str) -> int:
    if not isinstance(mesh, Mesh) or axis not in mesh.axis_names:
        raise ValueError(f"axis={axis!r} must name an axis of the mesh; mesh axes: "
                         f"{getattr(mesh, 'axis_names', None)}")
    shards = int(mesh.shape[axis])
    if index.shape[0] % shards:
        raise ValueError(f"{name} has {index.shape[0]} rows, not a multiple of the {shards} shards of mesh axis "
                         f"{axis!r}; pad it (pad_rows) and pass num_valid")
    return shards


def pad_rows(table, multiple: int):
    """``table [N, ...]`` with zero rows appended up to a multiple of ``multiple`` (e.g. the shard count), so it
    splits evenly by rows; search it with ``num_valid=N``."""
    extra = -table.shape[0] % multiple
    if not extra:
        return table
    return jnp.concatenate([jnp.asarray(table), jnp.zeros((extra,) + table.shape[1:], table.dtype)])


def sharded_mips_topk(queries: Array, index: Array, k: int, *, mesh: Mesh, axis: str, chunk: int = DEFAULT_CHUNK,
                      precision=lax.Precision.HIGHEST, approx: bool = False, recall_target: float = 0.95,
                      num_valid: int | None = None) -> TopK:
    """:func:`mips_topk` with ``index`` rows split over mesh axis ``axis`` (queries replicated); equal results.

    Each shard searches its ``N / shards`` rows (global ids = shard * N / shards + local row), the per-shard
    ``[Q, k]`` lists are gathered in shard order and merged by one ``top_k``. ``num_valid``: rows at or after it
    (global) are padding. Output ``[Q, k]``, replicated.
    """
    _check(queries, index, k, chunk)
    shards = _check_sharded(index, mesh, axis, "index")
    valid = index.shape[0] if num_valid is None else num_valid
    if k > valid:
        raise ValueError(f"k={k} is larger than the index ({valid} valid rows)")
    local_rows = index.shape[0] // shards

    def shard(q, rows):
        offset = lax.axis_index(axis) * local_rows
        mine = _chunked_topk(q, rows, k, chunk, precision, approx, recall_target,
                             None if num_valid is None else num_valid - offset, offset)
        scores = lax.all_gather(mine.scores, axis, axis=1, tiled=True)  # [Q, shards * k], shard order
        ids = lax.all_gather(mine.ids, axis, axis=1, tiled=True)
        top, position = lax.top_k(scores, k)
        return top, jnp.take_along_axis(ids, position, axis=1)

    top, ids = jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(axis, None)), out_specs=(P(), P()),
                             check_vma=False)(queries, index)
    return TopK(top, ids)


def sharded_take(table: Array, ids: Array, *, mesh: Mesh, axis: str) -> Array:
    """Rows ``table[ids]`` of a ``table [N, ...]`` whose rows are split over mesh axis ``axis``; ``ids`` any int
    shape, replicated; output ``ids.shape + table.shape[1:]``, replicated.

    Every shard takes the rows it holds (zeros for the others) and one ``psum`` combines them, so no shard ever
    holds the whole table. Integer tables are summed as int32 and returned in their dtype.
    """
    _check_sharded(table, mesh, axis, "table")
    local_rows = table.shape[0] // int(mesh.shape[axis])
    wide = jnp.int32 if jnp.issubdtype(table.dtype, jnp.integer) else table.dtype

    def shard(rows, wanted):
        local = wanted - lax.axis_index(axis) * local_rows
        mine = (local >= 0) & (local < local_rows)
        taken = jnp.take(rows, jnp.clip(local, 0, local_rows - 1), axis=0).astype(wide)
        taken = jnp.where(mine.reshape(mine.shape + (1,) * (rows.ndim - 1)), taken, jnp.zeros((), wide))
        return lax.psum(taken, axis)

    spec = P(axis, *([None] * (table.ndim - 1)))
    out = jax.shard_map(shard, mesh=mesh, in_specs=(spec, P()), out_specs=P(), check_vma=False)(table, ids)
    return out.astype(table.dtype)


@dataclasses.dataclass(frozen=True)
class RowSharding:
    """Split a retrieval index (and tables gathered by its row ids) by rows over mesh axis ``axis`` of ``mesh``.

    Hashable, so a module can take it as a field: a module never reads the mesh from the context.
    """

    mesh: Mesh
    axis: str = "candidates"

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise ValueError(f"RowSharding.mesh: must be a jax.sharding.Mesh, got {type(self.mesh).__name__}")
        if self.axis not in self.mesh.axis_names:
            raise ValueError(f"RowSharding.axis={self.axis!r} is not an axis of the mesh {tuple(self.mesh.axis_names)}")

    @property
    def shards(self) -> int:
        return int(self.mesh.shape[self.axis])
