"""HF -> Orbax (``python -m jaxmodels.convert``) -> ``python -m train --config.init_from`` -> HF: the weights a run
starts from are the converted ones, and a run's checkpoint converts back to a directory HF loads."""

import os
import subprocess
import sys

import jax
import numpy as np

import jaxmodels
from tests.e2e.conftest import ROOT, TINY
from tests.oracle import require_torch
from train import experiment


def _convert(env, *args):
    result = subprocess.run([sys.executable, "-m", "jaxmodels.convert", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_hf_to_orbax_to_train_init_from_to_hf(cli, cli_env, tmp_path):
    torch = require_torch()  # the [ref] oracle: CI installs it, so a missing one fails rather than skips
    import transformers
    model = experiment.resolve(experiment.load_config(TINY)).model  # the HF config dict the run builds
    module = jaxmodels.from_config(model)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(3))  # not the run's own init (its seed is 0)
    source, orbax, workdir, back = (str(tmp_path / d) for d in ("hf", "orbax", "run", "back"))
    jaxmodels.save_pretrained(module, params, source)
    assert "Orbax" in _convert(cli_env, "--hf", source, "--orbax", orbax)

    # One step at a learning rate of 1e-30: an update below fp32 rounding for every non-zero weight (zero biases
    # move by ~1e-30), so the run's checkpoint holds the weights it started from (any other init, or a mangled
    # conversion, would be off by far more than the 1e-20 allowed).
    result = cli(workdir, f"--config.init_from={orbax}", "--config.total_steps=1", "--config.learning_rate=1e-30",
                 "--config.warmup_steps=0", "--config.eval_every=0", "--config.checkpoint_every=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "1", "state"))
    assert "HF" in _convert(cli_env, "--orbax", workdir, "--hf", back)

    cls = getattr(transformers, module.__class__.__name__)
    ids = torch.tensor(np.random.default_rng(0).integers(5, model["vocab_size"], (2, 12)))
    with torch.no_grad():
        want = cls.from_pretrained(source).eval()(input_ids=ids)
        got = cls.from_pretrained(back).eval()(input_ids=ids)
    np.testing.assert_array_equal(got.logits.numpy(), want.logits.numpy())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-20),
                 jax.device_get(jaxmodels.from_pretrained(back)[1]), jax.device_get(params))
