"""Interrupted runs resume onto exactly the loss trajectory of an uninterrupted one: after SIGKILL in the
middle of an async checkpoint save, and after SIGTERM (which saves and exits 0)."""

import os
import signal
import time

import pytest

from tests.e2e.conftest import complete_checkpoints, train_losses

# Its module-scoped fixture is costly: every test of the module on one pytest-xdist worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("test_resume")

STEPS = 10
OVERRIDES = (f"--config.total_steps={STEPS}", "--config.checkpoint_every=1", "--config.log_every=1",
             "--config.eval_every=0", "--config.keep_checkpoints=2")


@pytest.fixture(scope="module")
def reference(fast_cli, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = fast_cli(workdir, *OVERRIDES)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = train_losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _wait_for(predicate, process, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def test_sigkill_during_async_save_then_resume(fast_cli, reference, tmp_path):
    process = fast_cli(tmp_path, *OVERRIDES, wait=False)
    checkpoints = tmp_path / "checkpoints"

    def saving_after_step_3():
        # An Orbax temporary directory means a save is in flight; kill right then.
        try:
            names = os.listdir(checkpoints)
        except FileNotFoundError:
            return False
        return any("tmp" in n for n in names) and any(n.isdigit() and int(n) >= 3 for n in names)

    caught = _wait_for(saving_after_step_3, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert caught, "the run ended before a save could be interrupted"
    assert process.returncode == -signal.SIGKILL
    killed_at = complete_checkpoints(tmp_path)
    assert killed_at and max(killed_at) < STEPS

    result = fast_cli(tmp_path, *OVERRIDES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoints}/{max(killed_at)}" in result.stderr
    assert train_losses(tmp_path) == reference  # exactly, not approximately


def test_sigterm_saves_exits_zero_then_resume(fast_cli, reference, tmp_path):
    process = fast_cli(tmp_path, *OVERRIDES, wait=False)
    metrics = tmp_path / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    assert "signal 15: saved" in stderr
    stopped = max(train_losses(tmp_path))
    assert stopped < STEPS and max(complete_checkpoints(tmp_path)) == stopped

    result = fast_cli(tmp_path, *OVERRIDES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_losses(tmp_path) == reference
