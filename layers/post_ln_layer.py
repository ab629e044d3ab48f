"""BERT's post-LayerNorm transformer layer: self-attention, optional cross-attention, feed-forward, each block
``LayerNorm(residual + dropout(dense(...)))``. ``[batch, length, hidden] -> [batch, length, hidden]``.

Param names are HF BERT's (``BertLayer``, also RemBERT's and REALM's), so a family's checkpoint converts by
prefixing the layer index::

    attention.self.{query,key,value}   attention.output.{dense,LayerNorm}
    crossattention.self.{query,key,value}   crossattention.output.{dense,LayerNorm}   (decoders with cross-attention)
    intermediate.dense   output.{dense,LayerNorm}

Cross-attention runs when the call gives ``encoder_states`` or a cache that holds the encoder's keys and values;
a module that owns cross-attention weights creates them at init by passing (dummy) ``encoder_states``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers import axes
from layers.activations import get_activation
from layers.attention import Attention
from layers.dense import Dense
from layers.dropout import Dropout
from layers.norms import LayerNorm

Array = jax.Array


class ResidualOutput(nn.Module):
    """``LayerNorm(residual + dropout(dense(x)))``: BERT's ``output`` blocks. ``x [..., in]``, ``residual [...,
    features]`` -> ``[..., features]``."""

    features: int
    kernel_axes: tuple[str, str]
    layer_norm_eps: float
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    init_std: float = 0.02  # the dense kernel's normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool = True) -> Array:
        h = Dense(self.features, self.kernel_axes, dtype=self.dtype, kernel_init=nn.initializers.normal(self.init_std),
                  name="dense")(x)
        h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(h + residual)


class PostLNAttention(nn.Module):
    """``self`` (query/key/value attention) then ``output`` (dense, dropout, ``LayerNorm(x + .)``).

    ``x [b, l, H]`` -> ``(y [b, l, H], weights [b, heads, l, kv], (key, value))``; ``keys_from`` / ``kv_cache`` /
    ``cache_index`` as in :func:`layers.attention.attention_block`.
    """

    num_heads: int
    layer_norm_eps: float
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    dtype: Any = jnp.float32
    init_std: float = 0.02  # the projections' normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, *, deterministic: bool = True, **sources):
        hidden = x.shape[-1]
        context, weights, kv = Attention(self.num_heads, hidden // self.num_heads,
                                         dropout_rate=self.attention_probs_dropout_prob, dtype=self.dtype,
                                         init_std=self.init_std, name="self")(x, mask, deterministic=deterministic,
                                                                              **sources)
        y = ResidualOutput(hidden, (axes.HEADS, axes.EMBED), self.layer_norm_eps, self.hidden_dropout_prob,
                           self.dtype, init_std=self.init_std, name="output")(context, x, deterministic)
        return y, weights, kv


class Intermediate(nn.Module):
    """``act(dense(x))``: the feed-forward expansion. ``[..., H] -> [..., intermediate_size]``."""

    features: int
    hidden_act: str
    dtype: Any = jnp.float32
    init_std: float = 0.02  # the dense kernel's normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return get_activation(self.hidden_act)(Dense(self.features, (axes.EMBED, axes.MLP), dtype=self.dtype,
                                                      kernel_init=nn.initializers.normal(self.init_std),
                                                      name="dense")(x))


class PostLNLayer(nn.Module):
    """One BERT layer (see the module docstring). Head width is ``hidden // num_heads``."""

    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    dtype: Any = jnp.float32
    init_std: float = 0.02  # every kernel's normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, *, encoder_states: Array | None = None,
                 encoder_mask: Array | None = None, cache: tuple | None = None, cache_index: Array | None = None,
                 deterministic: bool = True):
        """One layer.

        Args:
          x: ``[b, l, H]``; mask: boolean, broadcastable to ``[b, heads, l, kv]`` (True = may attend), or None.
          encoder_states: ``[b, s, H]`` to cross-attend to; encoder_mask: boolean ``[b, 1, 1, s]`` or None.
          cache: this layer's ``(key, value, cross_key, cross_value)`` (``layers.kv_cache.KVCache`` slices;
            ``cross_*`` None before the encoder's keys are stored); with ``cache_index`` the new tokens' keys and
            values are written there and ``mask`` covers every slot.
        Returns:
          ``(y [b, l, H], self weights, cross weights or None, new cache tuple or None)``.
        """
        hidden = x.shape[-1]
        attention = lambda name: PostLNAttention(self.num_heads, self.layer_norm_eps, self.hidden_dropout_prob,
                                                 self.attention_probs_dropout_prob, self.dtype, self.init_std,
                                                 name=name)
        self_cache = cross_cache = None
        if cache is not None:
            self_cache = (cache[0], cache[1])
            cross_cache = None if cache[2] is None else (cache[2], cache[3])
        a, weights, kv = attention("attention")(x, mask, deterministic=deterministic, kv_cache=self_cache,
                                                cache_index=None if cache is None else cache_index)
        cross_weights = cross_kv = None
        if encoder_states is not None or cross_cache is not None:
            # Stored encoder keys are reused as they are; otherwise they are projected from encoder_states.
            sources = {"kv_cache": cross_cache} if cross_cache is not None else {"keys_from": encoder_states}
            a, cross_weights, cross_kv = attention("crossattention")(a, encoder_mask, deterministic=deterministic,
                                                                     **sources)
        h = Intermediate(self.intermediate_size, self.hidden_act, self.dtype, self.init_std, name="intermediate")(a)
        y = ResidualOutput(hidden, (axes.MLP, axes.EMBED), self.layer_norm_eps, self.hidden_dropout_prob, self.dtype,
                           self.init_std, name="output")(h, a, deterministic)
        y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        new_cache = None
        if cache is not None:
            new_cache = kv + (cross_kv if cross_kv is not None else (None, None))
        return y, weights, cross_weights, new_cache


def post_ln_layer_reference(x, params, mask=None, *, num_heads, activation, epsilon, encoder_states=None,
                            encoder_mask=None):
    """Slow twin of :class:`PostLNLayer` (no cache, no dropout) in float64 numpy, from its unboxed params (tests
    only). ``mask`` / ``encoder_mask`` broadcast to ``[b, heads, l, kv]`` booleans. Returns ``y [b, l, H]``."""
    import numpy as np

    from layers.attention import dot_product_attention_reference
    from layers.norms import layer_norm_reference

    f64 = lambda a: np.asarray(a, np.float64)
    linear = lambda h, p: f64(h) @ f64(p["kernel"]) + f64(p["bias"])

    def block(h, p, source, block_mask):
        b, l, hidden = h.shape
        heads = lambda y: y.reshape(y.shape[0], y.shape[1], num_heads, hidden // num_heads)
        q, k, v = (heads(linear(inp, p["self"][n])) for inp, n in ((h, "query"), (source, "key"), (source, "value")))
        context, _ = dot_product_attention_reference(q, k, v, mask=block_mask)
        out = linear(context.reshape(b, l, hidden), p["output"]["dense"]) + h
        return layer_norm_reference(out, p["output"]["LayerNorm"]["scale"], p["output"]["LayerNorm"]["bias"],
                                    epsilon=epsilon)

    a = block(f64(x), params["attention"], f64(x), mask)
    if encoder_states is not None:
        a = block(a, params["crossattention"], f64(encoder_states), encoder_mask)
    h = f64(activation(linear(a, params["intermediate"]["dense"])))
    out = linear(h, params["output"]["dense"]) + a
    return layer_norm_reference(out, params["output"]["LayerNorm"]["scale"], params["output"]["LayerNorm"]["bias"],
                                epsilon=epsilon)
