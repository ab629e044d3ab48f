"""The quickstart config through the CLI, cut to a few steps: Reformer causal LM, unigram entropy, a sample."""

import os

from tests.e2e.conftest import ROOT, complete_checkpoints


def test_quickstart_smoke(cli, tmp_path):
    result = cli(tmp_path, "--config.total_steps=3", "--config.warmup_steps=1", "--config.log_every=1",
                 "--config.eval_every=3", "--config.eval_steps=1", "--config.checkpoint_every=3",
                 "--config.batch_size=2", "--config.sample_tokens=4",
                 config=os.path.join(ROOT, "configs", "quickstart.py"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: step 3" in result.stdout
    assert "unigram entropy of the corpus" in result.stdout
    assert "bits/char)" in result.stdout  # the eval loss per character beside nats/token
    sample = next(line for line in result.stdout.splitlines() if line.startswith("sample: "))[len("sample: "):]
    # The prompt is echoed, then the model's own tokens: something must follow it.
    assert sample.startswith("In the beginning") and len(sample.strip()) > len("In the beginning"), sample
    assert complete_checkpoints(tmp_path) == [3]
    assert (tmp_path / "loss.png").exists()
