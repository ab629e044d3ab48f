"""Test-wide set-up: 8 fake CPU devices and exact fp32 matmuls, fixed before jax is imported anywhere; hypothesis
profiles.

Hypothesis profiles (``HYPOTHESIS_PROFILE``, default ``ci``):
- ``ci``: derandomised (the same examples on every run and machine), no example database (nothing read from or
  written to ``.hypothesis/``), no deadline (a first example pays a compile), ``print_blob`` so a failure prints
  the minimal example and the ``@reproduce_failure`` line to replay it. A test's own ``max_examples`` stands.
- ``long``: random search with the local database, and the examples of the property tests that size themselves
  with :func:`tests.profiles.examples` multiplied by 20: ``HYPOTHESIS_PROFILE=long pytest tests/property``.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from tests import profiles  # noqa: E402

# Parity is defined at full fp32 precision; TPU/GPU default to bf16/tf32 passes.
jax.config.update("jax_default_matmul_precision", "highest")

profiles.load()
