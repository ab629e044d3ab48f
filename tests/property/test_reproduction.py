"""The hypothesis set-up the property tests rely on (``tests/profiles.py``, loaded by ``tests/conftest.py``): CI
runs a fixed, derandomised, database-free profile, ``HYPOTHESIS_PROFILE=long`` a longer random one, and a failure
reports its minimal example with the line that replays it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import profiles


def _profile_in_subprocess(env_value: str | None) -> str:
    """What a fresh interpreter gets from ``tests.profiles.load()`` under that environment (the profile is chosen
    once per process, so the alternatives are observed in children)."""
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_PROFILE"}
    if env_value is not None:
        env["HYPOTHESIS_PROFILE"] = env_value
    code = textwrap.dedent("""
        from hypothesis import settings
        from tests import profiles
        name = profiles.load()
        d = settings.default
        print(name, d.derandomize, d.database is None, d.print_blob, d.max_examples, profiles.examples(3))
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_ci_profile_is_fixed_and_database_free_by_default():
    assert _profile_in_subprocess(None) == ["ci", "True", "True", "True", "10", "3"]


def test_long_profile_is_random_and_larger():
    name, derandomize, _, print_blob, max_examples, three = _profile_in_subprocess("long")
    assert (name, derandomize, print_blob) == ("long", "False", "True")
    assert int(max_examples) > 10 and int(three) == 3 * profiles.LONG_FACTOR


def test_unknown_profile_is_refused():
    with pytest.raises(subprocess.CalledProcessError) as failed:
        _profile_in_subprocess("lng")
    assert "HYPOTHESIS_PROFILE='lng'" in failed.value.stderr


def test_a_failure_reports_its_minimal_example():
    """Under the profile this session loaded (ci here): the same failure, shrunk to the smallest example, reported
    with the decorator that replays it."""

    @settings(max_examples=profiles.examples(50))
    @given(x=st.integers(0, 10**6))
    def prop(x):
        assert x < 1000

    with pytest.raises(AssertionError) as failed:
        prop()
    notes = "\n".join(getattr(failed.value, "__notes__", []))
    assert "x=1000" in notes, notes  # shrunk to the boundary, not the first large draw
    assert "@reproduce_failure" in notes, notes

