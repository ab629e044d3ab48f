"""Longformer with sequence parallelism: given ``sequence_sharding`` over 2, 4 or 8 devices of a ``sequence`` mesh
axis, the banded attention runs under ``shard_map`` (halo blocks, slots gathered across shards, global rows'
softmax combined), and a training step of the bare model (a fixed projection of its outputs as the loss;
attention dropout on, per-layer windows, global tokens in several shards' ranges, a padded row) gives the loss and
gradients of the unsharded model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.longformer import LongformerConfig, LongformerModel
from layers.sequence_parallel import SequenceSharding

B, L, V = 2, 32, 40  # windows 4 and 8: on 8 shards, 4 positions each (two blocks of 2, one block of 4)
CONFIG = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
              attention_window=[4, 8], max_position_embeddings=40, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.2)
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _step(module):
    def loss(params, ids, mask, global_mask, probe):
        out = module.apply({"params": params}, input_ids=ids, attention_mask=mask, global_attention_mask=global_mask,
                           deterministic=False, rngs={"dropout": jax.random.PRNGKey(5)})
        return jnp.sum(out.last_hidden_state * probe) + jnp.sum(out.pooler_output)

    return jax.value_and_grad(loss)


@functools.cache
def _reference():
    module = LongformerModel(LongformerConfig(**CONFIG), max_global_tokens=3)
    rng = np.random.RandomState(0)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32))["params"]
    params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
    mask = np.ones((B, L), np.int32)
    mask[1, 27:] = 0
    ids = np.where(mask, rng.randint(3, V, (B, L)), 1)
    global_mask = np.zeros((B, L), np.int32)
    global_mask[0, [0, 13, 30]] = global_mask[1, 5] = 1
    probe = rng.normal(size=(B, L, CONFIG["hidden_size"])).astype(np.float32)
    inputs = tuple(jnp.asarray(x) for x in (ids, mask, global_mask, probe))
    return module, params, inputs, jax.jit(_step(module), compiler_options=FAST_COMPILE)(params, *inputs)


@pytest.mark.parametrize("shards", [2, 4, 8])
def test_sharded_training_step_equals_unsharded(shards):
    module, params, inputs, (want_loss, want_grads) = _reference()
    mesh = Mesh(np.asarray(jax.devices()[:shards]), ("sequence",))
    step = _step(module.clone(sequence_sharding=SequenceSharding(mesh, "sequence")))
    args = (params, *(jax.device_put(x, NamedSharding(mesh, P(None, "sequence", *(None,) * (x.ndim - 2))))
                      for x in inputs))
    assert "shard_map" in str(jax.make_jaxpr(step)(*args))  # the attention really runs sharded
    loss, grads = jax.jit(step, compiler_options=FAST_COMPILE)(*args)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    # Against the largest gradient: some are exactly zero in exact arithmetic (key biases) and only rounding noise.
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_grads))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
