"""One ALBERT-base training step (forward, backward, AdamW update), side by side in one run:
this project (JAX; layers scanned, fully unrolled, and scanned with the full last layer), HF PyTorch
``AlbertForMaskedLM`` and HF ``FlaxAlbertForMaskedLM``.

    python benchmarks/albert_train_step.py [--batch 8] [--seq 128] [--steps 5] [--warmup 2]

All use the same ALBERT-base config (E=128, H=768, 12 heads, 12 layers sharing one group, vocab 30000),
fp32, the same batch of random ids with 15% of positions labelled, and AdamW. The timed steps are interleaved
round-robin (one step of each implementation per round), so all see the same machine load; each reports
its median step. Prints seconds per step, tokens/s and our speed ratio to each reference. Not a test: nothing
here asserts on time.

Each implementation runs in its own worker process (``--same-process`` runs them all in this one). In one
process the four models' thread pools (PyTorch's OpenMP team, XLA's Eigen pool) and allocators are alive side by
side on two cores, and whichever step follows another framework's pays for it; a worker that is waiting for its
turn is idle. Workers build and warm up one after another, then step only when told to, one at a time.

The step is matmul-bound, so its time on a machine follows how fast each framework's fp32 GEMM runs there, and
that differs between CPUs by more than any model-side change: on a Zen 5 EPYC (AVX-512 at full width) XLA's
YNNPACK GEMMs run about 2.2x faster than PyTorch's MKL, which takes its AVX2 path on AMD; on a CPU where both
libraries reach the same GEMM speed the two steps are about level. So the run first prints the CPU and one
calibration GEMM per framework (``[1024, 768] @ [768, 3072]``, the FFN's shape), measured in the same workers,
next to the step table.

Our masked-LM loss reads the last layer at the labelled rows (and position 0) only, so by default that layer's
queries, output projection and feed-forward run on ``ceil(0.25 * seq)`` rows per example (``mlm_loss_rows``;
exact, the full layer when an example has more labels). The ``ours full last`` row turns that off
(``mlm_loss_rows=None``) to show what it buys: about 4% of the step here (1 of 12 layers, three quarters of its
rows), as the FLOP count says.

On a Zen 3 EPYC (2 cores, AVX2) the steps are level with HF PyTorch and ahead of HF Flax. Two runs of
2026-12-03 (the per-round ratio to our scanned step in brackets): 11 rounds with the C library's default memory,
ours 4.34 s scanned / 4.25 s unrolled, HF PyTorch 4.38 s (1.02), HF Flax 4.73 s (1.10); 9 rounds with
``--retain-host-memory``, ours 4.02 s / 3.77 s (0.93), HF PyTorch 3.91 s (0.98), HF Flax 4.05 s (1.01). The same
CPU has run every step 1.6x slower in another session and drifts by 10-20% within a run, so compare rows of one
run only, and prefer the per-round ratios. There both libraries' big GEMMs run at ~150-180 GFLOP/s and the step
is GEMM-bound. A ``perf`` profile of the scanned step puts 51% of its CPU time in YNNPACK's GEMM kernel
(projections and their input gradients), 31% in JIT-generated code (symbol-less; beside it are 7.5% in Eigen's
GEMM packing, so by elimination the kernels of XLA's Eigen dots: weight gradients and attention's batched
matmuls), 3-4% in the kernel (page faults of each step's fresh scratch) and ~7% in elementwise work, transposes
and copies. We do ~8% fewer FLOPs than HF PyTorch (the vocabulary projection on labelled rows only, the last
layer's rows) and lose part of it in attention: its 96 batched [128, 64] x [64, 128]-sized matmuls per call
run at 28-70 GFLOP/s in XLA against 46-95 for ``torch.bmm`` timed right after, 1.7-2.2x slower, ~0.2 s of the
step. (``--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot`` makes them 145-170 GFLOP/s
alone, but aborts on the full step with ``partition compile failed``.) Scanning costs ~7% against unrolling once
page faults are out of the picture: each layer's saved matmul outputs go through zero-filled ``[11, ...]`` stacks
(277 MB), a copy in and a copy out; unrolled, the step needs 1.1 GB of scratch instead of 557 MB (XLA keeps the
elementwise intermediates instead of recomputing them), which the default allocator page-faults in every step.
One ALBERT layer's forward + backward took 490-520 ms in JAX (HF PyTorch's layer: 480-520 ms) in the slower
session, and its 18 matmuls alone (the same shapes, nothing else) 358 ms. These did not shorten the step beyond
noise (each measured side by side): heads-major attention operands (the attention core alone 35% faster, the
step 1%), fused Q/K/V projections (one [768, 2304] GEMM: no faster than three), weight gradients routed to
YNNPACK (in isolation they run no faster there, transpose included), the shared layer's weight gradient as one
GEMM over all 12 layers, two CPU devices data-parallel, the XLA CPU flags for Eigen threading, the concurrency
scheduler and YNNPACK, recomputing attention scores in the backward instead of stacking them
(``dots_with_no_batch_dims_saveable``: 104 MB less scratch, same time), and (for the selected rows) the cond
between the few-rows and all-rows last layer, which costs nothing measurable against running the few-rows one
unconditionally.

``--retain-host-memory`` runs every implementation, the references included, with freed host memory kept in the
process (``train.host_memory``, ``python -m train --host_memory=retain``): XLA's CPU runtime otherwise maps a
fresh scratch buffer for each step and page-faults all of it in again.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

ALBERT_BASE = dict(
    vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12, num_hidden_groups=1,
    num_attention_heads=12, intermediate_size=3072, inner_group_num=1, hidden_act="gelu_new",
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=512, type_vocab_size=2,
)


def make_batch(batch: int, seq: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, ALBERT_BASE["vocab_size"], (batch, seq)).astype(np.int32)
    labels = np.where(rng.rand(batch, seq) < 0.15, ids, -100).astype(np.int32)
    return ids, np.ones_like(ids), labels


def build_ours(ids, mask, labels, scan_unroll: int = 1, mlm_loss_rows="default"):
    import jax
    import jax.numpy as jnp
    import optax

    import jaxmodels

    module = jaxmodels.from_config({**ALBERT_BASE, "model_type": "albert", "architectures": ["AlbertForMaskedLM"]})
    module = module.clone(scan_unroll=scan_unroll)
    if mlm_loss_rows != "default":
        module = module.clone(mlm_loss_rows=mlm_loss_rows)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    tx = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = tx.init(params)
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask), "labels": jnp.asarray(labels)}

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: module.apply({"params": p}, **batch).loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    state = [params, opt_state]

    def step():
        state[0], state[1], loss = train_step(state[0], state[1], batch)
        loss.block_until_ready()

    return step


def build_hf_torch(ids, mask, labels):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    model = transformers.AlbertForMaskedLM(transformers.AlbertConfig(**ALBERT_BASE))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batch = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask),
             "labels": torch.tensor(labels, dtype=torch.long)}

    def step():
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    return step


def build_hf_flax(ids, mask, labels):
    import jax
    import jax.numpy as jnp
    import optax
    import transformers

    model = transformers.FlaxAlbertForMaskedLM(transformers.AlbertConfig(**ALBERT_BASE), seed=0)
    tx = optax.adamw(1e-4, weight_decay=0.01)
    params = model.params
    opt_state = tx.init(params)
    ids_j, mask_j, labels_j = jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels)

    def loss_fn(p):
        logits = model(ids_j, attention_mask=mask_j, params=p, train=False).logits
        valid = labels_j != -100
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, jnp.where(valid, labels_j, 0)[..., None], -1)[..., 0]
        return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1))
    state = [params, opt_state]

    def step():
        state[0], state[1], loss = train_step(state[0], state[1])
        loss.block_until_ready()

    return step


GEMM_SHAPE = (1024, 768, 3072)  # (m, k, n): batch x seq tokens through the FFN's first matmul


def gemm_gflops(framework: str, repeats: int = 30) -> float:
    """Median fp32 GFLOP/s of one ``[m, k] @ [k, n]`` matmul in ``framework`` ("jax" or "torch")."""
    m, k, n = GEMM_SHAPE
    rng = np.random.RandomState(0)
    a, b = rng.randn(m, k).astype(np.float32), rng.randn(k, n).astype(np.float32)
    if framework == "torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        run = lambda: ta @ tb  # noqa: E731
    else:
        import jax

        matmul = jax.jit(lambda x, y: x @ y)
        ja, jb = jax.device_put(a), jax.device_put(b)
        run = lambda: matmul(ja, jb).block_until_ready()  # noqa: E731
    for _ in range(5):  # compile (JAX), thread-pool spin-up
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / float(np.median(times)) / 1e9


def cpu_description() -> str:
    """The CPU's model name, core count and widest vector ISA, from /proc/cpuinfo where there is one."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    model = fields.get("model name", "unknown CPU")
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {os.cpu_count()} cores, {isa}"


