"""Training-side behaviour without the oracle: the three EMA algorithms and remat give the same model, and dropout
(standard and feature-wise) is active only when ``deterministic=False`` and is reproducible from its key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.mega import MegaConfig, MegaForMaskedLM

CFG = dict(vocab_size=30, hidden_size=8, num_hidden_layers=2, intermediate_size=12, ema_projection_size=3,
           shared_representation_size=4, nffn_hidden_size=10, max_positions=16, use_chunking=True, chunk_size=4,
           truncation=5)


def test_ema_algorithms_and_remat_agree():
    config = MegaConfig(**CFG)
    modules = {alg: MegaForMaskedLM(config, ema_algorithm=alg) for alg in ("fft", "scan", "chunked")}
    remat = MegaForMaskedLM(config, remat=True)
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(0, 30, (2, 8)))
    labels = jnp.asarray(rng.randint(0, 30, (2, 8)))
    mask = jnp.asarray(np.array([[1] * 8, [1] * 5 + [0] * 3]))

    @jax.jit
    def run(key):
        params = modules["fft"].init(key, ids)["params"]
        logits = {a: m.apply({"params": params}, ids, mask).logits for a, m in modules.items()}
        grad = {name: jax.grad(lambda p, m=m: m.apply({"params": p}, ids, mask, labels=labels).loss)(params)
                for name, m in (("plain", modules["fft"]), ("remat", remat))}
        return logits, grad

    logits, grads = run(jax.random.key(0, impl="rbg"))
    for alg in ("scan", "chunked"):
        np.testing.assert_allclose(logits[alg], logits["fft"], rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads["remat"], grads["plain"])


def test_dropout_only_in_training_and_keyed():
    config = MegaConfig(**{**CFG, "use_feature_dropout": True, "dropout_prob": 0.3, "hidden_dropout_prob": 0.3,
                           "attention_probs_dropout_prob": 0.3, "nffn_activation_dropout_prob": 0.3})
    module = MegaForMaskedLM(config)
    ids = jnp.asarray(np.random.RandomState(1).randint(0, 30, (2, 8)))

    @jax.jit
    def run(key, drop_key):
        params = module.init(key, ids)["params"]
        apply = lambda k: module.apply({"params": params}, ids, deterministic=False, rngs={"dropout": k}).logits  # noqa: E731
        return (module.apply({"params": params}, ids).logits, apply(drop_key), apply(drop_key),
                apply(jax.random.fold_in(drop_key, 1)))

    clean, a, a2, b = run(jax.random.key(0, impl="rbg"), jax.random.key(1, impl="rbg"))
    assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_array_equal(a, a2)
    assert not np.allclose(a, clean) and not np.allclose(a, b)
