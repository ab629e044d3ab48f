"""Reformer with sequence parallelism: given ``sequence_sharding`` over 2 or 4 devices of a ``sequence`` mesh axis, the
local-attention layers run ``sharded_local_attention`` inside the reversible stack, and a training step (dropout on,
LSH layers beside them) gives the loss and gradients of the unsharded model; the trainer builds the field from its
mesh and rules; a module without it never shards."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.reformer import ReformerConfig, ReformerForMaskedLM, ReformerModelWithLMHead
from layers.sequence_parallel import SequenceSharding
from train import partitioning

B, L, V = 2, 32, 24
CONFIG = dict(vocab_size=V, hidden_size=8, num_attention_heads=2, attention_head_size=4, feed_forward_size=12,
              attn_layers=("local", "lsh", "local"), local_attn_chunk_length=4, local_num_chunks_before=1,
              lsh_attn_chunk_length=8, num_buckets=4, axial_pos_embds=False, max_position_embeddings=L,
              hidden_dropout_prob=0.1, local_attention_probs_dropout_prob=0.2, lsh_attention_probs_dropout_prob=0.0)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
MODELS = {
    # local look-ahead (a halo from the right neighbour) in the encoder; causal look-back in the decoder.
    "encoder": (ReformerForMaskedLM, dict(local_num_chunks_after=1)),
    "decoder": (ReformerModelWithLMHead, dict(is_decoder=True)),
}


def _mesh(shards: int) -> Mesh:
    return Mesh(np.asarray(jax.devices()[:2 * shards]).reshape(2, shards), ("data", "sequence"))


def _step(module, rotations):
    def loss(params, ids, mask, labels):
        out = module.apply({"params": params}, input_ids=ids, attention_mask=mask, labels=labels,
                           lsh_rotations=rotations, deterministic=False, rngs={"dropout": jax.random.PRNGKey(5)})
        return out.loss

    return jax.value_and_grad(loss)


def _run(fn, *args):
    return jax.jit(fn, compiler_options=FAST_COMPILE)(*args)


@functools.cache
def _reference(name: str):
    head, extra = MODELS[name]
    module = head(ReformerConfig(**CONFIG, **extra))
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype),
                          jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])
    mask = np.ones((B, L), np.int32)
    mask[1, 27:] = 0
    ids = jnp.asarray(np.where(mask, rng.randint(1, V, (B, L)), 0))
    labels = jnp.asarray(np.where(rng.rand(B, L) < 0.5, rng.randint(1, V, (B, L)), -100))
    rotations = jnp.asarray(rng.normal(size=module.config.rotations_shape(L)), jnp.float32)
    inputs = (ids, jnp.asarray(mask), labels)
    return module, params, inputs, rotations, _run(_step(module, rotations), params, *inputs)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shards", [2, 4])
def test_sharded_training_step_equals_unsharded(name, shards):
    module, params, inputs, rotations, (want_loss, want_grads) = _reference(name)
    mesh = _mesh(shards)
    sharded = module.clone(sequence_sharding=SequenceSharding(mesh, "sequence", ("data",)))
    step = _step(sharded, rotations)
    spec = NamedSharding(mesh, P("data", "sequence"))
    args = (params, *(jax.device_put(x, spec) for x in inputs))
    assert "shard_map" in str(jax.make_jaxpr(step)(*args))  # the local layers really run sharded
    loss, grads = _run(step, *args)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max()),
                 grads, want_grads)


def test_trainer_gives_the_field_from_its_mesh_and_rules():
    mesh = partitioning.make_mesh("data=2,sequence=4")
    sharding = partitioning.sequence_sharding(mesh, partitioning.DEFAULT_RULES)
    assert sharding.shards == 4 and sharding.batch_axes == ("data", "fsdp")
    assert partitioning.sequence_sharding(partitioning.make_mesh("data=8")) is None  # nothing to split
    module, params, inputs, rotations, _ = _reference("encoder")
    # No field, no sharding, whatever mesh is in scope.
    with jax.set_mesh(mesh):
        assert "shard_map" not in str(jax.make_jaxpr(_step(module, rotations))(params, *inputs))
