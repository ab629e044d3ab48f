"""Longformer masked-LM training step against length, this project (JAX) and HF PyTorch side by side in one run.

    python benchmarks/longformer_step.py [--lengths 1024,4096,16384] [--steps 3]
                                         [--search 32768,65536,131072,262144] [--search-implementations HF,ours]
                                         [--budget-gib 10] [--timeout 1200]

Model: 6 layers, d=256 (4 heads x 64), FFN 1024, ``attention_window=256`` (128 positions to each side), vocab 512,
dropout 0.1 (HF's default), no global tokens (masked-LM pretraining has none), batch 1, fp32. Both implementations
get the same ids, 15% of positions labelled. A step is the masked-LM loss, gradients of every parameter and an SGD
update (lr 1e-3); ours is jit-compiled with the params donated (``scan_residuals="dots"``, the default; the search
below also runs ``remat=True``, which keeps only each layer's input for the backward).

Each implementation runs in a worker process of its own per length (both warm up with one step, then the
``--steps`` timed steps alternate between them, so they see the same machine load), and memory is measured the
same way for both: the peak resident set size of its worker process (``ru_maxrss``, the framework's own footprint
included), after all its steps.

Prints the command, date and CPU and the calibration GEMM's fp32 GFLOP/s (``machine.py``), then two markdown tables:
  1. per length of ``--lengths``: s/step of each (median), HF's time over ours (median of the per-round ratios, and
     their range: a shared host's load moves both steps of a round alike), peak RSS GiB of each worker, and our
     compiled step's temp memory (``compile().memory_analysis().temp_size_in_bytes``) and its ratio to the previous
     length's;
  2. the longest step that runs here: for each implementation (HF, ours, ours with remat) the lengths of
     ``--search`` in turn (``--search-implementations`` says which), each one step without a warm-up in a fresh
     worker that is stopped when its RSS passes ``--budget-gib`` or it runs past ``--timeout`` seconds (or the
     machine's available memory falls under 1 GiB: on a shared host the kernel would otherwise kill someone's
     process); per length the outcome, s/step (ours is compiled ahead of time, so compiling is not in it; HF's is
     its first step), peak RSS and our compiled temp memory; then each one's longest.

Results, past and present: ``benchmarks/RESULTS.md``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time

import numpy as np

import machine

# This checkout's packages, not an installed copy of another one (the workers re-import this module when spawned).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL = dict(attention_window=256, vocab_size=512, hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
             intermediate_size=1024, hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
             type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
IMPLEMENTATIONS = ("ours", "HF")
MIN_AVAILABLE = 2**30  # a worker is stopped when the machine's available memory falls below this


def make_batch(length: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, MODEL["vocab_size"], (1, length)).astype(np.int32)
    ids[0, 0], ids[0, -1] = 0, 2
    labels = np.where(rng.rand(1, length) < 0.15, ids, -100).astype(np.int32)
    return ids, labels


def config_dict(length: int) -> dict:
    return dict(MODEL, max_position_embeddings=length + MODEL["pad_token_id"] + 1)


def build_ours(length: int, remat: bool = False):
    """``(step, compiled temp bytes)``; ``step()`` runs one training step and waits for it."""
    import jax
    import jax.numpy as jnp

    import jaxmodels

    module = jaxmodels.from_config({**config_dict(length), "model_type": "longformer",
                                    "architectures": ["LongformerForMaskedLM"]}).clone(remat=remat)
    params = jax.jit(lambda key: jaxmodels.init_params(module, key))(jax.random.PRNGKey(0))
    ids, labels = (jnp.asarray(x) for x in make_batch(length))

    def train_step(params, key, ids, labels):  # the batch as arguments: as constants XLA would fold its argsort
        def loss(p):
            return module.apply({"params": p}, input_ids=ids, labels=labels, deterministic=False,
                                rngs={"dropout": key}).loss

        value, grads = jax.value_and_grad(loss)(params)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), value

    compiled = jax.jit(train_step, donate_argnums=0).lower(params, jax.random.PRNGKey(0), ids, labels).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    state = {"params": params, "step": 0}

    def step():
        state["params"], value = compiled(state["params"], jax.random.PRNGKey(state["step"]), ids, labels)
        state["step"] += 1
        value.block_until_ready()

    return step, temp


def build_hf(length: int):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # HF's "padded to a multiple of the window" notice
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = transformers.LongformerForMaskedLM(transformers.LongformerConfig(**config_dict(length))).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids, labels = (torch.tensor(x, dtype=torch.long) for x in make_batch(length))

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()

    return step, None


def _worker(name: str, length: int, conn, warmup: bool = True):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    step, temp = build_ours(length) if name == "ours" else (
        build_ours(length, remat=True) if name == "ours remat" else build_hf(length))
    if warmup:  # ours is compiled already (ahead of time, in build_ours); this warms allocator caches
        step()
    conn.send(temp)
    while conn.recv() == "step":
        start = time.perf_counter()
        step()
        conn.send(time.perf_counter() - start)
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB


def _start(name: str, length: int, warmup: bool = True):
    parent, child = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(target=_worker, args=(name, length, child, warmup),
                                                          daemon=True)
    worker.start()
    return worker, parent


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _available() -> int:
    """The machine's available memory (``MemAvailable``), bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _wait(worker, conn, budget: float, deadline: float):
    """The worker's next message, or the reason it will not come (it died, passed the RSS budget or the deadline,
    or the machine ran short of memory, which on a shared host would start killing other people's processes); a
    worker stopped for any of these is killed."""
    while not conn.poll(0.2):
        reason = None
        if not worker.is_alive():
            return None, f"died (exit {worker.exitcode})"
        if _rss(worker.pid) > budget:
            reason = f"over {budget / 2**30:.0f} GiB RSS"
        elif _available() < MIN_AVAILABLE:
            reason = f"stopped at {_rss(worker.pid) / 2**30:.1f} GiB RSS: the machine had under 1 GiB available"
        elif time.monotonic() > deadline:
            reason = "over the time limit"
        if reason:
            worker.kill()
            return None, reason
    try:
        return conn.recv(), None
    except EOFError:  # the worker died between two polls
        worker.join()
        return None, f"died (exit {worker.exitcode})"


