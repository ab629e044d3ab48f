"""Dense projection with logical axis names, fp32 storage and a selectable compute dtype."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers.checks import check_rank, check_shape

from layers import axes

Array = jax.Array
Initializer = Callable[..., Array]


def dense(x: Array, kernel: Array, bias: Array | None = None, *, dtype: Any = None) -> Array:
    """x @ kernel + bias.

    Args:
      x: ``[..., in]``.
      kernel: ``[in, out]`` (the transpose of a torch ``Linear.weight``).
      bias: ``[out]`` or None.
      dtype: compute dtype; defaults to the promoted dtype of x and kernel.
    Returns:
      ``[..., out]`` in ``dtype``.
    """
    check_rank("kernel", kernel, 2, "[in, out]")
    check_shape("x", x, (..., kernel.shape[0]), f"[..., in={kernel.shape[0]}] (kernel is {tuple(kernel.shape)})")
    check_shape("bias", bias, (kernel.shape[1],), f"[out={kernel.shape[1]}]")
    dtype = dtype or jnp.result_type(x, kernel)
    y = jnp.matmul(x.astype(dtype), kernel.astype(dtype))
    if bias is not None:
        y = y + bias.astype(dtype)
    return y


def dense_reference(x, kernel, bias=None):
    """Slow twin: an explicit sum over the input axis (tests only)."""
    y = jnp.einsum("...i,io->...o", x, kernel, precision="highest")
    return y if bias is None else y + bias


class Dense(nn.Module):
    """``[..., in] -> [..., features]``; params ``kernel [in, features]`` and ``bias [features]``.

    ``axes`` are the logical names of (in, out) used to shard the kernel, e.g. ``(EMBED, MLP)``.
    """

    features: int
    axes: tuple[str, str] = (axes.EMBED, axes.MLP)
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(self.bias_init, (self.axes[1],)), (self.features,), self.param_dtype
            )
        return dense(x, kernel, bias, dtype=self.dtype)
