"""Running `python -m train` in a subprocess the way a user does, on one CPU device."""

import json
import os
import subprocess
import sys

import pytest

from tests import fast_compile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny_albert_mlm.py")


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one device, as on a user's CPU machine (the test process fakes 8)
    env["JAX_PLATFORMS"] = "cpu"
    # Every run compiles the same tiny step: a shared persistent cache makes the reruns cheap.
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


@pytest.fixture(scope="session")
def fast_cli_env(cli_env):
    """`cli_env` compiling with most XLA optimisations off: for runs of a few steps on a tiny model, where XLA's
    optimiser was most of each first compile, whose checks (outputs, exact resumes, error messages) compare runs
    compiled the same way. Not for learning tests (their thresholds come from runs compiled as usual)."""
    return {**cli_env, **fast_compile.ENV}


def _cli(env):
    def run(workdir, *overrides, config=TINY, wait=True, timeout=300):
        args = [sys.executable, "-m", "train", "--config", config, "--workdir", str(workdir), *overrides]
        if not wait:
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture(scope="session")
def cli(cli_env):
    """`cli(workdir, *overrides, config=TINY, wait=True)` -> CompletedProcess (or Popen with wait=False)."""
    return _cli(cli_env)


@pytest.fixture(scope="session")
def fast_cli(fast_cli_env):
    """`cli` in `fast_cli_env`."""
    return _cli(fast_cli_env)


def train_losses(workdir) -> dict[int, float]:
    """{step: loss} of the train rows of `workdir/metrics.jsonl` (each step must appear once)."""
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if "split" not in r]
    steps = [r["step"] for r in train]
    assert len(steps) == len(set(steps)), f"duplicate steps in metrics.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in train}


def complete_checkpoints(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
