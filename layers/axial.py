"""Axial (factorized) position embeddings, as used by Reformer.

The position table for ``S0 * S1 * ...`` positions is factorized into one small weight per axis: axis ``k`` owns
a weight of shape ``[1, .., S_k, .., 1, d_k]`` (``S_k`` at position ``k``, ones elsewhere) and position
``p = i0 * (S1 * S2 ...) + i1 * (S2 ...) + ...`` (row-major) gets ``concat([w_0[i0], w_1[i1], ...])``, so the
embedding width is ``sum(d_k)``. For the usual two axes: ``p = i * S1 + j -> concat(w0[i], w1[j])``.

Hugging Face behaviour reproduced here (``AxialPositionEmbeddings`` in ``modeling_reformer.py``):

- training: the sequence length must equal ``prod(axial_pos_shape)`` and the position ids are ignored (every
  sequence gets positions ``0..L-1``). With dropout, whole "columns" are dropped: for each example ``b`` and each
  index ``j`` along axis 1, all positions with that ``j`` are zeroed in every feature (torch ``dropout2d`` on the
  transposed grid), survivors scaled by ``1 / (1 - rate)``.
- eval: the length may be shorter than ``prod(axial_pos_shape)`` (longer raises) and rows are selected by the given
  position ids. HF builds the (truncated) full table and gathers from it; here each axis gathers its own rows
  (``i = p // S1``, ``j = p % S1``) so the table is never built.

The weights use HF's exact shapes so that ``embeddings.position_embeddings.weights.{k}`` converts by pure rename
to ``weights_{k}``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from layers.dropout import keep_mask

__all__ = [
    "AxialPositionEmbeddings",
    "axial_position_embeddings",
    "axial_position_embeddings_reference",
    "check_axial_config",
]


def check_axial_config(
    axial_pos_shape: Sequence[int], axial_pos_embds_dim: Sequence[int], hidden_size: int | None = None
) -> None:
    """Raises ValueError unless the axial factorization is well formed (and sums to ``hidden_size`` if given)."""
    shape, dims = tuple(axial_pos_shape), tuple(axial_pos_embds_dim)
    if len(shape) < 2:
        # HF's eval path indexes axial_pos_shape[1]; a single axis is just a plain position table.
        raise ValueError(f"axial_pos_shape must have at least 2 factors, got {shape}")
    if any(int(s) < 1 for s in shape):
        raise ValueError(f"axial_pos_shape factors must be positive, got {shape}")
    if len(dims) != len(shape):
        raise ValueError(
            f"axial_pos_embds_dim must have one entry per axial_pos_shape factor: {dims} vs {shape}"
        )
    if any(int(d) < 1 for d in dims):
        raise ValueError(f"axial_pos_embds_dim entries must be positive, got {dims}")
    if hidden_size is not None and sum(dims) != hidden_size:
        raise ValueError(
            f"axial_pos_embds_dim {dims} must sum to hidden_size {hidden_size}, got sum {sum(dims)}"
        )


def _shape_and_dims(weights: Sequence[jax.Array]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reads (axial_pos_shape, axial_pos_embds_dim) back from per-axis weights, validating their layout."""
    n = len(weights)
    shape, dims = [], []
    for k, w in enumerate(weights):
        expected_ones = [a for a in range(n) if a != k]
        if w.ndim != n + 1 or any(w.shape[a] != 1 for a in expected_ones):
            raise ValueError(
                f"axial weights[{k}] must have shape [1,..,S_{k},..,1, d_{k}] (rank {n + 1}, S_{k} at axis {k}) "
                f"to match axial_pos_shape of {n} factors; got {tuple(w.shape)}"
            )
        shape.append(int(w.shape[k]))
        dims.append(int(w.shape[-1]))
    check_axial_config(shape, dims)
    return tuple(shape), tuple(dims)


