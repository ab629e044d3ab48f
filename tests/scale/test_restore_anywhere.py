"""A checkpoint saved on one mesh restores onto another mesh and device count with identical params."""

import jax
import numpy as np
import pytest

from jaxmodels.registry import preset
from train import checkpoint as checkpoint_lib
from train import optim, partitioning
from train import state as state_lib

# Its module-scoped fixture is costly: every test of the module on one pytest-xdist worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("test_restore_anywhere")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    module = state_lib.build_model(preset("albert-tiny"))
    tx, _ = optim.build_optimizer("adamw", learning_rate=1e-3, total_steps=10)
    mesh = partitioning.make_mesh("data=2,fsdp=2,tensor=2")
    state, _ = state_lib.init_train_state(module, tx, jax.random.key(3, impl="rbg"), mesh)
    # Non-trivial optimizer moments, so restoring them is tested too.
    state = state.replace(step=state.step + 7, opt_state=jax.tree.map(
        lambda x: x + 0.5 if x.dtype.kind == "f" else x + 1, state.opt_state))
    workdir = tmp_path_factory.mktemp("saved")
    checkpoints = checkpoint_lib.Checkpoints(str(workdir), async_save=False)
    checkpoints.save(7, state, {"position": 3}, {"mesh": "data=2,fsdp=2,tensor=2"})
    checkpoints.close()
    return module, tx, str(workdir), jax.device_get(state)


@pytest.mark.parametrize("mesh_spec,num_devices", [
    ("fsdp=4", 4),                    # 8 -> 4 devices, params sharded along a different axis
    ("tensor=2,data=-1", 8),         # same devices, another layout
    ("data=-1", 1),                   # one device
    ("data=2,sequence=3", 6),         # a device count that is no power of two
])
def test_restore_onto_another_mesh(saved, mesh_spec, num_devices):
    module, tx, workdir, expected = saved
    mesh = partitioning.make_mesh(mesh_spec, jax.devices()[:num_devices])
    shardings = state_lib.state_shardings(module, tx, mesh)
    checkpoints = checkpoint_lib.Checkpoints(workdir)
    state, data_state, metadata = checkpoints.restore(7, state_lib.abstract_state(shardings, module, tx))
    checkpoints.close()
    assert data_state == {"position": 3} and metadata["mesh"] == "data=2,fsdp=2,tensor=2"
    assert int(state.step) == 7
    for got, want, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(expected), jax.tree.leaves(shardings)):
        assert got.sharding.is_equivalent_to(sharding, got.ndim), (got.sharding, sharding)
        assert len(got.sharding.device_set) == num_devices
        np.testing.assert_array_equal(np.asarray(got), want)
