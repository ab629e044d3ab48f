"""Input checks shared by every family: they run in Python on static shapes (and on values when those are
concrete), before anything is traced, so a bad batch fails with the argument named instead of a deep XLA error."""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True for a value we can inspect now (numpy / committed jax array), False for None or a tracer under jit."""
    return x is not None and not isinstance(x, jax.core.Tracer)


def check_range(name: str, x, upper: int, rule: str) -> None:
    """Raises ValueError naming ``name`` if concrete ``x`` has values outside ``[0, upper)``; ``rule`` explains why."""
    if is_concrete(x):
        v = np.asarray(x)
        if v.size and (v.min() < 0 or v.max() >= upper):
            raise ValueError(f"{name} has values in [{v.min()}, {v.max()}]; {rule}")
