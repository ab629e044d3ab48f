"""REALM pretraining with index refreshes resumes exactly: a run SIGKILLed after a refresh (its checkpoint holds the
refreshed index and the step it was computed at) continues onto the loss trajectory of an uninterrupted run, and a
workdir of another block store is refused.

Four `python -m train` processes in all (the uninterrupted reference, the killed run, its resumption, the refused
run), sharing the e2e persistent compilation cache (tests/e2e/conftest.py): the killed and resumed runs load the
reference's compiled step and refresh instead of compiling them again.
"""

import json
import signal
import time

import pytest

from tests.e2e.conftest import ROOT, complete_checkpoints, train_losses

# Its module-scoped fixture is costly: every test of the module on one pytest-xdist worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("test_realm_resume")

CONFIG = f"{ROOT}/configs/realm_pretrain.py"
STEPS = 6
# A smaller model and corpus than the preset: the point is the index in the checkpoint, not learning.
OVERRIDES = (f"--config.total_steps={STEPS}", "--config.checkpoint_every=2", "--config.log_every=1",
             "--config.eval_every=0", "--config.keep_checkpoints=3", "--config.warmup_steps=1",
             "--config.objective.refresh_every=2", "--config.data.max_documents=2", "--config.data.block_tokens=32",
             "--config.data.vocab_size=128", "--config.model.vocab_size=128", "--config.model.hidden_size=16",
             "--config.model.retriever_proj_size=8", "--config.model.num_hidden_layers=1",
             "--config.model.intermediate_size=32", "--config.model.num_candidates=3", "--config.batch_size=2",
             "--config.seq_len=32", "--config.model.max_position_embeddings=72", "--config.async_checkpointing=False")


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory):
    """The uninterrupted run: its workdir and its loss at each step."""
    workdir = tmp_path_factory.mktemp("realm_uninterrupted")
    result = cli(workdir, *OVERRIDES, config=CONFIG, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = train_losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    # The index was refreshed at steps 2 and 4 (and built at 0); each refresh's time is logged.
    assert {r["index_step"] for r in rows if "index_step" in r} == {0, 2, 4}
    assert all(r["index_refresh_seconds"] > 0 for r in rows if "index_step" in r)
    return workdir, losses


def test_sigkill_after_refresh_then_resume(cli, reference, tmp_path):
    process = cli(tmp_path, *OVERRIDES, config=CONFIG, wait=False)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None and not complete_checkpoints(tmp_path):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    killed_at = complete_checkpoints(tmp_path)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed_at and max(killed_at) < STEPS
    with open(tmp_path / "checkpoints" / str(max(killed_at)) / "metadata" / "metadata") as f:
        meta = json.load(f)
    assert meta["index_step"] == max(killed_at)  # the checkpoint holds the index refreshed at its own step

    result = cli(tmp_path, *OVERRIDES, config=CONFIG, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {tmp_path / 'checkpoints'}/{max(killed_at)}" in result.stderr
    assert train_losses(tmp_path) == reference[1]  # exactly, not approximately


def test_workdir_of_another_block_store_is_refused(cli, reference):
    """The reference's workdir, rerun on a corpus of one more document (another block store): refused by name before
    anything is trained or written (the reference's files are unchanged)."""
    workdir, losses = reference
    other = cli(workdir, *OVERRIDES, "--config.total_steps=8", "--config.data.max_documents=3", config=CONFIG,
                timeout=600)
    assert other.returncode != 0
    assert "block store" in other.stderr, other.stderr[-3000:]
    assert train_losses(workdir) == losses and complete_checkpoints(workdir) == [2, 4, 6]
