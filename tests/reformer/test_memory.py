"""Memory of a Reformer training step, read from XLA's compiled program (lower + compile only, nothing runs).

A d=256 causal LM with alternating local / LSH layers (chunks of 64) and a chunked feed-forward: the reversible
stack keeps only the final streams and the per-layer buckets, so the step's temp memory must not grow with depth
(24 layers <= 1.2x 6 layers), and chunked local / LSH attention make it about linear in length (16K <= 4.6x 4K).
Past one attention block (``layers.local.BLOCK_LENGTH``, 4096 positions) the per-token temp must not grow and must
stay below what the whole-length attention tensors cost (issue 25: 37.8 KiB/token at 16K before, 24.9 after; 24.7
at 64K, 23.6 at 1M, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxmodels.reformer import ReformerConfig, ReformerModelWithLMHead


def memory_config(layers: int, length: int, **overrides) -> ReformerConfig:
    side = 2 ** (int(math.log2(length)) // 2)
    return ReformerConfig(**{**dict(
        hidden_size=256, num_attention_heads=4, attention_head_size=64, feed_forward_size=512,
        attn_layers=("local", "lsh") * (layers // 2), axial_pos_shape=(side, length // side),
        axial_pos_embds_dim=(64, 192), is_decoder=True, chunk_size_feed_forward=64, local_attn_chunk_length=64,
        lsh_attn_chunk_length=64, max_position_embeddings=length, hash_seed=0,
        # Dropout masks are regenerated from per-layer keys, never stored; without them the program compiles faster.
        hidden_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0), **overrides})


def compiled_train_step(config: ReformerConfig, batch: int = 1):
    """``jit(grad(loss)).lower(...).compile()`` for a causal-LM training step on abstract params and inputs."""
    module = ReformerModelWithLMHead(config)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0, impl="rbg"),
                                               input_ids=jnp.zeros((1, 1), jnp.int32))["params"])
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          jax.tree.map(lambda b: getattr(b, "value", b), boxed,
                                       is_leaf=lambda b: hasattr(b, "value")))
    length = math.prod(config.axial_pos_shape)
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def loss(p, ids):
        return module.apply({"params": p}, input_ids=ids, labels=ids, deterministic=False).loss

    return jax.jit(jax.value_and_grad(loss)).lower(params, ids).compile()


@functools.cache
def temp_bytes(layers: int, length: int) -> int:
    return compiled_train_step(memory_config(layers, length)).memory_analysis().temp_size_in_bytes


def test_train_step_memory_constant_in_depth():
    six, twenty_four = temp_bytes(6, 4096), temp_bytes(24, 4096)
    assert twenty_four <= 1.2 * six, f"24 layers: {twenty_four / 2**20:.1f} MiB vs 6 layers: {six / 2**20:.1f} MiB"


def test_train_step_memory_linear_in_length():
    short, long = temp_bytes(6, 4096), temp_bytes(6, 16384)
    assert long <= 4.6 * short, f"16K: {long / 2**20:.1f} MiB vs 4K: {short / 2**20:.1f} MiB"
    # And it is real activation memory that scales (not a constant that would pass trivially).
    assert long >= 2.0 * short


def test_train_step_temp_per_token_flat_and_bounded():
    """The compiles of the tests above, nothing new: 16K's temp per token is no more than 4K's and stays under
    27 KiB (the attention's windows, scores and probabilities over the whole length put it at ~38 KiB)."""
    short, long = temp_bytes(6, 4096) / 4096, temp_bytes(6, 16384) / 16384
    assert long <= short, f"per token: 16K {long / 1024:.1f} KiB vs 4K {short / 1024:.1f} KiB"
    assert long <= 27 * 1024, f"16K: {long / 1024:.1f} KiB per token"
