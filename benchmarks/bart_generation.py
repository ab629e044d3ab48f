"""BART generation speed, side by side in one run: this project (``jaxmodels.generation.generate``), HF
``FlaxBartForConditionalGeneration.generate`` (under ``jax.jit``) and HF PyTorch ``BartForConditionalGeneration
.generate``, greedy and 4-beam search.

    python benchmarks/bart_generation.py [--batch 4] [--source 512] [--new 64] [--rounds 3] [--skip "HF Flax"]
    python benchmarks/bart_generation.py --small     # a smoke run: 2 + 2 layers, d=256, 128-token input, 16 new

The model has BART-base's shapes (6 + 6 layers, d=768, 12 heads, FFN 3072, vocab 50265; the ``bart-base`` preset)
with random weights (torch seed 0), saved once and loaded by all three, fp32. Every implementation encodes the same
``[batch, source]`` ids (``<s> .. </s>``, no padding) and generates exactly ``new`` tokens per example:
``min_length = max_length = 1 + new`` (eos is banned until the config's forced eos closes the sequence), so no
implementation can stop early and the work is the same; beam search uses 4 beams, ``length_penalty=1``,
``early_stopping=False``, no n-gram ban. tokens/s counts generated tokens of the batch (``batch * new``), beams not
multiplied. Outputs are checked against HF PyTorch's, token for token.

Our rows: ``ours`` is the default module (``split_decoding=True``): the cache built once per generation holds the
decoder's weights and cross-attention keys/values one buffer per layer and each step runs the layers unrolled,
reading each weight in place (inside a scan XLA copies every layer's weight slice before reading it:
``layers.stacked.PerLayer``); ``ours scanned`` sets ``split_decoding=False`` (the decoder's layers scanned over the
stacked params in every step).

Each implementation runs in its own worker process (PyTorch's and XLA's thread pools would otherwise compete on a
few cores), built and warmed up one after another. Timed runs are interleaved round-robin (one run of each
implementation per round and mode); each row's speed-ups over the HF implementations are the medians (and range) of
per-round ratios, steadier on a shared host than ratios of medians. "CPU s" is the worker's CPU time of a run (all
its threads), which other work on the host inflates less than wall time. "compile s" is the first call minus a
steady one. Before the table: the command, date, CPU and the fp32 GEMM calibration in XLA and torch
(``machine.py``; each worker times it after its first calls, the line gives each framework's median over its
workers), and the host's 1-minute load average before and after the run (the rows are wall times).

Results, past and present: ``benchmarks/RESULTS.md``. Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import machine  # noqa: E402  (benchmarks/ is sys.path[0] when this runs as a script)

IMPLEMENTATIONS = ("ours", "ours scanned", "HF Flax", "HF PyTorch")
MODES = {"greedy": 1, "beam 4": 4}


def make_ids(batch: int, source: int, vocab: int) -> np.ndarray:
    ids = np.random.RandomState(0).randint(4, vocab, (batch, source)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    return ids


SMALL = dict(encoder_layers=2, decoder_layers=2, d_model=256, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=1024, decoder_ffn_dim=1024)


def save_model(directory: str, small: bool = False) -> dict:
    """BART-base-shaped HF PyTorch model with random weights, saved to ``directory``; returns its config dict.
    ``small``: the smoke-run shapes (``SMALL``)."""
    import torch
    import transformers

    from jaxmodels import registry

    config = {k: v for k, v in registry.preset("bart-base").items() if k not in ("model_type", "architectures")}
    if small:
        config.update(SMALL)
    torch.manual_seed(0)
    transformers.BartForConditionalGeneration(transformers.BartConfig(**config)).save_pretrained(directory)
    return config


def build(name: str, directory: str, ids: np.ndarray, new: int):
    """``run(num_beams) -> sequences [batch, <= 1 + new]`` for implementation ``name``."""
    length = dict(max_length=1 + new, min_length=1 + new)
    mask = np.ones_like(ids)
    if name.startswith("ours"):
        import jax
        import jax.numpy as jnp

        import jaxmodels
        from jaxmodels.generation import generate

        module, params = jaxmodels.from_pretrained(directory)
        module = module.clone(split_decoding=name != "ours scanned")
        jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
        return lambda beams: np.asarray(jax.block_until_ready(
            generate(module, params, jids, attention_mask=jmask, num_beams=beams, **length)))
    if name == "HF Flax":
        import jax
        import jax.numpy as jnp
        import transformers

        transformers.logging.set_verbosity_error()
        model = transformers.FlaxBartForConditionalGeneration.from_pretrained(directory, from_pt=True)
        compiled = {beams: jax.jit(lambda i, m, b=beams: model.generate(i, attention_mask=m, num_beams=b,
                                                                         **length).sequences)
                    for beams in MODES.values()}
        jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
        return lambda beams: np.asarray(jax.block_until_ready(compiled[beams](jids, jmask)))
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(os.cpu_count())
    model = transformers.BartForConditionalGeneration.from_pretrained(directory).eval()
    tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def run(beams):
        with torch.no_grad():
            return model.generate(tids, attention_mask=tmask, num_beams=beams, **length).numpy()

    return run


def _worker(name, conn, directory, ids, new):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    run = build(name, directory, ids, new)
    first = {}
    for mode, beams in MODES.items():  # first calls: compiles (JAX), thread pools, allocator caches
        start = time.perf_counter()
        run(beams)
        first[mode] = time.perf_counter() - start
    framework = "torch" if name == "HF PyTorch" else "jax"
    conn.send((first, machine.gemm_gflops(framework)))
    while True:
        message = conn.recv()
        if message == "stop":
            return
        start, cpu = time.perf_counter(), time.process_time()
        sequences = run(MODES[message])
        conn.send((time.perf_counter() - start, time.process_time() - cpu, sequences))


def _same(ours: np.ndarray, reference: np.ndarray, pad: int = 1) -> bool:
    """Equal up to padding: our rows are ``max_length`` long (pad after the end), HF's cut to the longest."""
    width = max(ours.shape[1], reference.shape[1])
    fill = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=pad)  # noqa: E731
    return bool(np.array_equal(fill(ours), fill(reference)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--source", type=int, default=None, help="encoder tokens per example (default 512)")
    parser.add_argument("--new", type=int, default=None, help="generated tokens per example (default 64)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true",
                        help="smoke run: 2 + 2 layers, d=256, FFN 1024 (source 128 and new 16 unless given)")
    parser.add_argument("--skip", action="append", default=[], choices=IMPLEMENTATIONS,
                        help="leave an implementation out (repeatable)")
    args = parser.parse_args()
    if args.source is None:
        args.source = 128 if args.small else 512
    if args.new is None:
        args.new = 16 if args.small else 64
    names = [n for n in IMPLEMENTATIONS if n not in args.skip]
    import multiprocessing

    load_before = os.getloadavg()[0]  # a shared host's other work shows here: every time below is wall time
    directory = tempfile.mkdtemp(prefix="bart_generation_")
    config = save_model(directory, args.small)
    ids = make_ids(args.batch, args.source, config["vocab_size"])
    ctx = multiprocessing.get_context("spawn")
    conns, workers, first, gemm = {}, [], {}, {}
    for name in names:  # one at a time: no build or compile overlaps another
        parent, child = ctx.Pipe()
        worker = ctx.Process(target=_worker, args=(name, child, directory, ids, args.new), daemon=True)
        worker.start()
        first[name], gemm[name] = parent.recv()
        conns[name] = parent
        workers.append(worker)
        print(f"  {name} ready: first calls " + ", ".join(f"{m} {t:.1f}s" for m, t in first[name].items()),
              flush=True)
    times = {(n, m): [] for n in names for m in MODES}
    cpu_times = {(n, m): [] for n in names for m in MODES}
    outputs = {}
    for r in range(args.rounds):
        for mode in MODES:
            for name in names:
                conns[name].send(mode)
                elapsed, cpu, outputs[name, mode] = conns[name].recv()
                times[name, mode].append(elapsed)
                cpu_times[name, mode].append(cpu)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {m} {t[-1]:.2f}s" for (n, m), t in times.items()), flush=True)
    for conn in conns.values():
        conn.send("stop")
    for worker in workers:
        worker.join()

    tokens = args.batch * args.new
    print()
    frameworks = {"jax": [gemm[n] for n in names if n != "HF PyTorch"],
                  "torch": [gemm[n] for n in names if n == "HF PyTorch"]}
    machine.print_header([f for f, g in frameworks.items() if g],
                         gflops={f: float(np.median(g)) for f, g in frameworks.items() if g})
    shape = ("2 + 2 layers, d=256 (--small)" if args.small else "BART-base shapes (6 + 6 layers, d=768)")
    print(f"BART generation, {shape}, random weights, fp32: batch {args.batch}, source {args.source} tokens, "
          f"{args.new} new tokens per example, {args.rounds} timed rounds, one worker process each")
    print(f"1-minute load average: {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")
    references = [n for n in names if n.startswith("HF")]
    print(f"{'implementation':<12} {'mode':<7} {'s (median)':>10} {'CPU s':>7} {'tokens/s':>9} {'compile s':>10} "
          + "".join(f"{f'x faster than {r} (median [min, max])':>39}" for r in references) + f" {'= HF PyTorch':>13}")
    for mode in MODES:
        for name in names:
            t = np.asarray(times[name, mode])
            # The first call minus a steady one: XLA's compile for the JAX rows, warm-up costs for PyTorch.
            compile_s = first[name][mode] - float(np.median(t))
            ratios = ""
            for r in references:
                ratio = np.asarray(times[r, mode]) / t
                ratios += f"{f'{np.median(ratio):.2f} [{ratio.min():.2f}, {ratio.max():.2f}]':>39}"
            same = _same(outputs[name, mode], outputs["HF PyTorch", mode]) if "HF PyTorch" in names else "n/a"
            print(f"{name:<12} {mode:<7} {np.median(t):>10.2f} {np.median(cpu_times[name, mode]):>7.1f} "
                  f"{tokens / np.median(t):>9.1f} {compile_s:>10.1f}"
                  f"{ratios} {str(same):>13}")


if __name__ == "__main__":
    main()
