"""The machine a benchmark runs on, printed before its tables: the command, the date, the CPU and the fp32 speed of
one fixed GEMM in each framework the benchmark compares.

These training steps are matmul-bound, so their times on a CPU follow how fast each framework's fp32 GEMM runs
there, and that differs between CPUs (and between XLA and PyTorch on one CPU) by more than most model-side changes.
A GEMM timed in the same run, in the process whose steps it calibrates, is what lets rows of
``benchmarks/RESULTS.md`` from different machines be compared.

    import machine  # benchmarks/ is sys.path[0] when a benchmark runs as a script
    machine.print_header(["jax", "torch"])
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import shlex
import sys
import time

import numpy as np

GEMM_SHAPE = (1024, 768, 3072)  # (m, k, n): 1024 tokens through ALBERT-base's first FFN matmul
_LABEL = {"jax": "XLA", "torch": "torch"}


def cpu_description() -> str:
    """The CPU's model name, family/model, core count and widest vector ISA, from /proc/cpuinfo where there is one."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    model = fields.get("model name", "unknown CPU")
    if "cpu family" in fields:  # virtual machines often report a generic model name; these tell generations apart
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {isa}"


def gemm_gflops(framework: str, repeats: int = 30) -> float:
    """Median fp32 GFLOP/s of one ``[m, k] @ [k, n]`` matmul (``GEMM_SHAPE``) in ``framework`` ("jax" or "torch")."""
    m, k, n = GEMM_SHAPE
    rng = np.random.RandomState(0)
    a, b = rng.randn(m, k).astype(np.float32), rng.randn(k, n).astype(np.float32)
    if framework == "torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        run = lambda: ta @ tb  # noqa: E731
    elif framework == "jax":
        import jax

        matmul = jax.jit(lambda x, y: x @ y)
        ja, jb = jax.device_put(a), jax.device_put(b)
        run = lambda: matmul(ja, jb).block_until_ready()  # noqa: E731
    else:
        raise ValueError(f"framework={framework!r}; expected 'jax' or 'torch'")
    for _ in range(5):  # compile (JAX), thread-pool spin-up
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / float(np.median(times)) / 1e9


def gemm_line(gflops: dict[str, float]) -> str:
    """``{"jax": 150.2, "torch": 161.0}`` -> the calibration line every benchmark prints."""
    m, k, n = GEMM_SHAPE
    return f"GEMM [{m}, {k}] @ [{k}, {n}] fp32 GFLOP/s: " + ", ".join(
        f"{_LABEL[f]} {g:.1f}" for f, g in gflops.items())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def print_header(frameworks=("jax",), gflops: dict[str, float] | None = None) -> None:
    """Prints the command, date, CPU, framework versions and the GEMM calibration of ``frameworks``.

    ``gflops``: calibrations measured elsewhere (in worker processes); by default they are measured here, in the
    process that runs the steps, before anything else loads the machine.
    """
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"CPU: {cpu_description()}")
    print("versions: " + ", ".join(f"{p} {_version(p)}" for p in frameworks))
    if gflops is None:
        gflops = {f: gemm_gflops(f) for f in frameworks}
    print(gemm_line(gflops), flush=True)
