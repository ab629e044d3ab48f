"""Two processes on localhost (CPU, gloo) train exactly like one process with two devices, and either
resumes the other's checkpoints.

Run A: one process, two devices, 6 steps. Run B: two processes with one device each (`--coordinator_address
--num_processes --process_id`), 4 steps. Run C: one process resuming B's workdir to step 6. The global batch
depends only on `config.data.shards` (2 here), so B's losses equal A's, and C, restoring B's checkpoint
(state and both processes' data positions) onto one process, continues exactly where A went.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import fast_compile
from tests.e2e.conftest import ROOT, TINY, complete_checkpoints, train_losses

# Its module-scoped fixture is costly: every test of the module on one pytest-xdist worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("test_multiprocess")

OVERRIDES = ["--config.data.shards=2", "--config.mesh=data=-1", "--config.eval_every=2",
             "--config.checkpoint_every=2", "--config.rng_impl=threefry2x32",
             # Runs of 4 and 6 steps share a learning rate at every step only without a decay to total_steps.
             "--config.schedule=constant"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(base, devices):
    env = dict(base)
    env.update(fast_compile.ENV)  # 4-6 steps of a tiny model: XLA's optimiser was most of each compile
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _command(workdir, steps, *extra):
    return [sys.executable, "-m", "train", "--config", TINY, "--workdir", str(workdir), *OVERRIDES,
            f"--config.total_steps={steps}", *extra]


@pytest.fixture(scope="module")
def runs(cli_env, tmp_path_factory):
    cache = tmp_path_factory.mktemp("spm")
    common = [f"--config.data.cache_dir={cache}"]
    one = tmp_path_factory.mktemp("one_process")
    result = subprocess.run(_command(one, 6, *common), cwd=ROOT, env=_env(cli_env, 2), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    two = tmp_path_factory.mktemp("two_processes")
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen(_command(two, 4, *common, f"--coordinator_address={address}", "--num_processes=2",
                                       f"--process_id={i}"),
                              cwd=ROOT, env=_env(cli_env, 1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    two_checkpoints = complete_checkpoints(two)
    two_losses = train_losses(two)
    two_stdout = [out for out, _ in outputs]

    resumed = subprocess.run(_command(two, 6, *common), cwd=ROOT, env=_env(cli_env, 2), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return dict(one=train_losses(one), two=two_losses, two_stdout=two_stdout, two_checkpoints=two_checkpoints,
                resumed=train_losses(two), resumed_stderr=resumed.stderr)


def test_two_processes_equal_one_process_with_two_devices(runs):
    one, two = runs["one"], runs["two"]
    assert sorted(two) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=1e-4)
    # Both processes saved together (Orbax writes from every process); only process 0 reports.
    assert runs["two_checkpoints"] == [2, 4]
    assert "done: step 4" in runs["two_stdout"][0] and "done:" not in runs["two_stdout"][1]


def test_one_process_resumes_the_two_process_checkpoint(runs):
    assert "resuming from" in runs["resumed_stderr"]
    one, resumed = runs["one"], runs["resumed"]
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    # Steps 5 and 6 read the batches after those both processes had read: the gathered data state.
    np.testing.assert_allclose([resumed[s] for s in (5, 6)], [one[s] for s in (5, 6)], rtol=1e-4)
