"""Hypothesis profiles (loaded by ``tests/conftest.py`` before any test module): see its docstring.

    @settings(max_examples=examples(3))   # 3 under the CI profile, 60 under HYPOTHESIS_PROFILE=long
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILES = ("ci", "long")
LONG_FACTOR = 20

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True, max_examples=10,
    # Compiles make a first example slow and a bounded shape menu makes examples repeat: neither is a bug.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors])
settings.register_profile(
    "long", derandomize=False, deadline=None, print_blob=True, max_examples=10 * LONG_FACTOR,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.differing_executors])


def load() -> str:
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r} is not one of {PROFILES}")
    settings.load_profile(name)
    return name


def examples(n: int) -> int:
    """``n`` examples under the CI profile, ``n * LONG_FACTOR`` under ``long``."""
    return n * (LONG_FACTOR if settings.default.max_examples > 10 else 1)
