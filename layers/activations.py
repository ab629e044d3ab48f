"""Activation functions under their Hugging Face config names.

HF's names are not JAX's: HF ``gelu`` is the exact erf form while ``jax.nn.gelu`` defaults to the tanh
approximation, which HF calls ``gelu_new``. Looking a name up here is the only way a family picks an activation,
so a config string always means what it means in ``transformers``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def gelu(x: Array) -> Array:
    """Exact GELU, x * Phi(x) with the erf CDF (HF ``gelu``)."""
    return jax.nn.gelu(x, approximate=False)


def gelu_new(x: Array) -> Array:
    """Tanh-approximated GELU (HF ``gelu_new`` / ``gelu_pytorch_tanh`` / ``gelu_fast``)."""
    return jax.nn.gelu(x, approximate=True)


def quick_gelu(x: Array) -> Array:
    """x * sigmoid(1.702 x) (HF ``quick_gelu``)."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_10(x: Array) -> Array:
    """Exact GELU clipped to [-10, 10] (HF ``gelu_10``, used for int8-friendly ranges)."""
    return jnp.clip(gelu(x), -10.0, 10.0)


def relu2(x: Array) -> Array:
    """Squared ReLU (HF ``relu2``)."""
    return jnp.square(jax.nn.relu(x))


def laplace(x: Array, mu: float = 0.707107, sigma: float = 0.282095) -> Array:
    """Laplace attention function of MEGA (HF ``laplace``): 0.5 * (1 + erf((x - mu) / (sigma * sqrt 2)))."""
    return 0.5 * (1.0 + jax.lax.erf((x - mu) / (sigma * math.sqrt(2.0))))


def linear(x: Array) -> Array:
    return x


def mish(x: Array) -> Array:
    return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": gelu,
    "gelu_python": gelu,
    "gelu_new": gelu_new,
    "gelu_fast": gelu_new,
    "gelu_pytorch_tanh": gelu_new,
    "gelu_accurate": gelu_new,
    "gelu_10": gelu_10,
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
    "relu2": relu2,
    "relu6": jax.nn.relu6,
    "leaky_relu": jax.nn.leaky_relu,
    "laplace": laplace,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "mish": mish,
    "linear": linear,
    "identity": linear,
}


def get_activation(name: str, field: str = "hidden_act") -> Callable[[Array], Array]:
    """Returns the activation called ``name`` in HF configs; ``field`` names the config field in errors."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{field}={name!r} is not a known activation; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
