"""Relative position biases of MEGA's single-head attention, as functions of query and key positions.

Both return a bias ``[..., q, k]`` added to the attention scores. Taking positions (rather than a length) lets the
same code serve the full pass (positions ``0..L-1`` inside a chunk) and cached decoding (a query at position p
against the cached keys).

- simple: a learned table ``w [2M - 1]``; ``bias[i, j] = w[M - 1 + j - i]`` (HF ``MegaSimpleRelativePositionalBias``;
  M is ``chunk_size`` when chunking, else ``max_positions``; the table always has ``2 * max_positions - 1`` entries
  and a block of length L reads entries ``[M - L, M + L - 1)``, off-centre when M < max_positions, as HF does).
- rotary: learned ``alpha, beta [1, z]`` rotated by position with sinusoids (RoPE-style, halves not interleaved):
  ``rot(a, p) = [a1 cos(p f) - a2 sin(p f), a2 cos(p f) + a1 sin(p f)]``, ``f_i = 10000^(-i / (z/2))``;
  ``bias[i, j] = rot(alpha, i) . rot(beta, j)`` (HF ``MegaRotaryRelativePositionalBias``, with ``b_param`` = beta).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

BIAS_TYPES = ("simple", "rotary")


def simple_relative_bias(table: Array, q_pos: Array, k_pos: Array, *, max_positions: int) -> Array:
    """``table [2 * P - 1]`` (P >= max_positions), ``q_pos [..., q]``, ``k_pos [..., k]`` int -> ``[..., q, k]``.

    Entry ``table[max_positions - 1 + k - q]``; distances outside the table are clipped (callers keep
    ``|k - q| < max_positions``).
    """
    index = max_positions - 1 + k_pos[..., None, :] - q_pos[..., :, None]
    return jnp.take(table, jnp.clip(index, 0, table.shape[0] - 1), axis=0)


def rotary_frequencies(dim: int) -> Array:
    """``[dim // 2]`` fp32 frequencies, computed in fp32 in the same order as HF so angles round alike."""
    half = dim // 2
    return jnp.exp(jnp.arange(half, dtype=jnp.float32) * jnp.float32(-math.log(10000) / half))


def rotate(vec: Array, pos: Array) -> Array:
    """``vec [z]`` rotated to each of ``pos [..., n]`` -> ``[..., n, z]`` (fp32)."""
    vec = vec.astype(jnp.float32)
    angle = pos.astype(jnp.float32)[..., None] * rotary_frequencies(vec.shape[-1])
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    a1, a2 = jnp.split(vec, 2, axis=-1)
    return jnp.concatenate([a1 * cos - a2 * sin, a2 * cos + a1 * sin], axis=-1)


def rotary_relative_bias(alpha: Array, beta: Array, q_pos: Array, k_pos: Array) -> Array:
    """``alpha, beta [1, z]`` (or ``[z]``), positions ``[..., q]`` / ``[..., k]`` -> ``[..., q, k]`` fp32."""
    if alpha.shape[-1] % 2:
        raise ValueError(f"rotary bias needs an even width, got {alpha.shape[-1]}")
    ra = rotate(alpha.reshape(-1), q_pos)
    rb = rotate(beta.reshape(-1), k_pos)
    return jnp.einsum("...qz,...kz->...qk", ra, rb, precision=jax.lax.Precision.HIGHEST)


def simple_relative_bias_reference(table, length, max_positions):
    """Slow twin (tests only): HF's pad-tile-reshape construction for a ``[length, length]`` block, in numpy."""
    table = np.asarray(table, np.float64)
    bias = table[max_positions - length: max_positions + length - 1]
    tile = np.tile(np.pad(bias, (0, length)), length)[:-length].reshape(length, 3 * length - 2)
    start = (2 * length - 1) // 2
    return tile[:, start: tile.shape[1] - start]


def rotary_relative_bias_reference(alpha, beta, length):
    """Slow twin (tests only): explicit rotations in float64 numpy for positions ``0..length-1``."""
    alpha, beta = np.asarray(alpha, np.float64).reshape(-1), np.asarray(beta, np.float64).reshape(-1)
    half = alpha.shape[0] // 2
    freq = np.exp(-np.arange(half) * math.log(10000) / half)
    out = np.zeros((length, length))
    for i in range(length):
        for j in range(length):
            ra = np.concatenate([alpha[:half] * np.cos(i * freq) - alpha[half:] * np.sin(i * freq),
                                 alpha[half:] * np.cos(i * freq) + alpha[:half] * np.sin(i * freq)])
            rb = np.concatenate([beta[:half] * np.cos(j * freq) - beta[half:] * np.sin(j * freq),
                                 beta[half:] * np.cos(j * freq) + beta[:half] * np.sin(j * freq)])
            out[i, j] = ra @ rb
    return out