FRAMEWORK = {"ours (JAX)": "jax", "ours unrolled": "jax", "ours full last": "jax", "HF PyTorch": "torch", "HF Flax": "jax"}


def _retain_host_memory():
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from train import host_memory

    if not host_memory.retain_freed_memory():
        raise SystemExit("--retain-host-memory needs glibc")


def _worker(name, conn, ids, mask, labels, retain_host_memory=False):
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if retain_host_memory:  # before any framework starts its threads
        _retain_host_memory()
    step = BUILDERS[name](ids, mask, labels)
    for _ in range(conn.recv()):  # warm-up steps: compiles (JAX) and warms allocator caches
        step()
    conn.send(gemm_gflops(FRAMEWORK[name]))
    import resource

    while conn.recv() == "step":
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        conn.send((elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))


BUILDERS = {
    "ours (JAX)": build_ours,  # layers scanned: compile time flat in depth (the default)
    "ours unrolled": lambda *a: build_ours(*a, scan_unroll=ALBERT_BASE["num_hidden_layers"]),
    # The loss reads the last layer at the labelled rows only (mlm_loss_rows); this row runs that layer in full.
    "ours full last": lambda *a: build_ours(*a, mlm_loss_rows=None),
    "HF PyTorch": build_hf_torch,
    "HF Flax": build_hf_flax,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--same-process", action="store_true", help="run all four in this process")
    parser.add_argument("--retain-host-memory", action="store_true",
                        help="keep freed host memory in every implementation's process (train.host_memory)")
    args = parser.parse_args()
    if args.same_process and args.retain_host_memory:
        _retain_host_memory()
    ids, mask, labels = make_batch(args.batch, args.seq)
    tokens = args.batch * args.seq
    if args.same_process:
        steps = {name: build(ids, mask, labels) for name, build in BUILDERS.items()}
        for name, step in steps.items():
            for _ in range(args.warmup):  # compiles (JAX) and warms allocator caches
                step()
        gemm = {name: gemm_gflops(FRAMEWORK[name]) for name in BUILDERS}

        def timed(name):  # page faults are per process, so not told apart here
            start = time.perf_counter()
            steps[name]()
            return time.perf_counter() - start, float("nan")
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        conns, workers, gemm = {}, [], {}
        for name in BUILDERS:  # one at a time, so no build or compile overlaps another
            parent, child = ctx.Pipe()
            worker = ctx.Process(target=_worker, args=(name, child, ids, mask, labels, args.retain_host_memory),
                                 daemon=True)
            worker.start()
            parent.send(args.warmup)
            gemm[name] = parent.recv()  # the worker is warm once it has timed its calibration GEMM
            conns[name] = parent
            workers.append(worker)

        def timed(name):
            conns[name].send("step")
            return conns[name].recv()

    times = {name: [] for name in BUILDERS}
    faults = {name: [] for name in BUILDERS}
    for r in range(args.steps):
        for name in BUILDERS:
            elapsed, step_faults = timed(name)
            times[name].append(elapsed)
            faults[name].append(step_faults)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    if not args.same_process:
        for conn in conns.values():
            conn.send("stop")
        for worker in workers:
            worker.join()
    results = {name: float(np.median(t)) for name, t in times.items()}
    ours = results["ours (JAX)"]
    # Each round runs every implementation back to back, so a round's ratio sees one machine state; the median
    # and range of those per-round ratios are steadier than the ratio of medians on a host whose speed drifts.
    paired = {name: np.asarray(t) / np.asarray(times["ours (JAX)"]) for name, t in times.items()}
    print(f"\nALBERT-base MLM training step, batch {args.batch} x seq {args.seq}, fp32, AdamW, "
          f"{os.cpu_count()} CPU cores, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{'one process' if args.same_process else 'one worker process each'}, host memory "
          f"{'retained (train.host_memory)' if args.retain_host_memory else 'as the C library defaults'}")
    print(f"CPU: {cpu_description()}")
    m, k, n = GEMM_SHAPE
    print(f"{'implementation':<14} {'s/step':>8} {'tokens/s':>10} {'ours (scanned) is x faster':>27} "
          f"{'per round: median [min, max]':>29} {f'GEMM {m}x{k}x{n} GFLOP/s':>25} {'page faults/step':>17}")
    for name, t in results.items():
        r = paired[name]
        print(f"{name:<14} {t:>8.3f} {tokens / t:>10.1f} {t / ours:>27.2f} "
              f"{f'{np.median(r):.2f} [{r.min():.2f}, {r.max():.2f}]':>29} {gemm[name]:>25.1f} "
              f"{np.median(faults[name]):>17,.0f}")


if __name__ == "__main__":
    main()
