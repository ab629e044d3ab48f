"""train.host_memory: a retained heap means a jitted step stops page-faulting its scratch every call.

The allocator setting is process-wide, so the fault counts are measured in fresh subprocesses (one with the
setting, one without) rather than in the pytest worker.
"""

import json
import os
import subprocess
import sys

import pytest

from train import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A program whose XLA temp is one 64 MiB buffer (the [4096, 4096] product, which a second matmul reads): larger than
# glibc's largest dynamic mmap threshold (32 MiB), so by default every call maps it afresh.
_PROBE = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
retain = sys.argv[2] == "retain"
if retain:
    from train import host_memory
    assert host_memory.retain_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b, d: jnp.tanh(a @ b) @ d)
a, b, d = jnp.ones((4096, 64)) / 64, jnp.ones((64, 4096)), jnp.ones((4096, 8))
temp = f.lower(a, b, d).compile().memory_analysis().temp_size_in_bytes
for _ in range(5):
    f(a, b, d).block_until_ready()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = f(a, b, d).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median call: a retained heap still grows now and then (a freed block is split by a smaller allocation and
# the next 64 MiB request is served from fresh pages at the top) until it has room for both, which the test must
# not mistake for the per-call faults it is about.
faults_per_call = sorted(faults)[len(faults) // 2]
print(json.dumps({"temp": temp, "faults_per_call": faults_per_call, "out": float(out[0, 0])}))
"""


def _probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = ""  # one device: no fake-device thread pools
    done = subprocess.run([sys.executable, "-c", _PROBE, ROOT, mode], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._libc() is None, reason="the setting is glibc's")
def test_retained_heap_stops_per_call_page_faults():
    default, retained = _probe("release"), _probe("retain")
    assert default["temp"] >= 64 * 2**20  # the premise: the scratch is above glibc's mmap threshold
    pages = default["temp"] / 4096
    # Without the setting the median call first-touches (most of) its scratch again ...
    assert default["faults_per_call"] > 0.5 * pages, default
    # ... with it the pages stay mapped: a few faults at most, not one per page.
    assert retained["faults_per_call"] < 0.02 * pages, retained
    assert retained["out"] == default["out"]  # the values do not change


def test_bad_mode_names_the_field():
    with pytest.raises(ValueError, match=r"host_memory='always'; expected one of \('release', 'retain'\)"):
        host_memory.configure("always")


def test_only_retain_touches_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "retain_freed_memory", lambda: calls.append(1) or True)
    assert host_memory.configure("release") is False
    assert calls == []
    assert host_memory.configure("retain") is True
    assert calls == [1]


def test_cli_rejects_an_unknown_mode():
    done = subprocess.run([sys.executable, "-m", "train", "--host_memory=always"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode != 0
    assert "host_memory" in done.stderr and "<release|retain>" in done.stderr, done.stderr[-2000:]
