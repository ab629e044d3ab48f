"""One ALBERT-base training step (forward, backward, AdamW update), side by side in one run:
this project (JAX; layers scanned, and fully unrolled), HF PyTorch ``AlbertForMaskedLM`` and HF
``FlaxAlbertForMaskedLM``.

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


def build_ours(ids, mask, labels, scan_unroll: int = 1):
    import jax
    import jax.numpy as jnp
    import optax

    import jaxmodels

    module = jaxmodels.from_config({**ALBERT_BASE, "model_type": "albert", "architectures": ["AlbertForMaskedLM"]})
    module = module.clone(scan_unroll=scan_unroll)
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


def _worker(name, conn, ids, mask, labels):
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    step = BUILDERS[name](ids, mask, labels)
    for _ in range(conn.recv()):  # warm-up steps: compiles (JAX) and warms allocator caches
        step()
    conn.send("ready")
    while conn.recv() == "step":
        start = time.perf_counter()
        step()
        conn.send(time.perf_counter() - start)


BUILDERS = {
    "ours (JAX)": build_ours,  # layers scanned: compile time flat in depth (the default)
    "ours unrolled": lambda *a: build_ours(*a, scan_unroll=ALBERT_BASE["num_hidden_layers"]),
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
    args = parser.parse_args()
    ids, mask, labels = make_batch(args.batch, args.seq)
    tokens = args.batch * args.seq
    if args.same_process:
        steps = {name: build(ids, mask, labels) for name, build in BUILDERS.items()}
        for name, step in steps.items():
            for _ in range(args.warmup):  # compiles (JAX) and warms allocator caches
                step()

        def timed(name):
            start = time.perf_counter()
            steps[name]()
            return time.perf_counter() - start
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        conns, workers = {}, []
        for name in BUILDERS:  # one at a time, so no build or compile overlaps another
            parent, child = ctx.Pipe()
            worker = ctx.Process(target=_worker, args=(name, child, ids, mask, labels), daemon=True)
            worker.start()
            parent.send(args.warmup)
            assert parent.recv() == "ready"
            conns[name] = parent
            workers.append(worker)

        def timed(name):
            conns[name].send("step")
            return conns[name].recv()

    times = {name: [] for name in BUILDERS}
    for r in range(args.steps):
        for name in BUILDERS:
            times[name].append(timed(name))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    if not args.same_process:
        for conn in conns.values():
            conn.send("stop")
        for worker in workers:
            worker.join()
    results = {name: float(np.median(t)) for name, t in times.items()}
    ours = results["ours (JAX)"]
    print(f"\nALBERT-base MLM training step, batch {args.batch} x seq {args.seq}, fp32, AdamW, "
          f"{os.cpu_count()} CPU cores, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{'one process' if args.same_process else 'one worker process each'}")
    print(f"{'implementation':<14} {'s/step':>8} {'tokens/s':>10} {'ours (scanned) is x faster':>27}")
    for name, t in results.items():
        print(f"{name:<14} {t:>8.3f} {tokens / t:>10.1f} {t / ours:>27.2f}")


if __name__ == "__main__":
    main()