def compare(lengths, steps: int, budget: float, timeout: float) -> None:
    print("\n## step time and memory against length\n"
          "| length | ours s/step | HF s/step | HF / ours (range) | ours peak RSS GiB | HF peak RSS GiB | ours temp GiB "
          "| temp vs previous |\n|---|---|---|---|---|---|---|---|")
    previous = None
    for length in lengths:
        times, rss, temp, failed = {}, {}, None, {}
        running = {}
        for name in IMPLEMENTATIONS:  # one at a time, so no build or compile overlaps another
            worker, conn = _start(name, length)
            message, failed[name] = _wait(worker, conn, budget, time.monotonic() + timeout)
            if failed[name] is None:
                running[name] = (worker, conn)
                temp = message if name == "ours" else temp
                times[name] = []
        for _ in range(steps):
            for name, (worker, conn) in running.items():
                conn.send("step")
                elapsed, failed[name] = _wait(worker, conn, budget, time.monotonic() + timeout)
                if failed[name] is None:
                    times[name].append(elapsed)
            running = {n: r for n, r in running.items() if failed[n] is None}
        for name, (worker, conn) in running.items():
            conn.send("stop")
            rss[name] = conn.recv()
            worker.join()
        cell = lambda name: f"{np.median(times[name]):.2f}" if name in rss else failed[name]  # noqa: E731
        ratio = "-"
        if {"ours", "HF"} <= set(rss):
            rounds = np.asarray(times["HF"]) / np.asarray(times["ours"])  # the two steps of each round, side by side
            ratio = f"{np.median(rounds):.2f}x ({rounds.min():.2f}-{rounds.max():.2f})"
        grows = f"{temp / previous:.2f}x" if temp and previous else "-"
        print(f"| {length} | {cell('ours')} | {cell('HF')} | {ratio} | "
              + " | ".join(f"{rss[n] / 2**30:.2f}" if n in rss else "-" for n in IMPLEMENTATIONS)
              + f" | {temp / 2**30 if temp else float('nan'):.3f} | {grows} |", flush=True)
        previous = temp


def search(lengths, names, budget: float, timeout: float) -> None:
    print(f"\n## longest step that runs here (one step, each in a fresh worker, RSS budget {budget / 2**30:.0f} GiB, "
          f"{timeout:.0f} s)\n| implementation | length | outcome | s/step | peak RSS GiB | ours temp GiB |\n"
          "|---|---|---|---|---|---|")
    longest = {}
    for name in names:
        for length in lengths:
            worker, conn = _start(name, length, warmup=False)  # one step: at these lengths a step takes minutes
            temp, failed = _wait(worker, conn, budget, time.monotonic() + timeout)
            temp = "" if temp is None else f"{temp / 2**30:.2f}"
            elapsed = rss = None
            if failed is None:
                conn.send("step")
                elapsed, failed = _wait(worker, conn, budget, time.monotonic() + timeout)
            if failed is None:
                conn.send("stop")
                rss = conn.recv()
                worker.join()
                longest[name] = length
                print(f"| {name} | {length} | ran | {elapsed:.1f} | {rss / 2**30:.2f} | {temp} |", flush=True)
            else:
                worker.join()
                print(f"| {name} | {length} | {failed} | | | {temp} |", flush=True)
                break
    print("longest: " + ", ".join(f"{n} {longest.get(n, '-')}" for n in names))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--search", default="32768,65536,131072,262144",
                        help="lengths tried in turn for the longest step ('' skips it)")
    parser.add_argument("--search-implementations", default="HF,ours,ours remat",
                        help="which implementations the search runs, in turn (each from the first of --search)")
    parser.add_argument("--budget-gib", type=float, default=10.0, help="RSS above which a worker is stopped")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds a worker may take per message")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before this process imports jax (the GEMM calibration)
    machine.print_header(["jax", "torch"])
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    budget = args.budget_gib * 2**30
    compare([int(x) for x in args.lengths.split(",") if x], args.steps, budget, args.timeout)
    if args.search:
        search([int(x) for x in args.search.split(",") if x], args.search_implementations.split(","), budget,
               args.timeout)
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
