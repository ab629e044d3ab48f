"""MEGA with sequence parallelism: given ``sequence_sharding`` (a ``SequenceSharding`` over a mesh with a
``sequence`` axis) the full-pass EMA runs through ``sharded_damped_ema`` (length split over the mesh), giving the
outputs and gradients of the unsharded model, with or without a mesh in the context; a module without the field
never shards, whatever mesh is in scope; init, cached decoding and a size-1 axis stay unsharded; a length the axis
does not divide is refused."""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.mega import MegaConfig, MegaForCausalLM, MegaForMaskedLM
from layers.sequence_parallel import SequenceSharding

OUT_TOL = 1e-5
GRAD_TOL = 1e-4
V, PAD = 40, 1
B, L = 4, 16  # 4 local positions per shard on 4 shards; the batch divides data=2 and data*fsdp=4
BASE = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, intermediate_size=24, ema_projection_size=4,
            shared_representation_size=8, nffn_hidden_size=20, max_positions=32, dropout_prob=0.0,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, nffn_activation_dropout_prob=0.0,
            pad_token_id=PAD)
RULES_2D = (("act_batch", "data"), ("act_length", "sequence"))
# Compiles dominate this file; LLVM's optimisation level changes how fast the tiny programs run, not the HLO
# (collectives included) nor the arithmetic.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

MODELS = {
    "causal": (MegaForCausalLM, dict(is_decoder=True, bidirectional=False, use_chunking=True, chunk_size=4,
                                     attention_activation="softmax", relative_positional_bias="simple")),
    # truncation 6 reaches across the 4-position shards: the ppermute path of the truncated EMA.
    "bidirectional": (MegaForMaskedLM, dict(bidirectional=True, truncation=6, attention_activation="laplace",
                                            relative_positional_bias="rotary", normalize_before_mega=False)),
}
MESH_2D = (("data", "sequence"), (2, 4))
MESH_4D = (("data", "fsdp", "sequence", "tensor"), (2, 2, 2, 1))  # the trainer's axes; batch over data*fsdp
TRAINER_RULES = (("act_batch", ("data", "fsdp")), ("act_length", "sequence"))
# (model, mesh, batch axes, context): with no mesh in the context, and under the trainer's `jax.set_mesh` (with
# its rules, so the modules' activation constraints apply too); on the trainer's mesh the batch is split over
# (data, fsdp) inside the shard_map, as outside it.
CASES = {
    "causal-2x4-no_context": ("causal", MESH_2D, ("data",), None),
    "bidirectional-2x4-set_mesh": ("bidirectional", MESH_2D, ("data",), RULES_2D),
    "causal-2x2x2-set_mesh-merged_batch": ("causal", MESH_4D, ("data", "fsdp"), TRAINER_RULES),
}


def _mesh(names, shape) -> Mesh:
    return Mesh(np.asarray(jax.devices()[: int(np.prod(shape))]).reshape(shape), names)


@contextlib.contextmanager
def _in_scope(mesh: Mesh, rules):
    if rules is None:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _inputs(seed: int = 0):
    rng = np.random.RandomState(seed)
    mask = np.ones((B, L), np.int32)
    mask[1, 11:] = 0
    mask[2, 5:] = 0  # with chunk 4: whole padded chunks, and padding inside a shard
    mask[3, :2] = 0  # left padding
    ids = np.where(mask == 1, rng.randint(0, V, (B, L)), PAD)
    labels = np.where(rng.rand(B, L) < 0.6, rng.randint(0, V, (B, L)), -100)
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels)


