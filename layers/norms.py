"""Normalisation layers, computed in fp32 with the exact two-pass variance.

Flax's ``nn.LayerNorm`` defaults to ``epsilon=1e-6`` and ``use_fast_variance=True`` (E[x^2] - E[x]^2). The fast
form cancels catastrophically when activations have a large mean (|mean| >> std), which is exactly where
parity with PyTorch breaks, so every family uses this LayerNorm with the epsilon from its config.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers.checks import check_rank, check_shape

from layers import axes

Array = jax.Array


def layer_norm(x: Array, scale: Array | None, bias: Array | None, *, epsilon: float) -> Array:
    """LayerNorm over the last axis. ``x [..., d]``, ``scale``/``bias`` ``[d]``; returns ``[..., d]`` in fp32."""
    check_rank("x", x, set(range(1, 9)), "[..., d]")
    check_shape("scale", scale, (x.shape[-1],), f"[d={x.shape[-1]}] (the last axis of x)")
    check_shape("bias", bias, (x.shape[-1],), f"[d={x.shape[-1]}] (the last axis of x)")
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + epsilon)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y


def layer_norm_reference(x, scale, bias, *, epsilon):
    """Slow twin in float64 numpy (tests only)."""
    import numpy as np

    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


class LayerNorm(nn.Module):
    """LayerNorm with params ``scale [d]`` and ``bias [d]`` (HF ``weight`` / ``bias``); output in ``dtype``."""

    epsilon: float = 1e-12
    use_scale: bool = True
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str = axes.EMBED
    # Keep only the input for the backward pass and recompute the normalisation there (same ops, same values):
    # autodiff would otherwise save the centred input, the normalised input and the scaled one, three fp32 copies
    # of an activation that its caller usually keeps anyway (a reversible layer's rebuilt input, say).
    remat: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        scale = bias = None
        if self.use_scale:
            scale = self.param(
                "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)), (d,), self.param_dtype
            )
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)), (d,), self.param_dtype
            )
        norm = lambda x, scale, bias: layer_norm(x, scale, bias, epsilon=self.epsilon).astype(self.dtype)  # noqa
        return (jax.checkpoint(norm) if self.remat else norm)(x, scale, bias)
