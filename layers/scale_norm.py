"""Scale-only normalisations of MEGA: ScaleNorm and RMSNorm (correct, plus HF's buggy variant behind a flag). Both
compute in fp32 and return ``dtype``.

    scale_norm(x)  = s * x * rsqrt(mean(x^2) + eps)            s: one scalar, param ``scalar [1]`` (HF name)
    rms_norm(x)    = w * x * rsqrt(mean(x^2) + eps)            w: ``[d]``, param ``weight`` (HF name ``weight``)
    rms_norm(x, hf_identity_bug=True) = w * x                  what HF's ``MegaRMSNorm.forward`` returns

HF's ``MegaRMSNorm`` computes ``x * rsqrt(mean_square + eps)`` but discards the result and returns ``x * weight``:
it normalises nothing. Models trained with ``normalization_type="rmsnorm"`` in ``transformers`` learned with that
identity-times-weight layer, so loading such a checkpoint needs the same function; everything else should use the
correct form. The flag exists only for that purpose and must be asked for explicitly.

MEGA's batch norms (``normalization_type="batchnorm"``) are not provided: they need mutable running statistics,
and ``MegaConfig`` refuses them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from layers import axes
from layers.checks import check_shape

Array = jax.Array


def _mean_square(x: Array) -> Array:
    return jnp.mean(jnp.square(x), axis=-1, keepdims=True)


def scale_norm(x: Array, scalar: Array | None, *, epsilon: float) -> Array:
    """``x [..., d]``, ``scalar [1]`` or None -> ``[..., d]`` fp32: ``scalar * x / sqrt(mean(x^2) + eps)``."""
    check_shape("scalar", scalar, (1,), "[1] (one scale)")
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(_mean_square(x) + epsilon)
    return y if scalar is None else y * scalar.astype(jnp.float32)


def rms_norm(x: Array, weight: Array | None, *, epsilon: float, hf_identity_bug: bool = False) -> Array:
    """``x [..., d]``, ``weight [d]`` or None -> ``[..., d]`` fp32.

    ``hf_identity_bug=True`` reproduces ``transformers``' ``MegaRMSNorm``, which returns ``x * weight`` without
    normalising (see the module docstring); only for checkpoints trained with it.
    """
    check_shape("weight", weight, (x.shape[-1],), f"[d={x.shape[-1]}] (the last axis of x)")
    x = x.astype(jnp.float32)
    y = x if hf_identity_bug else x * jax.lax.rsqrt(_mean_square(x) + epsilon)
    return y if weight is None else y * weight.astype(jnp.float32)


def scale_norm_reference(x, scalar, *, epsilon):
    """Slow twin in float64 numpy (tests only)."""
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + epsilon)
    return y if scalar is None else y * np.asarray(scalar, np.float64)


def rms_norm_reference(x, weight, *, epsilon):
    """Slow twin of the correct RMSNorm in float64 numpy (tests only)."""
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + epsilon)
    return y if weight is None else y * np.asarray(weight, np.float64)


class ScaleNorm(nn.Module):
    """ScaleNorm with param ``scalar [1]`` (initialised to 1; HF ``MegaScaleNorm.scalar``). ``[..., d] -> [..., d]``."""

    epsilon: float = 1e-5
    affine: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scalar = None
        if self.affine:
            scalar = self.param("scalar", nn.with_logical_partitioning(nn.initializers.ones_init(), (None,)), (1,),
                                self.param_dtype)
        return scale_norm(x, scalar, epsilon=self.epsilon).astype(self.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with param ``weight [d]`` (initialised to 1). ``hf_identity_bug`` reproduces HF's ``x * weight``."""

    epsilon: float = 1e-5
    affine: bool = True
    hf_identity_bug: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        weight = None
        if self.affine:
            weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones_init(), (axes.EMBED,)),
                                (x.shape[-1],), self.param_dtype)
        return rms_norm(x, weight, epsilon=self.epsilon, hf_identity_bug=self.hf_identity_bug).astype(self.dtype)
