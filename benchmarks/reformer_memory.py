"""Reformer training-step memory (from XLA's compiled program) and time, against depth and length, in one run.

    python benchmarks/reformer_memory.py [--lengths 4096,8192,16384,32768] [--depths 6,12,24]
                                         [--search 65536,131072,...,1048576] [--budget-gib 20]
                                         [--hf-length 4096] [--steps 2]
    python benchmarks/reformer_memory.py --tokens 1048576 [--run] [--dtype bfloat16]

Model: d=256 causal LM (4 heads x 64, FF 512, alternating local / LSH layers with chunks of 64, one hash round,
chunked feed-forward of 64 positions, axial positions sized to the length, vocab 320), batch 1, fp32, dropout 0.05
as HF's default. A step is the LM loss, gradients of every parameter and an SGD update (jit, params donated).

Prints the command, date and CPU and the calibration GEMM's fp32 GFLOP/s (XLA, and torch when ``--hf-length`` is
set; see ``machine.py``), then four markdown tables:
  1. temp memory (``compile().memory_analysis().temp_size_in_bytes``) vs depth at the first of ``--lengths``, with
     the part that is one fp32 copy of the params (the SGD step's gradients, which grow with depth by construction)
     and the rest (the activations, which should not), and the compile time;
  2. temp memory vs length at 6 layers: MiB, KiB per token, compile time;
  3. the lengths of ``--search`` in turn (6 layers) until one's step needs more than ``--budget-gib`` of temp memory
     or fails to compile or run: temp GiB, compile time, the time of one step here and its loss; then the
     longest that ran;
  4. step time of ours vs HF PyTorch ``ReformerModelWithLMHead`` (train mode, same config and batch) at
     ``--hf-length`` (0 skips it): median of ``--steps`` steps after one warm-up, interleaved so both see the same
     machine load, and HF's time over ours.

With ``--tokens N`` only that length is compiled (6 layers): its temp memory (GiB, KiB per token) and, with ``--run``,
the time and loss of one step (``--dtype bfloat16``: compute in bf16, params, streams, softmax and loss fp32).
A step at 1M tokens needs about 16 GiB of temp memory plus the params: run it on a quiet machine.

Results, past and present: ``benchmarks/RESULTS.md``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import machine
from jaxmodels.reformer import ReformerConfig, ReformerModelWithLMHead


def config_for(layers: int, length: int) -> ReformerConfig:
    side = 2 ** (int(math.log2(length)) // 2)
    return ReformerConfig(
        hidden_size=256, num_attention_heads=4, attention_head_size=64, feed_forward_size=512,
        attn_layers=("local", "lsh") * (layers // 2), axial_pos_shape=(side, length // side),
        axial_pos_embds_dim=(64, 192), is_decoder=True, chunk_size_feed_forward=64, local_attn_chunk_length=64,
        lsh_attn_chunk_length=64, max_position_embeddings=length, num_hashes=1, vocab_size=320)


def train_step(config: ReformerConfig, dtype=jnp.float32):
    module = ReformerModelWithLMHead(config, dtype=dtype)

    def loss(params, ids, key):
        k1, k2 = jax.random.split(key)
        return module.apply({"params": params}, input_ids=ids, labels=ids, deterministic=False,
                            rngs={"dropout": k1, "lsh": k2}).loss

    def step(params, ids, key):
        value, grads = jax.value_and_grad(loss)(params, ids, key)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), value

    return module, jax.jit(step, donate_argnums=0)


def abstract_params(module):
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0, impl="rbg"),
                                               input_ids=jnp.zeros((1, 1), jnp.int32))["params"])
    return jax.tree.map(lambda b: jax.ShapeDtypeStruct(getattr(b, "value", b).shape, jnp.float32), boxed,
                        is_leaf=lambda b: hasattr(b, "value"))


def compile_step(layers: int, length: int, dtype=jnp.float32):
    module, step = train_step(config_for(layers, length), dtype)
    params = abstract_params(module)
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    t = time.perf_counter()
    compiled = step.lower(params, ids, jax.random.key(0, impl="rbg")).compile()
    return module, compiled, time.perf_counter() - t


def run_step(module, compiled, length: int, steps: int = 1):
    params = jax.jit(lambda: module.init(jax.random.key(0, impl="rbg"),
                                         input_ids=jnp.zeros((1, 1), jnp.int32))["params"])()
    params = jax.tree.map(lambda b: getattr(b, "value", b), params, is_leaf=lambda b: hasattr(b, "value"))
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 320, (1, length)), jnp.int32)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        params, loss = compiled(params, ids, jax.random.key(i, impl="rbg"))
        loss.block_until_ready()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(loss)


def gib(x):
    return x / 2**30


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="4096,8192,16384,32768")
    ap.add_argument("--depths", default="6,12,24")
    ap.add_argument("--search", default="65536,131072,262144,524288,1048576")
    ap.add_argument("--budget-gib", type=float, default=20.0)
    ap.add_argument("--hf-length", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=0, help="compile (and with --run, run) only this length")
    ap.add_argument("--run", action="store_true", help="with --tokens: run one step, print its time and loss")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    args = ap.parse_args()
    if args.tokens:
        return one_length(args.tokens, args.run, jnp.dtype(args.dtype))
    lengths = [int(x) for x in args.lengths.split(",") if x]
    depths = [int(x) for x in args.depths.split(",") if x]

    machine.print_header(["jax", "torch"] if args.hf_length else ["jax"])
    # The SGD step's gradients are temp buffers, one fp32 copy of the params: that part grows with depth by
    # construction, so the table also shows the temp without it (the activations, which must not grow).
    print(f"\n## temp memory vs depth (length {lengths[0]})\n| layers | temp MiB | param grads MiB | temp - grads MiB "
          f"| compile s |\n|---|---|---|---|---|")
    for d in depths:
        module, c, t = compile_step(d, lengths[0])
        temp = c.memory_analysis().temp_size_in_bytes / 2**20
        grads = sum(x.size * 4 for x in jax.tree.leaves(abstract_params(module))) / 2**20
        print(f"| {d} | {temp:.1f} | {grads:.1f} | {temp - grads:.1f} | {t:.1f} |", flush=True)

    print("\n## temp memory vs length (6 layers)\n| length | temp MiB | per token KiB | compile s |\n|---|---|---|---|")
    for n in lengths:
        _, c, t = compile_step(6, n)
        temp = c.memory_analysis().temp_size_in_bytes
        print(f"| {n} | {temp / 2**20:.1f} | {temp / n / 1024:.2f} | {t:.1f} |", flush=True)

    print(f"\n## longest length within {args.budget_gib} GiB temp that runs one step here (6 layers, batch 1)")
    print("| length | temp GiB | compile s | step s | loss |\n|---|---|---|---|---|")
    best = None
    for n in [int(x) for x in args.search.split(",") if x]:
        try:
            module, c, t = compile_step(6, n)
        except Exception as e:  # noqa: BLE001 - report and stop searching
            print(f"| {n} | compile failed: {type(e).__name__} | | | |")
            break
        temp = gib(c.memory_analysis().temp_size_in_bytes)
        if temp > args.budget_gib:
            print(f"| {n} | {temp:.2f} (over budget) | {t:.1f} | | |")
            break
        try:
            step_s, loss = run_step(module, c, n, steps=1)
        except Exception as e:  # noqa: BLE001
            print(f"| {n} | {temp:.2f} | {t:.1f} | run failed: {type(e).__name__} | |")
            break
        print(f"| {n} | {temp:.2f} | {t:.1f} | {step_s:.1f} | {loss:.3f} |", flush=True)
        best = n
    print(f"longest: {best}")

    if args.hf_length:
        compare_with_hf(args.hf_length, args.steps)


def one_length(n: int, run: bool, dtype):
    machine.print_header(["jax"])
    module, c, t = compile_step(6, n, dtype)
    temp = c.memory_analysis().temp_size_in_bytes
    print(f"\n## {n} tokens, 6 layers, batch 1, compute {dtype.name}\n| length | temp GiB | per token KiB | compile s "
          f"| step s | loss |\n|---|---|---|---|---|---|")
    step_s = loss = ""
    if run:
        step_s, loss = run_step(module, c, n, steps=1)
        step_s, loss = f"{step_s:.1f}", f"{loss:.3f}"
    print(f"| {n} | {gib(temp):.2f} | {temp / n / 1024:.2f} | {t:.1f} | {step_s} | {loss} |", flush=True)


def compare_with_hf(length: int, steps: int):
    import torch
    import transformers

    config = config_for(6, length)
    module, c, _ = compile_step(6, length)
    hf_config = transformers.ReformerConfig(**{k: v for k, v in config.to_hf_dict().items() if k != "model_type"})
    hf = transformers.ReformerModelWithLMHead(hf_config).train()
    opt = torch.optim.SGD(hf.parameters(), lr=1e-3)
    ids_np = np.random.RandomState(0).randint(1, 320, (1, length))
    ids = torch.tensor(ids_np)

    def hf_step():
        opt.zero_grad()
        loss = hf(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()

    params = jax.jit(lambda: module.init(jax.random.key(0, impl="rbg"),
                                         input_ids=jnp.zeros((1, 1), jnp.int32))["params"])()
    params = jax.tree.map(lambda b: getattr(b, "value", b), params, is_leaf=lambda b: hasattr(b, "value"))
    jids = jnp.asarray(ids_np, jnp.int32)
    params, loss = c(params, jids, jax.random.key(0, impl="rbg"))  # warm-up
    loss.block_until_ready()
    hf_step()
    ours_t, hf_t = [], []
    for i in range(steps):  # interleaved: both see the same load
        t = time.perf_counter()
        params, loss = c(params, jids, jax.random.key(i + 1, impl="rbg"))
        loss.block_until_ready()
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        hf_step()
        hf_t.append(time.perf_counter() - t)
    o, h = float(np.median(ours_t)), float(np.median(hf_t))
    print(f"\n## step time at L={length} (6 layers, batch 1, train mode)\n| impl | s/step |\n|---|---|")
    print(f"| ours (JAX) | {o:.2f} |\n| HF PyTorch | {h:.2f} |\nspeed-up: {h / o:.2f}x")


if __name__ == "__main__":
    main()
