"""`python -m train` end to end on the tiny ALBERT config: outputs, rerun, bad configs, the NaN guard (compiled with
most XLA optimisations off: `fast_cli`)."""

import json
import os

from tests.e2e.conftest import complete_checkpoints, train_losses


def test_tiny_run_end_to_end(fast_cli, tmp_path):
    result = fast_cli(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: step 6" in result.stdout
    losses = train_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    for row in rows:
        if "split" not in row:
            assert {"step", "loss", "learning_rate", "tokens_per_second"} <= set(row)
    assert [r["step"] for r in rows if r.get("split") == "validation"] == [3, 6]
    assert complete_checkpoints(tmp_path) == [2, 4, 6]
    for item in ("state", "data", "metadata"):
        assert os.path.isdir(tmp_path / "checkpoints" / "6" / item)
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerunning a finished run resumes at its end: nothing is retrained, nothing lost.
    again = fast_cli(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and "done: step 6" in again.stdout
    assert train_losses(tmp_path) == losses


def test_bad_config_fails_at_start_naming_the_key(fast_cli, tmp_path):
    unknown = fast_cli(tmp_path, "--config.learning_rte=0.1")
    assert unknown.returncode == 2 and "config.learning_rte: unknown key" in unknown.stderr
    bad = fast_cli(tmp_path, "--config.optimizer=adam")
    assert bad.returncode == 2 and "config.optimizer='adam'" in bad.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_nan_guard_stops_and_keeps_last_good_checkpoint(fast_cli, tmp_path):
    # A learning rate of 1e30 makes the first update blow the weights up: step 2's loss is not finite.
    result = fast_cli(tmp_path, "--config.learning_rate=1e30", "--config.warmup_steps=0", "--config.schedule=constant",
                 "--config.grad_clip_norm=0", "--config.checkpoint_every=1", "--config.eval_every=0")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "loss is nan at step 2" in result.stderr or "loss is inf at step 2" in result.stderr, result.stderr[-2000:]
    assert "last good checkpoint is" in result.stderr and "/checkpoints/1" in result.stderr
    assert complete_checkpoints(tmp_path) == [1]
    assert all(not n.endswith("tmp") and "tmp" not in n for n in os.listdir(tmp_path / "checkpoints"))
