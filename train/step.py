"""The pure train and eval steps, jitted with shardings and the train state donated.

    train_step = make_train_step(module, objective, tx, schedule, shardings, batch_sharding, grad_accum_steps=2)
    state, metrics = train_step(state, batch, seed_key)

Randomness is `fold_in(seed_key, state.step)`: a step's dropout and masks depend only on the seed and the
step number, so a run resumed at step k draws exactly what an uninterrupted run draws at step k.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from train.state import TrainState


def _split_micro(batch: dict, n: int) -> dict:
    """`[batch, ...]` -> `[n, batch / n, ...]`, micro-batch i holding rows i, i + n, i + 2n, ...

    Strided, not contiguous: with the batch sharded over devices, each device's rows then split evenly over
    the micro-batches, so every scan step computes on 1/n of each device's rows. Contiguous blocks would put
    whole devices' rows in one micro-batch, the scan axis would be sharded, and XLA would regather each
    micro-batch onto fewer devices: per-chip memory no lower than without accumulation (train/aot.py shows it).
    """
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def objective_extras(state, context) -> dict:
    """Keyword arguments a retrieval objective takes besides the batch: the state's ``index`` and the run's constant
    ``context`` (the block store's tokens); nothing for a state without an index."""
    if not hasattr(state, "index"):
        return {}
    return {"index": state.index, **(context or {})}


def train_step(state: TrainState, batch: dict, seed_key: jax.Array, *, module, objective, tx, schedule,
               grad_accum_steps: int = 1, context: dict | None = None) -> tuple[TrainState, dict]:
    """One optimizer step on `batch` (`{name: [batch, length]}`): mean loss and gradient over
    `grad_accum_steps` equal micro-batches (summed in a scan, so memory is one micro-batch's), then `tx`.

    Returns the new state and scalar metrics: the objective's, `grad_norm` and the `learning_rate` used.
    """
    step_key = jax.random.fold_in(seed_key, state.step)
    extras = objective_extras(state, context)

    def loss_fn(params, micro, key):
        return objective(module, params, micro, key, deterministic=False, **extras)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (_, metrics), grads = grad_fn(state.params, batch, step_key)
    else:
        def accumulate(carry, xs):
            micro, index = xs
            (_, metrics), grads = grad_fn(state.params, micro, jax.random.fold_in(step_key, index))
            return jax.tree.map(jnp.add, carry, (grads, metrics)), None

        micro_batches = _split_micro(batch, grad_accum_steps)
        (_, metrics_shape), grads_shape = jax.eval_shape(
            grad_fn, state.params, jax.tree.map(lambda x: x[0], micro_batches), step_key)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, metrics_shape))
        (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(grad_accum_steps)))
        grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, (grads, metrics))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, seed_key: jax.Array, *, module, objective, extras: dict | None = None) -> dict:
    """The objective's metrics without dropout; masks drawn from `seed_key` so every eval sees the same ones.
    ``extras``: a retrieval objective's index and block store (``objective_extras``)."""
    _, metrics = objective(module, params, batch, seed_key, deterministic=True, **(extras or {}))
    return metrics


def make_train_step(module, objective, tx, schedule, state_shardings, batch_sharding, *,
                    grad_accum_steps: int = 1, context_sharding=None
                    ) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """`train_step` bound to a model and optimizer, jitted with shardings and the state donated. With
    `context_sharding` (a retrieval run) the step takes a fourth argument, the constant context (block tokens)."""
    if context_sharding is not None:
        def with_context(state, batch, seed_key, context):
            return train_step(state, batch, seed_key, module=module, objective=objective, tx=tx, schedule=schedule,
                              grad_accum_steps=grad_accum_steps, context=context)

        return jax.jit(with_context, in_shardings=(state_shardings, batch_sharding, None, context_sharding),
                       out_shardings=(state_shardings, None), donate_argnums=(0,))

    def fn(state, batch, seed_key):
        return train_step(state, batch, seed_key, module=module, objective=objective, tx=tx, schedule=schedule,
                          grad_accum_steps=grad_accum_steps)

    return jax.jit(fn, in_shardings=(state_shardings, batch_sharding, None), out_shardings=(state_shardings, None),
                   donate_argnums=(0,))


def make_eval_step(module, objective, params_shardings, batch_sharding, extras_sharding=None
                   ) -> Callable[[Any, dict, jax.Array], dict]:
    if extras_sharding is not None:
        def with_extras(params, batch, seed_key, extras):
            return eval_step(params, batch, seed_key, module=module, objective=objective, extras=extras)

        return jax.jit(with_extras, in_shardings=(params_shardings, batch_sharding, None, extras_sharding))

    def fn(params, batch, seed_key):
        return eval_step(params, batch, seed_key, module=module, objective=objective)

    return jax.jit(fn, in_shardings=(params_shardings, batch_sharding, None))