def axial_position_embeddings(
    weights: Sequence[jax.Array],
    positions: int | jax.Array,
    *,
    training: bool,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Axial position embeddings.

    Args:
      weights: one array per axis; ``weights[k]`` has shape ``[1,..,S_k,..,1, d_k]`` (HF's layout).
      positions: either a length ``L`` (positions ``0..L-1``) or int position ids ``[batch, length]``.
      training: HF training semantics: ``length == prod(S)`` is required, position id values are ignored and
        column dropout may apply. Otherwise rows are gathered by position id (``length <= prod(S)``).
      dropout_rate: HF's ``hidden_dropout_prob`` as applied inside the axial embedding (training only).
      dropout_key: PRNG key, required when ``training`` and ``dropout_rate > 0``. With an int ``positions`` the
        mask has batch size 1 (one mask shared by the batch).

    Returns:
      ``[batch, length, sum(d_k)]`` when position ids are given, else ``[1, length, sum(d_k)]``; dtype of the
      weights.

    Position ids outside ``[0, prod(S))`` raise ValueError when they are concrete; under ``jit`` they cannot be
    checked and are clamped by the gather (HF raises an index error).
    """
    shape, dims = _shape_and_dims(weights)
    total = math.prod(shape)
    if isinstance(positions, (int, np.integer)):
        batch, length, position_ids = 1, int(positions), None
    else:
        if positions.ndim != 2:
            raise ValueError(f"position_ids must be [batch, length], got shape {tuple(positions.shape)}")
        batch, length = int(positions.shape[0]), int(positions.shape[1])
        position_ids = positions
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")

    if training:
        if length != total:
            raise ValueError(
                f"in training the sequence length must equal prod(axial_pos_shape): prod({shape}) = {total} != "
                f"length {length}; pad the sequence to {total} or change axial_pos_shape"
            )
        mask = None
        if dropout_rate > 0.0:
            if dropout_key is None:
                raise ValueError("dropout_key is required when training with dropout_rate > 0")
            # HF drops per (example, index along axis 1): a [batch, 1, S1, 1, .., 1] keep-mask on the grid.
            mask_shape = (batch, 1, shape[1]) + (1,) * (len(shape) - 2) + (1,)
            keep = keep_mask(dropout_key, mask_shape, dropout_rate)
            mask = keep.astype(weights[0].dtype) / (1.0 - dropout_rate)
        parts = []
        for w, d in zip(weights, dims):
            # Broadcast each axis over the grid on its own and flatten it: the output *is* the table, but no
            # concatenated grid is built and then re-sliced (and no batch copy unless dropout needs one).
            grid = jnp.broadcast_to(w[None], (1,) + shape + (d,))
            if mask is not None:
                grid = grid * mask
            parts.append(grid.reshape(grid.shape[0], total, d))
        out = jnp.concatenate(parts, axis=-1)
        if position_ids is not None and out.shape[0] != batch:
            out = jnp.broadcast_to(out, (batch,) + out.shape[1:])
        return out

    if length > total:
        raise ValueError(
            f"axial_pos_shape {shape} must multiply at least to the sequence length: prod = {total} < length {length}"
        )
    if position_ids is None:
        position_ids = jnp.arange(length, dtype=jnp.int32)[None]
    elif not isinstance(position_ids, jax.core.Tracer):
        ids = np.asarray(position_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= total):
            raise ValueError(
                f"position_ids must lie in [0, prod(axial_pos_shape)) = [0, {total}); got range "
                f"[{ids.min()}, {ids.max()}]"
            )
    # Mixed-radix decomposition of each position id, last axis fastest (row-major, as HF flattens the grid).
    rest = position_ids
    indices = [None] * len(shape)
    for k in reversed(range(len(shape))):
        indices[k] = rest % shape[k]
        rest = rest // shape[k]
    parts = [w.reshape(s, d)[idx] for w, s, d, idx in zip(weights, shape, dims, indices)]
    return jnp.concatenate(parts, axis=-1)


def axial_position_embeddings_reference(
    weights: Sequence[jax.Array], position_ids: jax.Array, *, training: bool
) -> jax.Array:
    """Test-only twin: builds the full ``[prod(S), hidden]`` table by concat-then-reshape and indexes it.

    ``position_ids``: ``[batch, length]``; in training they are replaced by ``0..L-1``. No dropout.
    """
    shape = tuple(int(w.shape[k]) for k, w in enumerate(weights))
    grid = jnp.concatenate([jnp.broadcast_to(w, shape + (w.shape[-1],)) for w in weights], axis=-1)
    table = grid.reshape(math.prod(shape), -1)
    if training:
        position_ids = jnp.broadcast_to(jnp.arange(position_ids.shape[1]), position_ids.shape)
    return table[position_ids]


class AxialPositionEmbeddings(nn.Module):
    """Linen wrapper owning the per-axis weights ``weights_{k}`` (HF shapes ``[S0,1,d0]``, ``[1,S1,d1]``).

    Attributes:
      axial_pos_shape: grid factors ``(S0, S1, ...)``; training length must equal their product.
      axial_pos_embds_dim: per-axis widths ``(d0, d1, ...)``; they sum to the hidden size.
      hidden_size: if given, checked against ``sum(axial_pos_embds_dim)``.
      dropout_rate: HF ``hidden_dropout_prob`` (column dropout in training; needs the ``'dropout'`` rng).
      axial_norm_std: std of the normal init (HF ``axial_norm_std``).
      dtype: dtype of the returned embeddings.
      param_dtype: storage dtype of the weights.
    """

    axial_pos_shape: Sequence[int]
    axial_pos_embds_dim: Sequence[int]
    hidden_size: int | None = None
    dropout_rate: float = 0.0
    axial_norm_std: float = 1.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, positions: int | jax.Array, deterministic: bool = True) -> jax.Array:
        """``positions``: length or ``[batch, length]`` ids; ``deterministic=False`` means HF training mode.

        Returns ``[batch or 1, length, hidden]``.
        """
        check_axial_config(self.axial_pos_shape, self.axial_pos_embds_dim, self.hidden_size)
        shape, dims = tuple(self.axial_pos_shape), tuple(self.axial_pos_embds_dim)
        weights = []
        for k, (s, d) in enumerate(zip(shape, dims)):
            w_shape = tuple(s if a == k else 1 for a in range(len(shape))) + (d,)
            # Replicated (no sharded axis): these weights are tiny, and sharding a d_k slice of the embedding
            # would not line up with the shards of the concatenated output.
            init = nn.with_logical_partitioning(
                nn.initializers.normal(stddev=self.axial_norm_std), (None,) * (len(shape) + 1)
            )
            weights.append(self.param(f"weights_{k}", init, w_shape, self.param_dtype))
        training = not deterministic
        key = self.make_rng("dropout") if training and self.dropout_rate > 0.0 else None
        out = axial_position_embeddings(
            weights, positions, training=training, dropout_rate=self.dropout_rate, dropout_key=key
        )
        return out.astype(self.dtype)
