"""MEGA training-step time and compiled temp memory against sequence length, in one run.

    python benchmarks/mega_benchmark.py [--lengths 1024,2048,...,32768] [--batch 1] [--steps 3] [--chunk 128]
                                        [--hf-max-len 8192] [--max-temp-gib 24] [--ema-algorithm fft]
                                        [--skip mega,chunk,full-attn,hf,hf-chunk]

Models (width 128, 2 layers, FFN 256, shared representation 64, EMA dimension 16, rotary bias, softmax attention,
ScaleNorm, no dropout, vocab 1024; ``CONFIG`` below), each a column:
  MEGA      ours, MegaForMaskedLM, one attention block over the whole sequence (quadratic in length)
  chunk     ours, MegaForMaskedLM with use_chunking and chunk_size ``--chunk`` (Mega-chunk: linear in length)
  full-att  a same-width plain softmax Transformer encoder (pre-LN, 4 heads, same FFN width) built here in Flax
  HF MEGA, HF chunk   transformers' PyTorch MegaForMaskedLM with the same two configs (only up to ``--hf-max-len``)

A step is the masked-LM loss (15% of positions labelled), gradients and an AdamW update, fp32, batch ``--batch``.
Each time is the median of ``--steps`` timed steps after one warm-up step. Our steps are compiled ahead of time and
XLA's memory analysis gives their temp memory; a step over ``--max-temp-gib`` is not run ("-"). HF rows report
time only (torch on CPU has no comparable number). ``--ema-algorithm`` picks our EMA's algorithm.

Prints the command, date and CPU and the calibration GEMM's fp32 GFLOP/s in XLA and torch (``machine.py``), one
progress line per length, then one table: step time (ms) of each column; compiled temp memory (MiB) of ours; the
ratios HF/ours (HF MEGA over MEGA), HFc/chk (HF chunk over chunk), full/chk (full-attention over Mega-chunk, time)
and memfull/chk (the same, temp memory); and Mega-chunk's temp-memory growth per doubling of length (2.00 is
linear).

Results, past and present: ``benchmarks/RESULTS.md``. Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import machine

CONFIG = dict(
    vocab_size=1024, hidden_size=128, num_hidden_layers=2, intermediate_size=256, ema_projection_size=16,
    shared_representation_size=64, nffn_hidden_size=256, max_positions=32768, bidirectional=True,
    attention_activation="softmax", relative_positional_bias="rotary", normalization_type="scalenorm",
    dropout_prob=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, nffn_activation_dropout_prob=0.0,
)
HEADS = 4


def make_batch(batch: int, seq: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, CONFIG["vocab_size"], (batch, seq)).astype(np.int32)
    labels = np.where(rng.rand(batch, seq) < 0.15, ids, -100).astype(np.int32)
    return ids, labels


def timed(step, steps: int) -> float:
    step()  # warm-up (and compile)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------------------------
# JAX models
# ------------------------------------------------------------------------------------------------------------------
def full_attention_encoder():
    """Pre-LN softmax Transformer encoder of MEGA's width: embeddings, L x (MHA + FFN), tied output."""
    import flax.linen as nn
    import jax

    from layers.losses import cross_entropy

    d, layers, ffn = CONFIG["hidden_size"], CONFIG["num_hidden_layers"], CONFIG["nffn_hidden_size"]

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.LayerNorm()(x)
            qkv = nn.Dense(3 * d)(h).reshape(x.shape[:2] + (3, HEADS, d // HEADS))
            att = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
            x = x + nn.Dense(d)(att.reshape(x.shape))
            return x + nn.Dense(d)(jax.nn.silu(nn.Dense(ffn)(nn.LayerNorm()(x))))

    class Encoder(nn.Module):
        @nn.compact
        def __call__(self, ids, labels):
            emb = nn.Embed(CONFIG["vocab_size"], d)
            x = emb(ids)
            x, _ = nn.scan(lambda blk, h, _: (blk(h), None), variable_axes={"params": 0},
                           split_rngs={"params": True}, length=layers)(Block(), x, None)
            return cross_entropy(emb.attend(nn.LayerNorm()(x)), labels)

    return Encoder()


def build_jax(kind: str, ids, labels, chunk: int, ema_algorithm: str, max_temp: float):
    import jax
    import jax.numpy as jnp
    import optax

    import jaxmodels

    batch = (jnp.asarray(ids), jnp.asarray(labels))
    if kind == "full-attn":
        module = full_attention_encoder()
        params = jax.jit(module.init)(jax.random.key(0), *batch)["params"]
        loss_fn = lambda p, b: module.apply({"params": p}, *b)
    else:
        cfg = dict(CONFIG, model_type="mega", architectures=["MegaForMaskedLM"])
        if kind == "chunk":
            cfg.update(use_chunking=True, chunk_size=chunk)
        module = jaxmodels.from_config(cfg)
        module = module.clone(ema_algorithm=ema_algorithm)
        params = jax.jit(lambda k: jaxmodels.init_params(module, k))(jax.random.key(0))
        loss_fn = lambda p, b: module.apply({"params": p}, input_ids=b[0], labels=b[1]).loss

    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)

    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, batch).compile()
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", float("nan")) if analysis is not None else float("nan")
    if temp > max_temp:
        return None, temp
    state = [params, opt_state]

    def step():
        state[0], state[1], loss = compiled(state[0], state[1], batch)
        loss.block_until_ready()

    return step, temp


