"""Keep freed host memory in the process, so a CPU training step does not page-fault its scratch in every step.

XLA's CPU runtime allocates each execution's temp buffer (all of a step's intermediates: 650 MB for an ALBERT-base
MLM step at batch 8 x 128) with ``malloc`` and frees it at the end. glibc serves a request that large with a fresh
``mmap`` and gives it back with ``munmap``, so every step first-touches every page of its scratch again: 160K minor
page faults and 0.3 core-seconds of kernel time per ALBERT-base step (``benchmarks/albert_train_step.py
--retain-host-memory`` compares). Telling glibc to keep large blocks in its heap and
never trim it makes the next step reuse the same, already-mapped pages: zero faults per step once the heap has
room for a step's blocks side by side (in the first few steps it still grows now and then, when a freed block
has been split by a smaller allocation).

What it costs, and why it is opt-in (``python -m train --host_memory=retain``):
- One malloc arena for every thread. A run whose host threads allocate a lot of small blocks at once (the input
  pipeline of a small model) then waits on that arena's lock: the quickstart runs about 15% slower with it
  (26-28K against 30-34K tokens/s, 100 steps; ``GLIBC_TUNABLES=glibc.malloc.arena_max=1`` alone does the same), while the ALBERT-base step scanned over its layers
  (650 MB scratch) gains 1-2% and unrolled (1.2 GB) about 10%.
- The process keeps its peak heap until it exits, which a training process reaches every step anyway.
It changes a process-wide allocator setting, so only entry points call it; a library import never does. It must
run before the threads that allocate (XLA's thread pools, created when the first computation runs): threads that
already have an arena of their own keep it.
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
MODES = ("release", "retain")


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



def configure(mode: str) -> bool:
    """Apply ``mode``: "retain" calls :func:`retain_freed_memory`, "release" leaves the C library's defaults.

    Returns whether freed memory is retained. A bad ``mode`` raises ValueError naming it.
    """
    if mode not in MODES:
        raise ValueError(f"host_memory={mode!r}; expected one of {MODES}")
    return mode == "retain" and retain_freed_memory()
