"""Compiling with most XLA optimisations off (``jax_disable_most_optimizations``: LLVM at -O0, no expensive
passes), for tests that run a whole training program a handful of steps on tiny shapes: there the optimiser's time
is most of the test, and the claims (two runs agree, a resume continues exactly, a run finishes) compare programs
compiled the same way, or do not depend on how fast the program runs.

    with unoptimised(): ...                       # in this process
    env.update(ENV)                               # a `python -m train` subprocess
"""

import contextlib

import jax

FLAG = "jax_disable_most_optimizations"
ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


@contextlib.contextmanager
def unoptimised():
    """Compiles inside the block skip most optimisations (not part of jit's cache key: a program already compiled
    with them is reused as is)."""
    previous = jax.config.read(FLAG)
    jax.config.update(FLAG, True)
    try:
        yield
    finally:
        jax.config.update(FLAG, previous)
