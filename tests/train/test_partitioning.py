"""train.partitioning / train.state: mesh strings, sharded init on 8 fake devices, optimizer-state shardings."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxmodels.registry import preset
from train import optim, partitioning
from train import state as state_lib


@pytest.mark.parametrize("spec,sizes", [
    ("data=-1", {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1}),
    ("data=2,fsdp=2,tensor=2", {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}),
    ("fsdp=-1, tensor=2", {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 2}),
    ("data=2,sequence=-1", {"data": 2, "fsdp": 1, "sequence": 4, "tensor": 1}),
])
def test_parse_mesh(spec, sizes):
    assert partitioning.parse_mesh(spec, 8) == sizes


@pytest.mark.parametrize("spec,message", [
    ("data=3", "needs 3 devices"), ("data=-1,fsdp=-1", "only one axis"), ("pipe=2", "unknown axis"),
    ("data=x", "not an integer"), ("data=2,data=4", "given twice"), ("data=-1,fsdp=3", "not divisible"),
])
def test_bad_mesh_names_the_key(spec, message):
    with pytest.raises(ValueError, match=rf"config.mesh=.*{message}"):
        partitioning.parse_mesh(spec, 8)


def test_sharded_init_follows_logical_rules():
    module = state_lib.build_model(preset("albert-tiny"))
    tx, _ = optim.build_optimizer("adamw", learning_rate=1e-3, total_steps=10)
    mesh = partitioning.make_mesh("data=2,fsdp=2,tensor=2")
    state, shardings = state_lib.init_train_state(module, tx, jax.random.key(0, impl="rbg"), mesh)
    ffn = state.params["albert"]["encoder"]["albert_layer_groups"]["ffn"]["kernel"]
    # [groups, inner, embed, mlp]: embed -> fsdp (ZeRO-3), mlp -> tensor (Megatron)
    assert ffn.sharding.spec == P(None, None, "fsdp", "tensor")
    # Adam moments live where their params live; the step counter is replicated.
    mu = state.opt_state[0].mu["albert"]["encoder"]["albert_layer_groups"]["ffn"]["kernel"]
    assert mu.sharding.spec == ffn.sharding.spec
    assert state.step.sharding.spec == P()
    assert int(state.step) == 0 and state_lib.count_params(state.params) > 0
    # A single device works with the same code.
    single = partitioning.make_mesh("data=-1", jax.devices()[:1])
    one, _ = state_lib.init_train_state(module, tx, jax.random.key(0, impl="rbg"), single)
    np.testing.assert_array_equal(jax.device_get(one.params["albert"]["encoder"]["albert_layer_groups"]["ffn"]["kernel"]),
                                  jax.device_get(ffn))


def test_activation_constraints_apply_under_activate():
    """Modules' `nn.with_logical_constraint`s become sharding constraints while `activate` is in scope (flax
    drops them silently under the legacy `with mesh:`)."""
    import jax.numpy as jnp

    import jaxmodels

    module = state_lib.build_model(preset("albert-tiny"))
    params = jax.eval_shape(lambda: jaxmodels.init_params(module, jax.random.key(0, impl="rbg")))
    ids = jax.ShapeDtypeStruct((8, 16), jnp.int32)

    def forward(p, x):
        return module.apply({"params": p}, input_ids=x).logits

    assert "sharding_constraint" not in str(jax.make_jaxpr(forward)(params, ids))
    with partitioning.activate(partitioning.make_mesh("data=2,fsdp=2,tensor=2")):
        assert "sharding_constraint" in str(jax.make_jaxpr(forward)(params, ids))