def _random_params(module, seed: int = 0):
    """Random N(0, 0.3) values in every param (EMA factors included; no default value hides an error), from the
    init's shapes only: compiling the init (unrolled PRNG) would cost more than the whole test."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


def _loss_and_grads(module):
    def run(params, ids, mask, labels):
        def loss(p):
            out = module.apply({"params": p}, ids, mask, labels=labels)
            return out.loss, out.logits

        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, value, grads

    return jax.jit(run)


def _compile(fn, *args):
    return fn.lower(*args).compile(FAST_COMPILE)


@functools.cache
def _model(name: str):
    """(module, params, inputs, the unsharded (logits, loss, grads)): one reference compile per model."""
    head, extra = MODELS[name]
    module = head(MegaConfig(**BASE, **extra))
    params = _random_params(module)
    inputs = _inputs()
    run = _loss_and_grads(module)
    return module, params, inputs, _compile(run, params, *inputs)(params, *inputs)


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_equals_unsharded(case):
    name, (names, shape), batch_axes, rules = CASES[case]
    module, params, inputs, want = _model(name)
    mesh = _mesh(names, shape)
    run = _loss_and_grads(module.clone(sequence_sharding=SequenceSharding(mesh, "sequence", batch_axes)))
    with _in_scope(mesh, rules):
        batch_axes = tuple(a for a in ("data", "fsdp") if a in names)
        seq = NamedSharding(mesh, P(batch_axes, "sequence"))
        args = (params, *(jax.device_put(a, seq) for a in inputs))
        # The sharded path is really taken: shard_map in the program, its collectives in the compiled HLO.
        assert "shard_map" in str(jax.make_jaxpr(run)(*args))
        compiled = _compile(run, *args)
        got = compiled(*args)
    hlo = compiled.as_text()
    assert "all-gather" in hlo
    if MODELS[name][1].get("truncation"):
        assert "collective-permute" in hlo  # the delayed stream of the truncated EMA
    assert got[0].sharding.spec[1] == "sequence"  # the logits stay split along the length

    np.testing.assert_allclose(got[0], want[0], rtol=OUT_TOL, atol=OUT_TOL)
    np.testing.assert_allclose(got[1], want[1], rtol=OUT_TOL, atol=OUT_TOL)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=GRAD_TOL, atol=GRAD_TOL * np.abs(w).max()),
                 got[2], want[2])


def test_layout():
    mesh2d = _mesh(("data", "sequence"), (2, 4))
    assert SequenceSharding(mesh2d, "sequence", ("data",)).layout(B, L) == ("data",)
    assert SequenceSharding(mesh2d, "sequence", ("data",)).layout(3, L) is None  # batch replicated
    assert SequenceSharding(mesh2d).layout(B, L) is None  # no batch axes: replicated in the shard_map
    with pytest.raises(ValueError, match="'sequence' mesh axis size 4"):
        SequenceSharding(mesh2d).layout(B, 10)
    with pytest.raises(ValueError, match="batch_axes"):
        SequenceSharding(mesh2d, "sequence", ("fsdp",))
    with pytest.raises(ValueError, match="axis='length'"):
        SequenceSharding(mesh2d, "length")
    # The trainer's mesh: the batch over data and fsdp together (size-1 axes dropped), as the activations are.
    mesh4d = _mesh(("data", "fsdp", "sequence", "tensor"), (2, 2, 2, 1))
    assert SequenceSharding(mesh4d, "sequence", ("data", "fsdp")).layout(B, L) == ("data", "fsdp")
    assert SequenceSharding(mesh4d, "sequence", ("data", "tensor")).layout(B, L) == ("data",)


def test_without_the_field_a_mesh_in_scope_changes_nothing():
    module, params, inputs, _ = _model("causal")
    mesh = _mesh(("data", "sequence"), (2, 4))
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES_2D):
        assert "shard_map" not in str(jax.make_jaxpr(_loss_and_grads(module))(params, *inputs))


def test_init_and_decoding_stay_unsharded_and_bad_length_is_refused():
    mesh = _mesh(("data", "sequence"), (2, 4))
    module = MegaForCausalLM(MegaConfig(**BASE, is_decoder=True, bidirectional=False),
                             sequence_sharding=SequenceSharding(mesh, "sequence", ("data",)))
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES_2D):
        # Init's dummy input has length 1, which 4 shards do not divide: init must stay unsharded.
        params = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
        cache = module.init_cache(B, 8)
        step = jax.make_jaxpr(lambda p, i, c: module.apply({"params": p}, i, cache=c).logits)(
            params, jnp.zeros((B, 3), jnp.int32), cache)
        assert "shard_map" not in str(step)
        with pytest.raises(ValueError, match="input length 10 is not a multiple of the 'sequence' mesh axis"):
            jax.eval_shape(lambda p: module.apply({"params": p}, jnp.zeros((B, 10), jnp.int32)).logits, params)
