"""Chunked application of a per-position function (chunked feed-forward, chunked LM head / loss).

``chunked_apply(fn, x, chunk_size=c)`` equals ``fn(x)`` whenever ``fn`` treats positions along ``axis``
independently, but only ever materialises ``fn``'s intermediates for ``c`` positions at a time: chunks are visited
by ``lax.map`` (a scan), and the chunk body is wrapped in ``jax.checkpoint`` so that the backward pass does not
store every chunk's intermediates either (it recomputes them one chunk at a time from the chunk's input).
This is HF's ``apply_chunking_to_forward`` made memory-effective under ``jit`` and autodiff. Note that the
*output* of ``fn`` is still full length: for an LM head, fold the loss into ``fn`` (return per-position losses)
so that the ``[chunk, vocab]`` logits are the only vocabulary-sized buffer.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["chunked_apply", "chunked_apply_reference", "effective_chunk"]


def _normalized_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {what} of rank {ndim}")
    return axis % ndim


def _chunk_length(x: Any, axis: int) -> int:
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError("x must contain at least one array to chunk")
    lengths = {int(leaf.shape[_normalized_axis(axis, leaf.ndim, "an input")]) for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(f"all inputs must have the same size along axis {axis}, got sizes {sorted(lengths)}")
    return lengths.pop()


def chunked_apply(
    fn: Callable[[Any], Any], x: Any, *, chunk_size: int, axis: int = 1, min_chunk: int = 0
) -> Any:
    """Applies ``fn`` to ``x`` in chunks of ``chunk_size`` positions along ``axis``.

    Args:
      fn: pure function of one pytree argument (may close over params); it must treat positions along ``axis``
        independently and return a pytree whose leaves keep that axis with the same size (``[.., chunk, ..]``).
      x: array or pytree of arrays (e.g. ``(hidden [batch, length, embed], labels [batch, length])``), every
        leaf having the same size ``length`` along ``axis``.
      chunk_size: positions per chunk. ``0`` or ``>= length`` applies ``fn`` once, unchunked. Otherwise
        ``length`` must be a multiple of ``chunk_size`` (as in HF's ``apply_chunking_to_forward``; unlike HF, a
        chunk larger than the sequence is accepted and means "unchunked").
      axis: the chunked (sequence) axis, same index in every input and output leaf.
      min_chunk: coarsen ``chunk_size`` to its smallest multiple that is at least ``min_chunk`` and divides the
        length (unchunked if none; a ``chunk_size`` that does not divide the length is still an error). Chunk sizes tuned for eager PyTorch (HF's 64) make XLA loop over tiny
        bodies: on CPU a d=256 Reformer step at 4K ran 20% slower with 64-position FF chunks than unchunked,
        for 4% less temp memory. The values do not depend on the chunking.

    Returns:
      ``fn(x)`` (same pytree, shapes and values up to float reassociation).
    """
    length = _chunk_length(x, axis)
    chunk_size = effective_chunk(length, chunk_size, min_chunk)
    if chunk_size == length:
        return fn(x)
    num_chunks = length // chunk_size

    def split(leaf: jax.Array) -> jax.Array:
        a = _normalized_axis(axis, leaf.ndim, "an input")
        shaped = leaf.reshape(leaf.shape[:a] + (num_chunks, chunk_size) + leaf.shape[a + 1 :])
        return jnp.moveaxis(shaped, a, 0)

    # Without the checkpoint, the scan's backward would keep every chunk's residuals (e.g. [chunk, vocab]
    # logits) alive at once, i.e. O(length) memory again. prevent_cse=False is safe inside a scan body.
    body = jax.checkpoint(fn, prevent_cse=False)
    mapped = lax.map(body, jax.tree_util.tree_map(split, x))

    def merge(leaf: jax.Array) -> jax.Array:
        a = _normalized_axis(axis, leaf.ndim - 1, "an output of fn")
        if leaf.shape[a + 1] != chunk_size:
            raise ValueError(
                f"fn must keep the chunked axis {axis} (size {chunk_size} per chunk); got an output chunk of "
                f"shape {tuple(leaf.shape[1:])}"
            )
        moved = jnp.moveaxis(leaf, 0, a)
        return moved.reshape(moved.shape[:a] + (length,) + moved.shape[a + 2 :])

    return jax.tree_util.tree_map(merge, mapped)


def effective_chunk(length: int, chunk_size: int, min_chunk: int = 0) -> int:
    """The chunk ``chunked_apply`` uses on ``length`` positions (``length`` itself when it runs unchunked): see
    its ``chunk_size`` and ``min_chunk``. ValueError when ``chunk_size`` is invalid or does not divide ``length``."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise ValueError(f"chunk_size must be a non-negative int, got {chunk_size!r}")
    if chunk_size and chunk_size < min_chunk and length % chunk_size == 0:  # a bad chunk_size still errors below
        multiples = [m for m in range(-(-min_chunk // chunk_size) * chunk_size, length, chunk_size) if length % m == 0]
        chunk_size = multiples[0] if multiples else 0
    if chunk_size == 0 or chunk_size >= length:
        return length
    if length % chunk_size:
        raise ValueError(
            f"the chunked axis has size {length}, which must be a multiple of chunk_size {chunk_size}"
        )
    return chunk_size


def chunked_apply_reference(fn: Callable[[Any], Any], x: Any, *, chunk_size: int, axis: int = 1) -> Any:
    """Test-only twin: python loop over slices, then concatenate (HF's algorithm, no memory savings)."""
    length = _chunk_length(x, axis)
    if chunk_size == 0 or chunk_size >= length:
        return fn(x)
    outs = []
    for start in range(0, length, chunk_size):
        piece = jax.tree_util.tree_map(
            lambda leaf: lax.slice_in_dim(leaf, start, start + chunk_size, axis=axis % leaf.ndim), x
        )
        outs.append(fn(piece))
    return jax.tree_util.tree_map(
        lambda *leaves: jnp.concatenate(leaves, axis=axis % leaves[0].ndim), *outs
    )
