"""Exact maximum-inner-product top-k over a REALM-sized index: ours (``layers.retrieval``) against faiss-cpu and
ScaNN, side by side in one run, and the per-chip memory of the released index's sharded search on a TPU slice.

    python benchmarks/realm_retrieval.py [--rows 1000000] [--dim 128] [--ks 5,100] [--batches 1,64]
                                         [--repeats 5] [--chunk 16384] [--aot-topology v5e:2x4]
                                         [--aot-rows 13353718] [--aot-ks 5,100] [--no-peers] [--no-aot]

Index: ``--rows`` x ``--dim`` fp32 rows and queries drawn from a standard normal (seeded); every search returns the
``k`` best rows of each query of a batch. Columns of the table, queries per second (batch / median wall time of
``--repeats`` searches after a warm-up; ours on 1 device, faiss and ScaNN run in turn within each round, so a
loaded host slows them alike; the 8-device column is timed after them, in its own process):

  ours 1 dev      ``jax.jit(mips_topk)``: the chunked running top-k (``--chunk`` rows per step, HIGHEST precision)
                  on one CPU device;
  ours 8 dev      ``sharded_mips_topk`` over 8 simulated host devices (``--xla_force_host_platform_device_count=8``,
                  in a subprocess: rows split 8 ways, per-shard top-k, all-gather, merge), the same cores;
  faiss           ``faiss.IndexFlatIP`` (exact brute force, BLAS for batches >= 20);
  ScaNN           tree (2 sqrt(rows) leaves, 10% searched) + asymmetric hashing + exact re-ranking of 1000
                  candidates: approximate, its recall@k against the exact ids in brackets (gaussian rows have no
                  cluster structure, the hard case for a tree);
  ours / faiss    the exact searches' ratio (above 1: ours is faster).

Every exact search's ids are compared with ours (1 device): where they are not all equal, the fraction that is
(fp32 sums in another order swap rows whose scores differ in the last bits) follows the time. faiss and ScaNN are
benchmark peers, never dependencies: install them apart (``pip install --target DIR faiss-cpu scann``) and put DIR
on ``PYTHONPATH``; a missing one is reported and its columns left empty (``--no-peers`` skips both).

Then, unless ``--no-aot``: ``sharded_mips_topk`` over an ``--aot-rows`` x ``--dim`` fp32 index (the released
index: 13,353,718 rows, 6.8 GB) split over every chip of ``--aot-topology``, batch 64, compiled ahead of time
from this CPU (``train.aot.topology_devices``, needs libtpu), with ``compile().memory_analysis()`` per chip:
arguments (the index shard and the queries), temp, code and total, for each of ``--aot-ks``.

Prints the command, date, CPU and the fp32 GEMM calibration (``machine.py``) first. Results, past and present:
``benchmarks/RESULTS.md``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time

import numpy as np

import machine


def _data(rows: int, dim: int, queries: int):
    rng = np.random.RandomState(0)
    return rng.randn(rows, dim).astype(np.float32), rng.randn(queries, dim).astype(np.float32)


def _our_search(args, devices: int, index: np.ndarray):
    """``search(queries, k) -> ids`` of our search over ``index`` on ``devices`` host devices (this process's)."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from layers.retrieval import mips_topk, pad_rows, sharded_mips_topk

    if devices == 1:
        table = jax.device_put(index)
        jitted = {k: jax.jit(lambda q, x, k=k: mips_topk(q, x, k, chunk=args.chunk)) for k in args.ks}
    else:
        mesh = Mesh(np.array(jax.devices()[:devices]), ("rows",))
        table = jax.device_put(pad_rows(index, devices), NamedSharding(mesh, P("rows", None)))
        jitted = {k: jax.jit(lambda q, x, k=k: sharded_mips_topk(q, x, k, mesh=mesh, axis="rows", chunk=args.chunk,
                                                                 num_valid=args.rows)) for k in args.ks}
    return lambda q, k: np.asarray(jitted[k](jax.device_put(q), table).ids)


def _peer_searches(args, index: np.ndarray) -> tuple[dict, list[str]]:
    """``{name: search(queries, k) -> ids}`` of the peers that are installed, and notes (versions, build time)."""
    searches, notes = {}, []
    try:
        import faiss

        notes.append(f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(index)
        searches["faiss"] = lambda q, k: flat.search(q, k)[1]
    except ImportError:
        notes.append("faiss: not installed")
    try:
        import scann

        started = time.perf_counter()
        leaves = int(2 * np.sqrt(args.rows))
        searcher = (scann.scann_ops_pybind.builder(index, max(args.ks), "dot_product")
                    .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 10),
                          training_sample_size=min(args.rows, 100_000))
                    .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(1000).build())
        notes.append(f"scann {importlib.metadata.version('scann')} (index built in "
                     f"{time.perf_counter() - started:.0f} s)")
        searches["scann"] = lambda q, k: np.asarray(searcher.search_batched(q, final_num_neighbors=k)[0])
    except ImportError:
        notes.append("scann: not installed")
    return searches, notes


