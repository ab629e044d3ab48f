"""Weights between the two worlds: HF checkpoints (directories or Hub ids) and Orbax params checkpoints.

    python -m jaxmodels.convert --hf albert/albert-base-v2 --orbax /ckpt/albert   # HF -> Orbax
    python -m jaxmodels.convert --orbax /ckpt/albert --hf /export/albert           # Orbax -> HF (HF loads it)
    python -m jaxmodels.convert --orbax RUN_DIR --hf /export/run                  # a training run's newest step

The direction is the one whose source exists: ``--hf`` an HF directory or Hub id and ``--orbax`` new, or ``--orbax``
an Orbax checkpoint (a converted directory, a run directory or ``RUN/checkpoints/<step>``) and ``--hf`` new (or
``--to``). The Orbax output is what ``python -m train --config.init_from=...`` starts from, on any mesh. Outputs are
written into a temporary directory and renamed when complete; an output that exists and is not empty is refused.
Errors are one ``error:`` line and exit status 2. Params only: a buffer a family keeps outside its params (REALM's
``block_emb`` index, read by ``jaxmodels.realm.load_block_emb``) is not carried over.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxmodels.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", required=True, help="HF checkpoint directory or Hub model id (source), or the HF "
                        "directory to write")
    parser.add_argument("--orbax", required=True, help="Orbax checkpoint to write, or to read (an Orbax params "
                        "directory, a training run directory, or RUN/checkpoints/<step>)")
    parser.add_argument("--to", choices=("orbax", "hf"), help="the output format (default: the one that does not "
                        "exist yet)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) of --hf")
    parser.add_argument("--cache-dir", help="huggingface_hub cache directory")
    parser.add_argument("--local-files-only", action="store_true", help="never download (as HF_HUB_OFFLINE=1)")
    parser.add_argument("--architecture", help="head class to read the weights into (default: config.json's)")
    parser.add_argument("--max-shard-size", default="5GB", help="HF output: shard the safetensors above this size")
    return parser


def _direction(args) -> str:
    from jaxmodels import orbax_io

    if args.to:
        return args.to
    orbax_source = os.path.isdir(args.orbax) and orbax_io.is_orbax(args.orbax)
    hf_target_free = not os.path.exists(args.hf) or (os.path.isdir(args.hf) and not os.listdir(args.hf))
    if orbax_source and hf_target_free:
        return "hf"
    return "orbax"


def convert(args) -> str:
    """Runs one conversion; returns a line describing what was written."""
    import jaxmodels
    from jaxmodels import hf_io, orbax_io

    to = _direction(args)
    source, target = (args.hf, args.orbax) if to == "orbax" else (args.orbax, args.hf)
    orbax_io.check_empty_target(target)
    max_shard = hf_io.parse_size(args.max_shard_size)
    # Every local device in one fsdp axis: the weights are read tensor by tensor into their blocks, never whole.
    mesh = jax.make_mesh((jax.local_device_count(),), ("fsdp",))
    module, params = jaxmodels.from_pretrained(source, architecture=args.architecture, mesh=mesh,
                                               revision=args.revision, cache_dir=args.cache_dir,
                                               local_files_only=args.local_files_only or None)
    if to == "orbax":
        jaxmodels.save_orbax(module, params, target)
    else:
        orbax_io.write_atomically(target, lambda tmp: jaxmodels.save_pretrained(module, params, tmp,
                                                                                 max_shard_size=max_shard))
    count = sum(int(x.size) for x in jax.tree.leaves(params))
    return f"wrote {target} ({'Orbax' if to == 'orbax' else 'HF'}): {type(module).__name__}, {count:,} params"


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(convert(args))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
