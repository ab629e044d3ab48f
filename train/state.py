"""The train state (step, params, optimizer state) and its sharded initialisation.

    module = build_model(model_dict, dtype="bfloat16")
    state, shardings = init_train_state(module, tx, rng, mesh)             # fresh
    state, shardings = init_train_state(module, tx, rng, mesh, init_from=hf_dir)  # HF checkpoint weights

Initialisation is traced once with `jax.eval_shape` to learn every array's shape and logical axes, then
compiled with `out_shardings`, so each device only ever materialises its own shard of params and moments.
Params are float32; the module's `dtype` is only the compute precision.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxmodels
from train import partitioning
from train.partitioning import DEFAULT_RULES


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to continue training: `step` (optimizer steps done), `params`,
    `opt_state`. The module and the optimizer are code, rebuilt from the config."""

    step: jax.Array
    params: Any
    opt_state: Any


@flax.struct.dataclass
class IndexedTrainState(TrainState):
    """The state of a retrieval-augmented run: also the index of block embeddings (``index [rows, P]`` fp32, rows
    split over every mesh axis; not params, so no optimizer touches it) and ``index_step``, the step whose params
    computed it. Both are checkpointed, so a run resumed after a refresh retrieves from the very same index."""

    index: Any
    index_step: jax.Array


def build_model(model: dict, *, dtype: str = "float32", remat: bool = False,
                sequence_sharding=None) -> nn.Module:
    """The module for an HF-style config dict, computing in `dtype`; `remat` recomputes layers in backward (every
    family has the knob, `layers.stacked`); `sequence_sharding` (`partitioning.sequence_sharding(mesh, rules)`)
    is given to a family that runs sequence-parallel."""
    module = jaxmodels.from_config(model, dtype=jnp.dtype(dtype))
    if remat:
        module = module.clone(remat=True)
    if sequence_sharding is not None and jaxmodels.family(model["model_type"]).sequence_parallel:
        module = module.clone(sequence_sharding=sequence_sharding)
    return module


def state_shardings(module: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                    rules=DEFAULT_RULES) -> TrainState:
    """NamedShardings of every array of the train state, from the params' logical names (no array is made)."""
    # The key is made outside the mesh context: under `jax.set_mesh` an eager op would run on the mesh's devices,
    # which for an ahead-of-time TPU topology exist only for compiling.
    key = jax.random.PRNGKey(0)
    with partitioning.activate(mesh, rules):
        boxed = jax.eval_shape(lambda r: jaxmodels.init_params(module, r, boxed=True), key)
    params_sh = partitioning.param_shardings(boxed, mesh, rules)
    abstract_params = nn.unbox(boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    return TrainState(
        step=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        params=params_sh,
        opt_state=partitioning.like_params_shardings(abstract_opt, abstract_params, params_sh, mesh),
    )


def init_train_state(module: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                     mesh: jax.sharding.Mesh, rules=DEFAULT_RULES, *,
                     init_from: str | None = None) -> tuple[TrainState, TrainState]:
    """`(state, shardings)`: a fresh (or `init_from`-loaded) state laid out on `mesh` by the logical `rules`.

    `init_from` is what `jaxmodels.from_pretrained` reads (an HF directory or Hub id, an Orbax params directory from
    `python -m jaxmodels.convert`, or a training run's checkpoint), loaded straight into the params' shardings on
    `mesh`, into `module`'s class and config (its fields over the checkpoint's, so a pretraining or bare-model
    checkpoint can start a task head); weights the checkpoint lacks (a new head) are initialised from `rng` with a
    warning naming them, as HF does. A checkpoint tensor of another shape than `module` needs is a `ValueError`
    naming `config.init_from`.
    """
    shardings = state_shardings(module, tx, mesh, rules)

    def from_params(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    if init_from:
        target = {**module.config.to_hf_dict(), "architectures": [type(module).__name__]}
        try:
            loaded_module, loaded = jaxmodels.from_pretrained(init_from, rng=rng, mesh=mesh, rules=rules,
                                                              overrides=target)
        except ValueError as error:
            message = str(error)
            raise ValueError(message if message.startswith("config.init_from") else
                             f"config.init_from={init_from!r}: {message}") from error
        abstract_params = jax.eval_shape(lambda: jaxmodels.init_params(module, jax.random.PRNGKey(0)))
        got = jax.tree.map(lambda x: (x.shape, str(x.dtype)), loaded)
        want = jax.tree.map(lambda x: (x.shape, str(x.dtype)), abstract_params)
        if got != want:
            raise ValueError(f"config.init_from={init_from!r}: its weights do not match config.model "
                             f"(checkpoint {type(loaded_module).__name__}); make config.model equal its config.json")
        with partitioning.activate(mesh, rules):
            state = jax.jit(from_params, out_shardings=shardings)(jax.device_put(loaded, shardings.params))
        return state, shardings

    with partitioning.activate(mesh, rules):
        state = jax.jit(lambda r: from_params(jaxmodels.init_params(module, r)), out_shardings=shardings)(rng)
    return state, shardings


def abstract_state(shardings: TrainState, module: nn.Module, tx: optax.GradientTransformation) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target of a checkpoint onto this mesh."""
    params = jax.eval_shape(lambda: jaxmodels.init_params(module, jax.random.PRNGKey(0)))
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def count_params(params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
