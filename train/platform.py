"""Which JAX platforms a command may start, decided before jax is imported.

With the ``[tpu]`` extra installed, libtpu registers the ``tpu`` platform, and on a machine without TPU chips JAX's
start-up then probes for them and prints a page of libtpu warnings on every run. ``python -m train`` therefore
leaves ``tpu`` out when no chip is attached (and ``JAX_PLATFORMS`` is not set by the user): GPUs and the CPU are
still found (CUDA and the CPU; set ``JAX_PLATFORMS`` yourself for another). Chips are detected as libtpu itself
does: a PCI device of Google's vendor id.
"""

from __future__ import annotations

import glob
import os

GOOGLE_PCI_VENDOR = "0x1ae0"


def tpu_chips_attached() -> bool:
    """Whether this host has TPU chips (a PCI device of Google's vendor id)."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip().lower() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def skip_absent_tpu() -> None:
    """Sets ``JAX_PLATFORMS`` to the non-TPU platforms when it is unset and no TPU chip is attached."""
    if "JAX_PLATFORMS" not in os.environ and not tpu_chips_attached():
        # JAX skips CUDA quietly when its plugin is not installed; name other platforms (rocm) yourself.
        os.environ["JAX_PLATFORMS"] = "cuda,cpu"
