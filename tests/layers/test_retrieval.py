"""layers.retrieval: the chunked running top-k and its sharded form against the twin (the full score matrix and one
``top_k``), on tie-free data whose scores are exact in any summation order, so ids and scores must be equal, not
close; ties go to the lower row id everywhere; no ``[queries, rows]`` array in the compiled search."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from layers.retrieval import mips_topk, mips_topk_reference, pad_rows, sharded_mips_topk, sharded_take

# Bounded menus: every distinct (rows, chunk, k, shards) is one compile.
ROWS, CHUNKS, KS, SHARDS = [7, 64, 257], [1, 5, 64, 1000], [1, 3, 7], [1, 2, 4, 8]


def tie_free(seed: int, queries: int, rows: int, dim: int = 6):
    """Small-integer vectors plus a last column ``perm(row) / 2**13`` (query: 1): every score is an exactly
    representable, distinct number, so no summation order changes it and the top-k is unique."""
    rng = np.random.RandomState(seed)
    q = rng.randint(-3, 4, (queries, dim)).astype(np.float32)
    x = rng.randint(-3, 4, (rows, dim)).astype(np.float32)
    q[:, -1], x[:, -1] = 1.0, rng.permutation(rows) / 2.0**13
    return jnp.asarray(q), jnp.asarray(x)


@functools.cache
def _mesh(shards: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:shards]), ("rows",))


@functools.cache
def _search(k: int, chunk: int, shards: int, num_valid: int, approx: bool = False):
    if shards == 1:
        return jax.jit(lambda q, x: mips_topk(q, x, k, chunk=chunk, approx=approx))
    return jax.jit(lambda q, x: sharded_mips_topk(q, x, k, mesh=_mesh(shards), axis="rows", chunk=chunk,
                                                  num_valid=num_valid, approx=approx))


def _check_equal(got, want):
    np.testing.assert_array_equal(np.asarray(got.ids), np.asarray(want.ids))
    np.testing.assert_array_equal(np.asarray(got.scores), np.asarray(want.scores))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(ROWS), st.sampled_from(CHUNKS), st.sampled_from(KS),
       st.sampled_from(SHARDS), st.integers(1, 4))
def test_equals_full_topk(seed, rows, chunk, k, shards, queries):
    """Any chunk (dividing the rows or not, larger than them, smaller than k), k, and 1/2/4/8 shards of an index
    padded to a multiple of the shard count."""
    q, x = tie_free(seed, queries, rows)
    want = mips_topk_reference(q, x, k)
    _check_equal(_search(k, chunk, shards, rows)(q, pad_rows(x, shards)), want)


@pytest.mark.parametrize("shards", [1, 4])
def test_ties_go_to_the_lower_row(shards):
    """Repeated rows score equal: the chunked and sharded searches order them by id, as top_k over all rows."""
    q, x = tie_free(0, 3, 16)
    x = jnp.concatenate([x, x, x])  # rows r, r + 16, r + 32 tie
    want = mips_topk_reference(q, x, 7)
    _check_equal(_search(7, 5, shards, 48)(q, x), want)
    ids = np.asarray(want.ids)
    np.testing.assert_array_equal(ids[:, 1:3], ids[:, :1] + [16, 32])  # the best row's three copies, lowest first


def test_approximate_search_finds_the_top_rows():
    """approx=True picks chunk candidates with lax.approx_max_k (exact off TPU) and merges them exactly."""
    q, x = tie_free(1, 4, 257)
    got = _search(7, 64, 1, 257, approx=True)(q, x)
    want = mips_topk_reference(q, x, 7)
    recall = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(np.asarray(got.ids), np.asarray(want.ids))])
    assert recall >= 0.95


def test_never_forms_the_full_score_matrix():
    """Memory O(queries x (chunk + k)): no [queries, rows] array anywhere in the optimised program."""
    queries, rows, chunk = 4, 300_000, 4096
    lowered = jax.jit(lambda q, x: mips_topk(q, x, 10, chunk=chunk)).lower(
        jax.ShapeDtypeStruct((queries, 128), jnp.float32), jax.ShapeDtypeStruct((rows, 128), jnp.float32))
    text = lowered.compile().as_text()
    assert f"f32[{queries},{rows}]" not in text and f"f32[{queries},{chunk}]" in text


def test_sharded_take_equals_take():
    mesh = _mesh(8)
    table = jnp.arange(16 * 3, dtype=jnp.int32).reshape(16, 3).astype(jnp.uint16)
    placed = jax.device_put(table, NamedSharding(mesh, P("rows", None)))
    ids = jnp.asarray([[15, 0, 7], [8, 8, 1]])
    got = jax.jit(lambda t, i: sharded_take(t, i, mesh=mesh, axis="rows"))(placed, ids)
    assert got.dtype == table.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(table)[np.asarray(ids)])


def test_bad_arguments_name_the_rule():
    q, x = tie_free(0, 2, 7)
    with pytest.raises(ValueError, match=r"k=8 is larger than the index \(7 valid rows\)"):
        mips_topk(q, x, 8)
    with pytest.raises(ValueError, match=r"k=8 is larger than the index \(7 valid rows\)"):
        sharded_mips_topk(q, pad_rows(x, 4), 8, mesh=_mesh(4), axis="rows", num_valid=7)
    with pytest.raises(ValueError, match=r"index has 7 rows, not a multiple of the 4 shards"):
        sharded_mips_topk(q, x, 2, mesh=_mesh(4), axis="rows")
    with pytest.raises(ValueError, match=r"same dim"):
        mips_topk(q[:, :3], x, 2)
    with pytest.raises(ValueError, match=r"chunk=0"):
        mips_topk(q, x, 2, chunk=0)
