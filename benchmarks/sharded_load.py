"""Host memory of loading an HF checkpoint onto a mesh: ``from_pretrained(dir, mesh=...)`` (each device's block read
by slice from the safetensors file, straight into its ``NamedSharding``) against the full-materialisation path
(``from_pretrained(dir)``: the whole state dict in host memory, converted in one piece, then ``jax.device_put``
onto the same shardings).

A random RemBERT-shaped checkpoint of ~540M params (2.2 GB fp32: 30 layers of d=1152 and the 250,300 x 256
input embedding) is streamed to disk tensor by tensor, and each path runs in its own worker process on 8 simulated
CPU devices (a 1-D ``fsdp`` mesh, ``jaxmodels.sharding.DEFAULT_RULES``). On CPU the "device" buffers are host
memory too, so the params' own bytes are in every figure; what differs between the paths is the transient memory
above that. The worker samples its own ``/proc/self/status`` every 2 ms:

- ``RssAnon`` (anonymous memory: numpy / torch buffers and device arrays), whose peak is the honest measure: file
  pages of the memory-mapped safetensors file are excluded (the kernel can drop them at any time);
- ``VmHWM`` (peak RSS including touched file pages), for completeness.

    python benchmarks/sharded_load.py            # ~540M params (needs ~8 GB free memory for the full path)
    python benchmarks/sharded_load.py --layers 6 # a smaller run

Results: ``benchmarks/RESULTS.md``. Not a test: nothing here asserts on memory or time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import machine

MIB = 2 ** 20


def _rembert_config(layers: int) -> dict:
    from transformers import RemBertConfig

    config = RemBertConfig(vocab_size=250300, input_embedding_size=256, output_embedding_size=1664,
                           hidden_size=1152, num_hidden_layers=layers, num_attention_heads=18,
                           intermediate_size=4608, max_position_embeddings=512).to_dict()
    config["architectures"] = ["RemBertModel"]
    return config


def write_checkpoint(path: str, layers: int) -> tuple[int, int]:
    """A random ``RemBertModel`` safetensors checkpoint, streamed (never whole in memory); returns (params,
    largest tensor's params). Names and shapes come from HF's own model built on the meta device."""
    import torch
    from transformers import RemBertConfig, RemBertModel

    config = _rembert_config(layers)
    with torch.device("meta"):
        model = RemBertModel(RemBertConfig(**config), add_pooling_layer=True)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for shape in shapes.values():
            count = int(np.prod(shape))
            for start in range(0, count, 1 << 24):  # 64 MiB at a time
                f.write((0.02 * rng.standard_normal(min(1 << 24, count - start), np.float32)).tobytes())
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    sizes = [int(np.prod(s)) for s in shapes.values()]
    return sum(sizes), max(sizes)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def worker(path: str, mode: str) -> dict:
    """Runs in a fresh process: loads ``path`` onto an 8-device mesh by ``mode`` and reports memory figures."""
    import jax

    import jaxmodels
    from jaxmodels import sharding

    mesh = jax.make_mesh((8,), ("fsdp",))
    jax.numpy.zeros(()).block_until_ready()  # the runtime's own allocations belong to the baseline
    peak = {"RssAnon": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["RssAnon"] = max(peak["RssAnon"], _status()["RssAnon"])
            time.sleep(0.002)

    base = _status()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    if mode == "sharded":
        module, params = jaxmodels.from_pretrained(path, mesh=mesh)
    else:
        module, params = jaxmodels.from_pretrained(path)
        shardings = sharding.param_shardings(jaxmodels.abstract_params(module, boxed=True), mesh)
        params = jax.device_put(params, shardings)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    after = _status()
    device_bytes = sum(s.data.nbytes for leaf in jax.tree.leaves(params) for s in leaf.addressable_shards)
    return {"mode": mode, "seconds": seconds, "base_anon": base["RssAnon"], "peak_anon": peak["RssAnon"],
            "after_anon": after["RssAnon"], "hwm": after["VmHWM"], "base_rss": base["VmRSS"],
            "device_bytes": device_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    machine.print_header(["jax"])
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"}
    with tempfile.TemporaryDirectory() as tmp:
        params, largest = write_checkpoint(tmp, args.layers)
        print(f"RemBertModel, {args.layers} layers: {params / 1e6:.0f}M params ({params * 4 / MIB:.0f} MiB fp32), "
              f"largest tensor {largest * 4 / MIB:.0f} MiB; 8 CPU devices, 1-D fsdp mesh; load average "
              f"{os.getloadavg()[0]:.1f}\n")
        rows = []
        for mode in ("sharded", "full"):
            run = subprocess.run([sys.executable, __file__, "--worker", tmp, mode], env=env, capture_output=True,
                                 text=True, check=False)
            if run.returncode:
                print(f"{mode}: worker failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
                continue
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    print("| path | load s | params on devices MiB | peak anon above baseline MiB | transient (peak - on devices) MiB"
          " | peak RSS incl. file pages MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        above = r["peak_anon"] - r["base_anon"]
        print(f"| {r['mode']} | {r['seconds']:.1f} | {r['device_bytes'] / MIB:.0f} | {above / MIB:.0f} | "
              f"{(above - r['device_bytes']) / MIB:.0f} | {(r['hwm'] - r['base_rss']) / MIB:.0f} |")
    if len(rows) == 2:
        transient = [r["peak_anon"] - r["base_anon"] - r["device_bytes"] for r in rows]
        print(f"\ntransient host memory: sharded {transient[0] / MIB:.0f} MiB, full {transient[1] / MIB:.0f} MiB "
              f"({transient[1] / max(transient[0], 1):.1f}x); largest tensor {largest * 4 / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
