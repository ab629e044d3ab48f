"""Masked multi-head dot-product attention with absolute or relative (``relative_key``/``relative_key_query``) positions.

Layouts: queries ``[batch, q_length, heads, head_dim]``, keys/values ``[batch, kv_length, heads, head_dim]``;
scores and weights ``[batch, heads, q_length, kv_length]``. Softmax always runs in fp32. ``attention_block`` also
does cross-attention (keys from encoder states) and decoding through a static cache (``layers.kv_cache``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers import axes
from layers.checks import check_rank, check_shape
from layers.dense import Dense
from layers.dropout import dropout
from layers.embeddings import Embed
from layers.kv_cache import write_kv

Array = jax.Array

POSITION_SCHEMES = ("absolute", "relative_key", "relative_key_query")


def relative_position_scores(query: Array, key: Array, distance_table: Array, scheme: str, max_position: int,
                             query_positions: Array | None = None) -> Array:
    """Position scores added (unscaled) to the attention logits, as BERT-style relative attention does.

    Args:
      query: ``[batch, q_length, heads, head_dim]``; key: ``[batch, kv_length, heads, head_dim]``.
      distance_table: ``[2 * max_position - 1, head_dim]``; row ``i - j + max_position - 1`` embeds distance i - j.
      scheme: ``relative_key`` (query . d) or ``relative_key_query`` (query . d + key . d).
      query_positions: ``[batch, q_length]`` int, the key position each query row sits at; default
        ``arange(q_length)`` (queries and keys are the same rows).
    Returns: ``[batch, heads, q_length, kv_length]``.
    """
    q_len, k_len = query.shape[1], key.shape[1]
    if query_positions is None:  # one distance matrix for the whole batch, [q, k]
        rows, spec = jnp.arange(q_len)[:, None], "qkd"
    else:  # per-example query rows: the table is gathered per example, [b, q, k]
        rows, spec = query_positions[:, :, None], "bqkd"
    distance = rows - jnp.arange(k_len)
    positions = jnp.take(distance_table, distance + max_position - 1, axis=0).astype(query.dtype)  # [(b,) q, k, d]
    scores = jnp.einsum(f"bqhd,{spec}->bhqk", query, positions)
    if scheme == "relative_key_query":
        scores = scores + jnp.einsum(f"bkhd,{spec}->bhqk", key, positions)
    return scores


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    dtype: Any = None,
) -> tuple[Array, Array]:
    """softmax(scale * q k^T + bias, masked) v.

    Args:
      query: ``[batch, q_length, heads, head_dim]``; key, value: ``[batch, kv_length, heads, head_dim]``.
      mask: boolean, broadcastable to ``[batch, heads, q_length, kv_length]``; True = may attend.
      bias: float, broadcastable to the scores; added after scaling (relative positions, ALiBi, ...).
      scale: multiplies q k^T; default ``head_dim ** -0.5``.
    Returns:
      (context ``[batch, q_length, heads, head_dim]`` in ``dtype``, weights ``[batch, heads, q_length, kv_length]`` fp32).
    """
    check_rank("query", query, 4, "[batch, q_length, heads, head_dim]")
    check_rank("key", key, 4, "[batch, kv_length, heads, head_dim]")
    check_shape("value", value, key.shape, f"[batch, kv_length, heads, head_dim] like key {tuple(key.shape)}")
    b, _, h, d = query.shape
    check_shape("key", key, (b, None, h, d), f"[batch={b}, kv_length, heads={h}, head_dim={d}] (as query)")
    check_rank("mask", mask, 4, "[batch, heads, q_length, kv_length] (broadcastable)")
    check_rank("bias", bias, 4, "[batch, heads, q_length, kv_length] (broadcastable)")
    dtype = dtype or query.dtype
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("bqhd,bkhd->bhqk", query.astype(dtype), key.astype(dtype)).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        # `where` rather than adding a large negative: adding finfo.min twice overflows to -inf and gives NaN rows.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    probs = weights
    if not deterministic and dropout_rate > 0.0:
        probs = dropout(probs, dropout_rate, dropout_rng)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), value.astype(dtype))
    return context, weights


def dot_product_attention_reference(query, key, value, *, mask=None, bias=None, scale=None):
    """Slow twin: per batch and head, an explicit masked softmax in float64 numpy (tests only)."""
    import numpy as np

    q, k, v = (np.asarray(t, np.float64) for t in (query, key, value))
    b, lq, h, d = q.shape
    lk = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    m = np.ones((b, h, lq, lk), bool) if mask is None else np.broadcast_to(np.asarray(mask), (b, h, lq, lk))
    bb = np.zeros((b, h, lq, lk)) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (b, h, lq, lk))
    out = np.zeros((b, lq, h, d))
    weights = np.zeros((b, h, lq, lk))
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi] @ k[bi, :, hi].T * scale + bb[bi, hi]
            s = np.where(m[bi, hi], s, -np.inf)
            s = s - s.max(-1, keepdims=True)
            p = np.exp(s)
            p = p / p.sum(-1, keepdims=True)
            weights[bi, hi] = p
            out[bi, :, hi] = p @ v[bi, :, hi]
    return out, weights


def gather_rows(x: Array, rows: Array) -> Array:
    """``x [batch, length, ...]``, ``rows [batch, r]`` int -> ``[batch, r, ...]``: each example's rows, in order."""
    index = rows.reshape(rows.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def padding_mask(attention_mask: Array) -> Array:
    """``[batch, kv_length]`` 0/1 mask -> boolean ``[batch, 1, 1, kv_length]`` for ``dot_product_attention``."""
    return (attention_mask != 0)[:, None, None, :]


def attention_block(
    x: Array,
    mask: Array | None,
    *,
    num_heads: int,
    head_dim: int,
    keys_from: Array | None = None,
    kv_cache: tuple[Array, Array] | None = None,
    cache_index: Array | None = None,
    position_embedding_type: str = "absolute",
    max_position_embeddings: int = 512,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    query_positions: Array | None = None,
    init_std: float = 0.02,
) -> tuple[Array, Array, tuple[Array, Array]]:
    """Projections + attention, creating ``query``/``key``/``value`` (+ ``distance_embedding``) in the CALLING module.

    Call it from inside a ``@nn.compact`` method: the submodules it builds attach to that module, so each family
    keeps its checkpoint's names (ALBERT ``attention.query``, BERT ``attention.self.query``) without repeating
    this code. ``x [batch, length, hidden]`` -> ``(context [batch, length, heads * head_dim], weights [batch, heads,
    length, kv_length], (key, value) [batch, kv_length, heads, head_dim])``; the keys and values returned are the
    ones attended, i.e. what a decoding cache stores.

    Where keys and values come from:
      - default: projected from ``x`` (self-attention);
      - ``keys_from [batch, kv_length, hidden]``: projected from there (cross-attention on encoder states);
      - ``kv_cache`` (key, value) ``[batch, slots, heads, head_dim]`` with ``cache_index`` (int32 scalar): the
        ``length`` new keys and values of ``x`` are written at slots ``cache_index ...`` (``layers.kv_cache``) and
        the queries attend over every slot; ``mask`` says which slots each query may see;
      - ``kv_cache`` without ``cache_index``: used as they are, nothing is projected (cross-attention keys stored
        at the first decoding step).

    ``query_positions [batch, rows]`` (int) runs the queries for those rows of ``x`` only, while keys and values
    still cover every row: the outputs become ``[batch, rows, heads * head_dim]`` and ``[batch, heads, rows,
    length]``, equal to those rows of the full result. A model whose loss reads a few positions of its last layer
    uses it to skip the query, output and feed-forward work on every other row.

    ``init_std``: the standard deviation of the projections' (and distance table's) normal init (HF's
    ``initializer_range``).
    """
    if position_embedding_type not in POSITION_SCHEMES:
        raise ValueError(f"position_embedding_type={position_embedding_type!r}; expected one of {POSITION_SCHEMES}")
    if position_embedding_type != "absolute" and (kv_cache is not None or keys_from is not None):
        raise ValueError(f"position_embedding_type={position_embedding_type!r} is for self-attention without a "
                         "cache; keys_from / kv_cache need 'absolute'")
    width = num_heads * head_dim

    def project(name, inputs):
        y = Dense(width, (axes.EMBED, axes.HEADS), use_bias=use_bias, dtype=dtype,
                  kernel_init=nn.initializers.normal(init_std), name=name)(inputs)
        return y.reshape(y.shape[:-1] + (num_heads, head_dim))

    x_query = x if query_positions is None else gather_rows(x, query_positions)
    q = project("query", x_query)
    if kv_cache is not None and cache_index is None:
        k, v = kv_cache
    else:
        source = x if keys_from is None else keys_from
        k, v = project("key", source), project("value", source)
        if kv_cache is not None:
            k, v = write_kv(kv_cache, k, v, cache_index)
    bias = None
    if position_embedding_type != "absolute":
        table = Embed(
            2 * max_position_embeddings - 1, head_dim, dtype=dtype, axes=(axes.POSITIONS, axes.KV),
            embedding_init=nn.initializers.normal(init_std), name="distance_embedding"
        ).embedding
        bias = relative_position_scores(q, k, table, position_embedding_type, max_position_embeddings,
                                        query_positions)
    context, weights = dot_product_attention(
        q, k, v, mask=mask, bias=bias, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
        deterministic=deterministic, dtype=dtype,
    )
    return context.reshape(context.shape[:-2] + (width,)), weights, (k, v)


def self_attention_block(x: Array, mask: Array | None, **options) -> tuple[Array, Array]:
    """:func:`attention_block` on ``x`` alone: ``(context [batch, length, heads * head_dim], weights)``."""
    context, weights, _ = attention_block(x, mask, **options)
    return context, weights


class Attention(nn.Module):
    """Thin module over :func:`attention_block` (no output projection: families name and place that themselves).

    Returns ``(context, weights, (key, value))``; see :func:`attention_block` for ``keys_from`` (cross-attention)
    and ``kv_cache`` / ``cache_index`` (decoding).
    """

    num_heads: int
    head_dim: int
    position_embedding_type: str = "absolute"
    max_position_embeddings: int = 512
    dropout_rate: float = 0.0
    use_bias: bool = True
    dtype: Any = jnp.float32
    init_std: float = 0.02  # the projections' normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, deterministic: bool = True,
                 query_positions: Array | None = None, keys_from: Array | None = None,
                 kv_cache: tuple[Array, Array] | None = None,
                 cache_index: Array | None = None) -> tuple[Array, Array, tuple[Array, Array]]:
        return self._attend(x, mask, deterministic, query_positions=query_positions, keys_from=keys_from,
                            kv_cache=kv_cache, cache_index=cache_index)

    def _attend(self, x, mask, deterministic, **sources):
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        return attention_block(
            x, mask, num_heads=self.num_heads, head_dim=self.head_dim,
            position_embedding_type=self.position_embedding_type,
            max_position_embeddings=self.max_position_embeddings, dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng, deterministic=deterministic, use_bias=self.use_bias, dtype=self.dtype,
            init_std=self.init_std, **sources,
        )


class SelfAttention(Attention):
    """:class:`Attention` on ``x`` alone, returning ``(context, weights)``."""

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, deterministic: bool = True,
                 query_positions: Array | None = None) -> tuple[Array, Array]:
        return self._attend(x, mask, deterministic, query_positions=query_positions)[:2]
