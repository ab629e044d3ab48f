"""train.optim: optimizers match optax's own semantics; schedules; clipping; gradient accumulation in the step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import objectives, optim
from train import step as step_lib
from train.state import TrainState


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"dense": {"kernel": jax.random.normal(k1, (256, 130)), "bias": jnp.zeros((130,))},
            "norm": {"scale": jnp.ones((130,))}, "small": jax.random.normal(k2, (3, 4))}


def _grads(i, params):
    return jax.tree.map(lambda p: jnp.sin(p * (i + 1.0)) + 0.1 * i, params)


def _run(tx, params, steps=4):
    state = tx.init(params)
    for i in range(steps):
        updates, state = tx.update(_grads(i, params), state, params)
        params = optax.apply_updates(params, updates)
    return params


def _mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


@pytest.mark.parametrize("name,reference", [
    ("lamb", lambda: optax.lamb(1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01, mask=_mask)),
    ("adafactor", lambda: optax.adafactor(1e-2, weight_decay_rate=0.01, weight_decay_mask=_mask)),
    ("adamw", lambda: optax.adamw(1e-2, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01, mask=_mask)),
])
def test_optimizer_equals_optax(name, reference):
    params = _params()
    tx, schedule = optim.build_optimizer(name, learning_rate=1e-2, total_steps=10, warmup_steps=0,
                                         schedule="constant", weight_decay=0.01, b1=0.9, b2=0.99, eps=1e-6)
    ours, theirs = _run(tx, params), _run(reference(), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, theirs)
    assert float(schedule(5)) == pytest.approx(1e-2)


def test_adafactor_factors_large_matrices_only():
    tx, _ = optim.build_optimizer("adafactor", learning_rate=1e-2, total_steps=10)
    params = _params()
    shapes = {tuple(x.shape) for x in jax.tree.leaves(tx.init(params))}
    assert (256,) in shapes and (130,) in shapes  # row / column statistics of the 256 x 130 kernel
    assert (256, 130) not in shapes  # never a full second moment for it


def test_no_decay_on_biases_and_norms():
    params = _params()
    tx, _ = optim.build_optimizer("adamw", learning_rate=1.0, total_steps=10, schedule="constant",
                                  weight_decay=0.5, grad_clip_norm=0.0)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0 and float(jnp.abs(updates["norm"]["scale"]).max()) == 0
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5 * params["dense"]["kernel"], rtol=1e-6)


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_schedule_warmup_then_decay(schedule):
    lr = optim.build_schedule(1.0, total_steps=100, warmup_steps=10, schedule=schedule,
                              end_learning_rate_factor=0.1)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
    assert float(lr(100)) == pytest.approx(1.0 if schedule == "constant" else 0.1, abs=1e-6)


def test_clipping_bounds_the_global_norm():
    params = _params()
    tx, _ = optim.build_optimizer("sgd", learning_rate=1.0, total_steps=10, schedule="constant", b1=0.0,
                                  grad_clip_norm=0.5)
    big = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
    updates, _ = tx.update(big, tx.init(params), params)
    assert float(optax.global_norm(updates)) == pytest.approx(0.5, rel=1e-5)


class _Linear:
    """A bigram LM with params {"w": [vocab, vocab]}: enough to check accumulation in the real step."""

    class config:
        vocab_size = 16

    def apply(self, variables, input_ids, deterministic, rngs):
        return type("Out", (), {"logits": variables["params"]["w"][input_ids]})


def test_gradient_accumulation_equals_one_big_batch():
    objective = objectives.get_objective({"name": "causal_lm"})
    ids = jax.random.randint(jax.random.PRNGKey(1), (8, 12), 7, 16)
    batch = {"inputs": ids, "segment_ids": jnp.ones_like(ids), "positions": jnp.zeros_like(ids)}
    tx, schedule = optim.build_optimizer("sgd", learning_rate=0.1, total_steps=10, schedule="constant", b1=0.0)
    params = {"w": jax.random.normal(jax.random.PRNGKey(2), (16, 16))}
    results = []
    for accum in (1, 4):
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
        new, metrics = step_lib.train_step(state, batch, jax.random.key(0, impl="rbg"), module=_Linear(),
                                           objective=objective, tx=tx, schedule=schedule, grad_accum_steps=accum)
        results.append((new, metrics))
    (a, ma), (b, mb) = results
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-5, atol=1e-6)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)
    assert int(b.step) == 1
