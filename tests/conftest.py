"""Test-wide set-up: 8 fake CPU devices and exact fp32 matmuls, fixed before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity is defined at full fp32 precision; TPU/GPU default to bf16/tf32 passes.
jax.config.update("jax_default_matmul_precision", "highest")
