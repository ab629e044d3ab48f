"""train.state: `init_from` an HF directory; a checkpoint round trip restores the state exactly."""

import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels.registry import preset
from train import checkpoint, optim, partitioning
from train import state as state_lib


@pytest.fixture(scope="module")
def setup():
    module = state_lib.build_model(preset("albert-tiny"))
    tx, _ = optim.build_optimizer("lamb", learning_rate=1e-3, total_steps=10, grad_clip_norm=1.0)
    mesh = partitioning.make_mesh("data=-1", jax.devices()[:1])
    return module, tx, mesh


def test_init_from_hf_directory(setup, tmp_path):
    module, tx, mesh = setup
    params = jaxmodels.init_params(module, jax.random.PRNGKey(7))
    jaxmodels.save_pretrained(module, params, str(tmp_path / "hf"))
    state, _ = state_lib.init_train_state(module, tx, jax.random.key(0, impl="rbg"), mesh,
                                          init_from=str(tmp_path / "hf"))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), jax.device_get(params))
    assert int(state.step) == 0


def test_init_from_mismatched_model_names_the_key(setup, tmp_path):
    module, tx, mesh = setup
    other = state_lib.build_model({**preset("albert-tiny"), "hidden_size": 32})
    jaxmodels.save_pretrained(other, jaxmodels.init_params(other, jax.random.PRNGKey(0)), str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"config.init_from="):
        state_lib.init_train_state(module, tx, jax.random.key(0, impl="rbg"), mesh, init_from=str(tmp_path / "hf"))


def test_checkpoint_round_trip(setup, tmp_path):
    module, tx, mesh = setup
    state, shardings = state_lib.init_train_state(module, tx, jax.random.key(1, impl="rbg"), mesh)
    saver = checkpoint.Checkpoints(str(tmp_path), keep=1)
    saver.save(3, state, {"pipeline": {"seed": 0}, "grain": [1, 2]}, {"step": 3})
    saver.save(5, state, {"pipeline": {"seed": 0}, "grain": [3]}, {"step": 5})
    saver.close()
    reader = checkpoint.Checkpoints(str(tmp_path), keep=1)
    assert reader.latest_step() == 5 and reader.all_steps() == [5]  # keep=1: the older one was removed
    restored, data_state, metadata = reader.restore(5, state_lib.abstract_state(shardings, module, tx))
    assert data_state == {"pipeline": {"seed": 0}, "grain": [3]} and metadata == {"step": 5}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
    assert checkpoint.is_complete(str(tmp_path / "checkpoints" / "5"))
