"""Input checks shared by every family: they run in Python on static shapes (and on values when those are
concrete, or compiled in under ``layers.checks.checked``), before anything is traced, so a bad batch fails with
the argument named instead of a deep XLA error or a silently clamped index."""

from __future__ import annotations

from layers.checks import check_range as _check_range
from layers.checks import is_concrete

__all__ = ["check_range", "is_concrete"]


def check_range(name: str, x, upper: int, rule: str) -> None:
    """Raises ValueError naming ``name`` if ``x`` has values outside ``[0, upper)``; ``rule`` explains why."""
    _check_range(name, x, upper, rule)


def check_array(name: str, x) -> None:
    """``x`` is None or an array (numpy / jax): a Python list of ids gets a message, not an ``AttributeError``."""
    if x is not None and not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise ValueError(f"{name}: expected an array (numpy or jax), got {type(x).__name__}; "
                         f"wrap it with jnp.asarray({name})")


def check_nonempty(name: str, shape: tuple[int, ...]) -> None:
    """Every dimension of ``name`` is at least 1 (a zero-length batch or sequence has nothing to compute)."""
    if any(int(d) == 0 for d in shape):
        raise ValueError(f"{name}: shape {tuple(shape)} has an empty dimension; a batch and a sequence need at "
                         "least one element")
