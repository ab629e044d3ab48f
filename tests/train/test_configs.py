"""Every experiment file in configs/ parses, validates and builds its model; bad keys and values name the key."""

import glob
import os

import jax
import pytest

import jaxmodels
from tests.config_keys import set_keys
from train import experiment, optim
from train.experiment import load_config
from train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOT_EXPERIMENTS = {"__init__", "axis_rules", "presets", "defaults"}
EXPERIMENTS = sorted(
    name for name in (os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
    if name not in NOT_EXPERIMENTS
)


def _load(name):
    return load_config(os.path.join(ROOT, "configs", f"{name}.py"))


def test_every_config_file_is_covered():
    assert {"quickstart", "albert_pretrain", "tiny_albert_mlm", "albert_base_pretrain"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_parses_and_builds(name):
    config = _load(name)
    model = experiment.validate(config)
    module = state_lib.build_model(model, dtype=config.dtype, remat=config.remat)
    shapes = jaxmodels.abstract_params(module)  # traced only: base-size models cost nothing here
    assert jax.tree.leaves(shapes)
    tx, schedule = optim.from_config(config)
    assert float(schedule(config.warmup_steps)) == pytest.approx(config.learning_rate, rel=1e-5)


def _bad(name="tiny_albert_mlm", **changes):
    return set_keys(_load(name), changes)


@pytest.mark.parametrize("changes,message", [
    ({"batch_size": 0}, r"config.batch_size=0"),
    ({"learning_rate": -1.0}, r"config.learning_rate"),
    ({"optimizer": "adam"}, r"config.optimizer='adam'"),
    ({"schedule": "step"}, r"config.schedule"),
    ({"dtype": "float8"}, r"config.dtype"),
    ({"mesh": "data"}, r"config.mesh"),
    ({"grad_accum_steps": 3}, r"config.grad_accum_steps=3: must divide batch_size"),
    ({"seq_len": 1000}, r"config.seq_len=1000: exceeds model.max_position_embeddings"),
    ({"model": "albert-huge"}, r"config.model='albert-huge': unknown preset"),
    ({"objective.name": "span"}, r"config.objective.name='span'"),
    ({"data.vocab_size": 100000}, r"config.model.vocab_size=256: must be >= data.vocab_size"),
    ({"warmup_steps": 100}, r"config.warmup_steps=100"),
])
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        experiment.validate(_bad(**changes))


def test_unknown_keys_name_the_key():
    config = _load("tiny_albert_mlm")
    config.unlock()
    config.learning_rte = 1e-3
    with pytest.raises(ValueError, match=r"config.learning_rte: unknown key"):
        experiment.validate(config)
    config = _load("albert_pretrain")
    config.model.unlock()
    config.model.hidden_sise = 3
    with pytest.raises(ValueError, match=r"config.model.hidden_sise=3: not a field of AlbertConfig"):
        experiment.validate(config)
    config = _load("albert_pretrain")
    config.model.num_attention_heads = 5
    with pytest.raises(ValueError, match=r"config.model: .*hidden_size"):
        experiment.validate(config)


def test_reformer_length_rules():
    with pytest.raises(ValueError, match=r"config.seq_len=64: a Reformer with axial positions"):
        experiment.validate(_bad("quickstart", seq_len=64))