def timed(args, searches: dict, queries: np.ndarray) -> dict:
    """``{name: {"k,batch": (queries/s, ids)}}``: per (k, batch), every search once to warm up, then ``--repeats``
    rounds in which each runs once in turn (so all see the same machine load); median time per search."""
    out = {name: {} for name in searches}
    for k in args.ks:
        for batch in args.batches:
            q = queries[:batch]
            ids = {name: search(q, k) for name, search in searches.items()}
            times = {name: [] for name in searches}
            for _ in range(args.repeats):
                for name, search in searches.items():
                    start = time.perf_counter()
                    search(q, k)
                    times[name].append(time.perf_counter() - start)
            for name in searches:
                out[name][f"{k},{batch}"] = (batch / float(np.median(times[name])), np.asarray(ids[name]).tolist())
    return out


def _overlap(ids, exact) -> float:
    """Mean over queries of the fraction of the exact top-k ids found (recall@k; 1.0: the same rows)."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(np.asarray(ids), np.asarray(exact))]))


def aot_memory(args) -> list[tuple]:
    """Per-chip memory of the sharded search compiled for ``--aot-topology``: ``[(k, memory dict)]``."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from train.aot import _memory, topology_devices

    devices = topology_devices(args.aot_topology)
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from layers.retrieval import sharded_mips_topk

    mesh = Mesh(np.array(devices), ("rows",))
    padded = -(-args.aot_rows // len(devices)) * len(devices)
    queries = jax.ShapeDtypeStruct((64, args.dim), jnp.float32, sharding=NamedSharding(mesh, P()))
    index = jax.ShapeDtypeStruct((padded, args.dim), jnp.float32, sharding=NamedSharding(mesh, P("rows", None)))
    out = []
    for k in args.aot_ks:
        search = jax.jit(lambda q, x, k=k: sharded_mips_topk(q, x, k, mesh=mesh, axis="rows", chunk=args.chunk,
                                                             num_valid=args.aot_rows))
        started = time.perf_counter()
        memory = _memory(search.lower(queries, index).compile().memory_analysis())
        out.append((k, memory, time.perf_counter() - started, devices[0].device_kind, len(devices)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--ks", default="5,100")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=16384)
    parser.add_argument("--aot-topology", default="v5e:2x4")
    parser.add_argument("--aot-rows", type=int, default=13_353_718)
    parser.add_argument("--aot-ks", default="5,100")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-aot", action="store_true")
    parser.add_argument("--worker", choices=["sharded", "aot"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.aot_ks = [int(k) for k in args.aot_ks.split(",")]
    if args.worker == "sharded":
        index, queries = _data(args.rows, args.dim, max(args.batches))
        print(json.dumps(timed(args, {"ours": _our_search(args, 8, index)}, queries)["ours"]))
        return
    if args.worker == "aot":
        print(json.dumps(aot_memory(args)))
        return

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    machine.print_header(["jax"])
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    index, queries = _data(args.rows, args.dim, max(args.batches))
    searches = {"ours": _our_search(args, 1, index)}
    peer_searches, notes = ({}, ["peers skipped"]) if args.no_peers else _peer_searches(args, index)
    del index
    results = timed(args, {**searches, **peer_searches}, queries)
    one = results["ours"]

    def worker(kind: str, extra_env: dict) -> object:
        env = {**os.environ, **extra_env}
        command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--worker", kind]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"{kind} worker failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])

    eight = worker("sharded", {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                                            " --xla_force_host_platform_device_count=8").strip()})
    flat = {key: (qps, _overlap(ids, one[key][1])) for key, (qps, ids) in results.get("faiss", {}).items()}
    approx = {key: (qps, _overlap(ids, one[key][1])) for key, (qps, ids) in results.get("scann", {}).items()}
    print(f"index {args.rows:,} x {args.dim} fp32; peers: {'; '.join(notes)}; load average after: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| k | batch | ours 1 dev q/s | ours 8 dev q/s | faiss IndexFlatIP q/s | ScaNN q/s (recall@k) | ours / faiss |")
    print("|---|---|---|---|---|---|---|")
    for k in args.ks:
        for batch in args.batches:
            key = f"{k},{batch}"
            mine = one[key][0]
            sharded = "-" if eight is None else (f"{eight[key][0]:.1f}" + (
                "" if eight[key][1] == one[key][1] else f" (ids {_overlap(eight[key][1], one[key][1]):.4f} equal)"))
            faiss_qps = "-" if key not in flat else f"{flat[key][0]:.1f}" + (
                "" if flat[key][1] == 1.0 else f" (ids {flat[key][1]:.4f} equal)")
            scann_qps = "-" if key not in approx else f"{approx[key][0]:.1f} ({approx[key][1]:.3f})"
            ratio = "-" if key not in flat else f"{mine / flat[key][0]:.2f}"
            print(f"| {k} | {batch} | {mine:.1f} | {sharded} | {faiss_qps} | {scann_qps} | {ratio} |")
    if args.no_aot:
        return
    memory = worker("aot", {"JAX_PLATFORMS": ""})
    if memory is None:
        return
    print(f"\nAOT: sharded_mips_topk over {args.aot_rows:,} x {args.dim} fp32 on {args.aot_topology} "
          f"({memory[0][3]}, {memory[0][4]} chips), batch 64, per chip (MiB):\n")
    print("| k | arguments | outputs | temp | code | total | compile s |")
    print("|---|---|---|---|---|---|---|")
    for k, m, seconds, _, _ in memory:
        mib = {name: value / 2**20 for name, value in m.items()}
        print(f"| {k} | {mib['arguments']:.1f} | {mib['outputs']:.2f} | {mib['temp']:.1f} | {mib['code']:.1f} | "
              f"{mib['total']:.1f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