def build_hf(kind: str, ids, labels, chunk: int):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    cfg = dict(CONFIG)
    if kind == "chunk":
        cfg.update(use_chunking=True, chunk_size=chunk)
    model = transformers.MegaForMaskedLM(transformers.MegaConfig(**cfg)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t_ids, t_labels = torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=t_ids, labels=t_labels).loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--hf-max-len", type=int, default=8192, help="skip HF torch above this length (slow)")
    parser.add_argument("--max-temp-gib", type=float, default=24.0, help="skip our steps needing more temp memory")
    parser.add_argument("--ema-algorithm", default="auto", choices=["auto", "fft", "scan", "chunked"])
    parser.add_argument("--skip", default="", help="comma list of columns to skip: mega,chunk,full-attn,hf,hf-chunk")
    args = parser.parse_args()

    skip = set(filter(None, args.skip.split(",")))
    lengths = [int(x) for x in args.lengths.split(",")]
    machine.print_header(["jax"] if {"hf", "hf-chunk"} <= skip else ["jax", "torch"])
    print(f"batch {args.batch}; chunk {args.chunk}; EMA {args.ema_algorithm}; config {CONFIG}")
    rows = []
    for n in lengths:
        ids, labels = make_batch(args.batch, n)
        row = {"L": n}
        for kind in ("mega", "chunk", "full-attn"):
            if kind in skip:
                continue
            try:
                step, temp = build_jax(kind, ids, labels, args.chunk, args.ema_algorithm, args.max_temp_gib * 2**30)
                row[kind + "_mem"] = temp
                row[kind] = timed(step, args.steps) if step is not None else None
            except Exception as e:  # an OOM at a long length should not end the sweep
                print(f"  {kind} L={n}: {type(e).__name__}: {str(e)[:120]}")
                row[kind] = None
        for kind in ("hf", "hf-chunk"):
            if kind in skip or n > args.hf_max_len:
                continue
            try:
                row[kind] = timed(build_hf("chunk" if kind == "hf-chunk" else "mega", ids, labels, args.chunk),
                                  args.steps)
            except Exception as e:
                print(f"  {kind} L={n}: {type(e).__name__}: {str(e)[:120]}")
                row[kind] = None
        rows.append(row)
        print("  done", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    def t(v):
        return f"{'-':>9}" if v is None else f"{v * 1e3:9.1f}"  # padded: a skipped cell keeps the columns

    def m(v):
        return f"{'-':>9}" if v is None or v != v else f"{v / 2**20:9.1f}"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:6.2f}x"

    print("\nstep time (ms) and compiled temp memory (MiB)")
    print(f"{'L':>6} | {'MEGA':>9} {'chunk':>9} {'full-att':>9} {'HF MEGA':>9} {'HF chunk':>9} | "
          f"{'mem MEGA':>9} {'mem chunk':>9} {'mem full':>9} | {'HF/ours':>7} {'HFc/chk':>7} {'full/chk':>8} "
          f"{'memfull/chk':>11}")
    for r in rows:
        g = r.get
        print(f"{r['L']:>6} | {t(g('mega'))} {t(g('chunk'))} {t(g('full-attn'))} {t(g('hf'))} {t(g('hf-chunk'))} | "
              f"{m(g('mega_mem'))} {m(g('chunk_mem'))} {m(g('full-attn_mem'))} | {ratio(g('hf'), g('mega')):>7} "
              f"{ratio(g('hf-chunk'), g('chunk')):>7} {ratio(g('full-attn'), g('chunk')):>8} "
              f"{ratio(g('full-attn_mem'), g('chunk_mem')):>11}")
    chunk_mems = [(r["L"], r.get("chunk_mem")) for r in rows if r.get("chunk_mem") is not None]
    if len(chunk_mems) > 1:
        growth = [f"{b[1] / a[1]:.2f}" for a, b in zip(chunk_mems, chunk_mems[1:])]
        print(f"Mega-chunk temp memory growth per doubling of L: {growth} (2.00 = linear)")


if __name__ == "__main__":
    main()
