"""Mega-chunk's compiled training memory, from XLA (not wall time): linear in length with the default EMA form
(chunked for Mega-chunk) and default residual policy, and a fraction of unchunked MEGA's quadratic memory. A scaled
down form of the benchmark's claim (benchmarks/mega_benchmark.py, benchmarks/RESULTS.md)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import jaxmodels

CONFIG = dict(model_type="mega", architectures=["MegaForMaskedLM"], vocab_size=256, hidden_size=64,
              num_hidden_layers=2, intermediate_size=128, ema_projection_size=8, shared_representation_size=32,
              nffn_hidden_size=128, max_positions=4096, bidirectional=True, attention_activation="softmax",
              relative_positional_bias="rotary", normalization_type="scalenorm", dropout_prob=0.0,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, nffn_activation_dropout_prob=0.0)
CHUNKED = {**CONFIG, "use_chunking": True, "chunk_size": 64}


@functools.cache
def _temp(chunked: bool, length: int) -> int:
    """Temp bytes of the compiled masked-LM gradient step at ``length`` (compiled only, never run)."""
    module = jaxmodels.from_config(CHUNKED if chunked else CONFIG)
    params = jax.eval_shape(lambda: jaxmodels.init_params(module, jax.random.key(0)))
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)

    def grads(p, ids):
        return jax.grad(lambda p: module.apply({"params": p}, input_ids=ids, labels=ids).loss)(p)

    return jax.jit(grads).lower(params, ids).compile().memory_analysis().temp_size_in_bytes


def test_mega_chunk_memory_is_linear_in_length():
    assert _temp(True, 2048) <= 2.05 * _temp(True, 1024)
    # Unchunked MEGA's attention block is the whole sequence: its memory grows about 4x per doubling.
    assert _temp(False, 2048) >= 2.8 * _temp(False, 1024)


def test_mega_chunk_needs_a_fraction_of_unchunked_memory():
    assert _temp(True, 2048) <= 0.25 * _temp(False, 2048)


def test_defaults_pick_the_lean_forms():
    module = jaxmodels.from_config(CHUNKED)
    assert module.ema_algorithm == "auto" and module.scan_residuals == "dots"
    from jaxmodels.mega.modeling import resolve_ema_algorithm

    assert resolve_ema_algorithm("auto", module.config) == "chunked"
    assert resolve_ema_algorithm("auto", jaxmodels.from_config(CONFIG).config) == "fft"
