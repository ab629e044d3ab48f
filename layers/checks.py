"""Value checks on inputs and labels that never let a bad value through silently.

A label out of range does not fail in JAX: ``take_along_axis`` clamps the index, so the loss is a plausible wrong
number (or NaN), eagerly and under ``jit``. So every loss and every model input check calls :func:`check_values`:

- on concrete values (numpy arrays, or jax arrays outside ``jit``) it checks right away in numpy and raises
  ``ValueError`` naming the argument, the rule and the first bad value and where it is;
- under a ``jit`` the values are tracers and cannot be read, so by default nothing is checked (free, as XLA
  wants it); inside :func:`checked` the same rule becomes a ``jax.experimental.checkify`` check that is compiled
  in, and a violation raises the same ``ValueError`` after the call.

    loss = checked(jax.jit(loss_fn))(params, batch)    # or checked(loss_fn): jitted for you

Shapes and dtypes are static, so :func:`check_rank`, :func:`check_shape` and :func:`check_dtype` (chex assertions
with the argument's name and layout in the message, raising ``ValueError``) run at trace time and cost nothing
under ``jit``: a caller's wrong-rank argument fails at the boundary of the primitive, not deep inside XLA.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array

# Set while a `checked` function is traced: the checks compile into the program instead of being skipped.
_TRACING_CHECKED = contextvars.ContextVar("layers_checks_tracing_checked", default=False)


def is_concrete(x) -> bool:
    """True for a value that can be read now (numpy / committed jax array), False for None or a tracer."""
    return x is not None and not isinstance(x, jax.core.Tracer)


def check_values(name: str, x, ok: Callable[[Any], Any], rule: str) -> None:
    """Raises ``ValueError`` if ``ok(x)`` (elementwise, numpy or jnp) is False anywhere in ``x``.

    The message: ``"{name}: {rule}; got {value} at index {index}"``. Nothing happens for ``x=None``; under
    ``jit`` outside :func:`checked` nothing is checked (the values do not exist yet).
    """
    if x is None:
        return
    if is_concrete(x):
        values = np.asarray(x)
        good = np.asarray(ok(values))
        if values.size and not good.all():
            where = np.unravel_index(int(np.argmin(good.ravel())), good.shape) if good.shape else ()
            bad = values[where] if values.shape == good.shape else values.ravel()[0]
            # Formatted as checkify formats the traced case, so both modes say the same.
            raise ValueError(f"{name}: {rule}; got {np.asarray(bad).item()} at index {np.asarray(where, np.int64)}")
    elif _TRACING_CHECKED.get():
        good = ok(x)
        flat = jnp.ravel(good)
        first = jnp.argmin(flat)
        index = jnp.unravel_index(first, jnp.shape(good)) if jnp.ndim(good) else ()
        bad = jnp.ravel(x)[first] if jnp.shape(x) == jnp.shape(good) else jnp.ravel(x)[0]
        checkify.check(jnp.all(good), f"{name}: {rule}; got {{bad}} at index {{index}}", bad=bad,
                       index=jnp.stack(index).astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32)
                       if index else jnp.zeros((0,), jnp.int32))


def check_range(name: str, x, upper: int, rule: str, *, ignore: int | None = None) -> None:
    """``x`` in ``[0, upper)`` (or equal to ``ignore``); ``rule`` says why (e.g. the config field)."""
    if ignore is None:
        check_values(name, x, lambda v: (v >= 0) & (v < upper), rule)
    else:
        check_values(name, x, lambda v: ((v >= 0) & (v < upper)) | (v == ignore), rule)


def checked(fn: Callable, *, jit: bool = True) -> Callable:
    """``fn`` with every :func:`check_values` rule compiled in (``jax.experimental.checkify``): a violation under
    ``jit`` raises the same ``ValueError`` as it would eagerly, after the call. ``jit``: jit the checked function
    (if ``fn`` is already jitted, the checks still reach inside it)."""

    def traced(*args, **kwargs):
        token = _TRACING_CHECKED.set(True)
        try:
            return fn(*args, **kwargs)
        finally:
            _TRACING_CHECKED.reset(token)

    run = checkify.checkify(traced, errors=checkify.user_checks)
    run = jax.jit(run) if jit else run

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        error, out = run(*args, **kwargs)
        message = error.get()
        if message is not None:
            raise ValueError(message.split("\n")[0].split(" (`check` failed")[0])
        return out

    return wrapper


def check_rank(name: str, x, rank, layout: str) -> None:
    """``x`` has rank ``rank`` (an int or a set of ints); the message names ``name`` and its ``layout``."""
    if x is not None:
        chex.assert_rank(x, rank, custom_message=f"{name} must be {layout}", exception_type=ValueError)


def check_shape(name: str, x, shape, layout: str) -> None:
    """``x`` has ``shape`` (``None`` / ``...`` entries match anything); the message names ``name`` and ``layout``."""
    if x is not None:
        chex.assert_shape(x, shape, custom_message=f"{name} must be {layout}", exception_type=ValueError)


def check_dtype(name: str, x, kind, rule: str) -> None:
    """``x``'s dtype is of ``kind`` (``int``, ``float``, ``bool`` or a dtype); the message names ``name``."""
    if x is not None:
        chex.assert_type(x, kind, custom_message=f"{name}: {rule}", exception_type=ValueError)
