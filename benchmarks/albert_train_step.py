"""One ALBERT-base masked-LM training step, timed side by side in one run for this project (JAX) and the
Hugging Face references (PyTorch and Flax).

    python benchmarks/albert_train_step.py [--batch 8] [--seq 128] [--steps 5] [--warmup 2]
                                           [--same-process] [--retain-host-memory]

Model: ALBERT-base (E=128, H=768, 12 heads, 12 layers sharing one group, FFN 3072, gelu_new, vocab 30000, no
dropout), fp32. Every implementation gets the same batch of random ids (``--batch`` x ``--seq``, 15% of positions
labelled). A step is the masked-LM loss, gradients of every parameter and an AdamW update (lr 1e-4, weight decay
0.01); the JAX steps are jit-compiled with params and optimizer state donated.

Rows:
  ours (JAX)      this project's AlbertForMaskedLM, layers scanned (the default)
  ours unrolled   the same with scan_unroll=12
  ours full last  scanned, with mlm_loss_rows=None: the last layer runs on every row, not only the labelled ones
  HF PyTorch      transformers.AlbertForMaskedLM
  HF Flax         transformers.FlaxAlbertForMaskedLM, with the masked-LM loss written out here

Each implementation builds and runs ``--warmup`` steps in its own worker process, one after another; then the
``--steps`` timed steps run round-robin (one step of each implementation per round, the others idle), so all see
the same machine load. ``--same-process`` runs all of them in this process instead (their thread pools and
allocators then live side by side). ``--retain-host-memory`` keeps freed host memory in every implementation's
process (``train.host_memory``), so XLA's CPU runtime stops page-faulting fresh scratch in every step.

Prints the command, date and CPU, and the calibration GEMM's fp32 GFLOP/s in XLA and torch (``machine.py``; each
worker times it after its warm-up, and the line gives each framework's median over its workers); then each round's
step times as it runs, and a table, one row per implementation:
  s/step            median over the timed rounds
  tokens/s          batch * seq / (s/step)
  ours (scanned) is x faster   s/step over ours (JAX)'s s/step (above 1: ours is faster)
  per round         median [min, max] of that ratio taken within each round (steadier when the host's speed drifts)
  GEMM ... GFLOP/s  the calibration GEMM in this row's own process
  page faults/step  minor page faults per step in this row's process (nan with --same-process)

Results, past and present: ``benchmarks/RESULTS.md``. Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import machine

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
    conn.send(machine.gemm_gflops(FRAMEWORK[name]))
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
    parser.add_argument("--same-process", action="store_true", help="run all implementations in this process")
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
        gemm = {name: machine.gemm_gflops(FRAMEWORK[name]) for name in BUILDERS}

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

    # The calibration comes from the processes that run the steps (a worker's GEMM speed is what its steps get);
    # the line gives each framework's median over them, the table each one's own.
    machine.print_header(["jax", "torch"], gflops={
        f: float(np.median([g for name, g in gemm.items() if FRAMEWORK[name] == f])) for f in ("jax", "torch")})
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
    m, k, n = machine.GEMM_SHAPE
    print(f"{'implementation':<14} {'s/step':>8} {'tokens/s':>10} {'ours (scanned) is x faster':>27} "
          f"{'per round: median [min, max]':>29} {f'GEMM {m}x{k}x{n} GFLOP/s':>25} {'page faults/step':>17}")
    for name, t in results.items():
        r = paired[name]
        print(f"{name:<14} {t:>8.3f} {tokens / t:>10.1f} {t / ours:>27.2f} "
              f"{f'{np.median(r):.2f} [{r.min():.2f}, {r.max():.2f}]':>29} {gemm[name]:>25.1f} "
              f"{np.median(faults[name]):>17,.0f}")


if __name__ == "__main__":
    main()
