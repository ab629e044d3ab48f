"""Keep freed host memory in the process, so a CPU training step does not page-fault its scratch in every step.

XLA's CPU runtime allocates each execution's temp buffer (all of a step's intermediates: 650 MB for an ALBERT-base
MLM step at batch 8 x 128) with ``malloc`` and frees it at the end. glibc serves a request that large with a fresh
``mmap`` and gives it back with ``munmap``, so every step first-touches every page of its scratch again: 160K minor
page faults and 0.3 core-seconds of kernel time per ALBERT-base step, about 10% of its wall time on 2 cores
(``benchmarks/albert_train_step.py --retain-host-memory``). Telling glibc to keep large blocks in its heap and
never trim it makes the next step reuse the same, already-mapped pages: zero faults per step once the heap has
room for a step's blocks side by side (in the first few steps it still grows now and then, when a freed block
has been split by a smaller allocation).

What it costs: the process keeps its peak heap until it exits, which a training process reaches every step anyway.
It changes a process-wide allocator setting, so only entry points call it (``python -m train`` does on CPU); a
library import never does. It must run before the threads that allocate (XLA's thread pools, created when the
first computation runs): threads that already have an arena of their own keep it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1  # bytes of free space at the top of the heap before it is given back to the OS
_M_MMAP_MAX = -4  # how many blocks may be served by their own mmap at once; 0: none, all come from the heap
_M_ARENA_MAX = -8  # how many malloc arenas; 1: every thread uses the main (brk) heap, which is never unmapped
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)

_applied = False

# Device files of the accelerators jax drives (TPU VMs: /dev/accel* or /dev/vfio; NVIDIA: /dev/nvidia0): with one
# the step's scratch is on the device, and the host heap serves the input pipeline's many threads, which one arena
# would serialise.
_ACCELERATOR_DEVICES = ("/dev/accel0", "/dev/vfio/0", "/dev/nvidia0")
MODES = ("auto", "retain", "release")


def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc has it, musl and macOS do not
        libc.gnu_get_libc_version  # noqa: B018 - only glibc's mallopt takes the parameters above
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory (no per-block ``mmap``, one arena, no trimming) for the rest of the process.

    Returns True when the setting took effect, False where the C library is not glibc (nothing is changed).
    Idempotent. Values computed do not change, only where their memory comes from.
    """
    global _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None:
        return False
    ok = all(libc.mallopt(option, value) == 1 for option, value in (
        (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1)))
    _applied = ok
    return ok


def has_accelerator_device() -> bool:
    """Whether this host has a TPU or GPU device file (checked without starting any jax backend)."""
    import os

    return any(os.path.exists(path) for path in _ACCELERATOR_DEVICES)


def configure(mode: str) -> bool:
    """Apply ``mode``: "retain" calls :func:`retain_freed_memory`, "release" leaves glibc's defaults, and "auto"
    retains on a host with no accelerator (a CPU run, whose step scratch lives in host memory). Returns whether
    memory is retained. A bad ``mode`` raises ValueError naming it.
    """
    if mode not in MODES:
        raise ValueError(f"host_memory={mode!r}; expected one of {MODES}")
    if mode == "release" or (mode == "auto" and has_accelerator_device()):
        return False
    return retain_freed_memory()
