"""`python -m train.aot --config configs/<name>.py --topology v5e:4x4 [--mesh ...] [--batch_size N] [--json]`

Compiles the training step of an experiment config for a TPU slice, ahead of time, on any machine (a CPU-only
one included: `libtpu` from the `[tpu]` extra compiles for chips that are not there), and prints what one chip
would hold: arguments (params, optimizer state and the batch shard), outputs, the donated part of the
arguments the outputs reuse (alias), temporaries (activations, gradients, workspace), the total, and whether
it fits the chip's HBM. The step is built exactly as `python -m train` builds it (same config checks, model,
optimizer, mesh, logical-axis rules, shardings and donation), so a config that fits here fits there.

    report = compile_train_step(config, "v5e:4x4", mesh="data=4,fsdp=4")   # the same from Python
    print(format_report(report))

Topologies are `<generation>:<chips per dimension>` as libtpu names them (`v5e:4x4`, `v6e:2x2`, `v4:2x2x1`,
`v5p:2x2x2`) or a Cloud TPU slice name (`v5e-16`, `v5litepod-16`, `v6e-4`, `v4-8`, `v5p-8`). Exit status: 0
when the step fits, 1 when it does not (the figures are still printed), 2 on a bad flag, config or topology, or
when libtpu is not installed.
Nothing here touches the network: libtpu is told the (absent) machine's type instead of asking a metadata
server for it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str        # the name in topology strings: "v5e"
    device_kind: str       # what jax reports as `device.device_kind`
    hbm_gib: float         # HBM per chip, GiB (the docs' "GB"; the compiler's budgets below are binary)
    ndim: int              # torus dimensions of a slice: 2 (AxB) or 3 (AxBxC)
    chip_config: str       # libtpu chip config: "megacore" fuses v4/v5p's two TensorCores into one device
    slice_prefix: str      # Cloud TPU slice names: "<prefix>-<count>"
    slice_counts_cores: bool  # v4-8 / v5p-8 count TensorCores (2 per chip); v5e-16 / v6e-16 count chips


# HBM per chip as Cloud TPU documents it (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e: "HBM capacity per chip"
# 32, 16, 95 and 32 GB). libtpu 0.0.42 budgets 30.75, 15.75, 95.74 and 31.25 GiB of it for a program (the rest is
# the runtime's) and refuses a program over that, which is what `fits` reports.
# v4 and v5p chips have two TensorCores that JAX drives as one device ("megacore"): for every generation here
# one device is one chip, so per-device figures are per-chip figures.
CHIPS = {
    "v4": Chip("v4", "TPU v4", 32, 3, "megacore", "v4", True),
    "v5e": Chip("v5e", "TPU v5 lite", 16, 2, "default", "v5litepod", False),
    "v5p": Chip("v5p", "TPU v5", 95, 3, "megacore", "v5p", True),
    "v6e": Chip("v6e", "TPU v6 lite", 32, 2, "default", "v6e", False),
}
_HOST_BOUNDS = (2, 2, 1)  # chips per host (libtpu's default); smaller slices are given their own shape

# Slice name -> chip grid (Cloud TPU's standard shapes).
_SLICES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SLICES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}  # by chips
BATCH_KEYS = ("inputs", "segment_ids", "positions")  # what train.data yields: [batch, seq_len] int32 each
# libtpu's refusal of a program over budget, e.g. "Ran out of memory on HBM, the total memory required for HLO
# temporaries (24.63G) exceeds available HBM (15.75G)."; its figure counts arguments and outputs too.
_OOM_REQUIRED = re.compile(r"required[^(]*\(([\d.]+)\s*([KMGT]?)i?B?\)")


class TopologyError(ValueError):
    """An unknown or malformed `--topology`; the message lists the known names."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str              # libtpu's name: "v5e:4x4"
    chip: Chip
    shape: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)


def known_topology_names() -> list[str]:
    """Every slice name `parse_topology` accepts besides the `<generation>:<AxB[xC]>` form."""
    names = []
    for chip in CHIPS.values():
        for prefix in dict.fromkeys((chip.slice_prefix, chip.generation)):
            names += [f"{prefix}-{n}" for n in _slice_counts(chip)]
    return names


def _slice_counts(chip: Chip) -> list[int]:
    grids = _SLICES_3D if chip.ndim == 3 else _SLICES_2D
    return [n * (2 if chip.slice_counts_cores else 1) for n in grids]


def _topology_help(value: str, why: str) -> str:
    forms = ", ".join(f"{c.generation}:{'AxBxC' if c.ndim == 3 else 'AxB'} ({c.device_kind}, {c.hbm_gib:g} GiB)"
                      for c in CHIPS.values())
    slices = "; ".join(
        f"{'-N / '.join(dict.fromkeys((c.slice_prefix, c.generation)))}-N for N in {_slice_counts(c)}"
        for c in CHIPS.values())
    return (f"--topology={value!r}: {why}. Give <generation>:<chips per dimension>, one of {forms}, e.g. "
            f"v5e:2x2, v5e:4x4, v6e:4x4, v4:2x2x1, v5p:2x2x2; or a Cloud TPU slice name: {slices}")


def parse_topology(value: str) -> Topology:
    """`"v5e:4x4"` or `"v5e-16"` -> Topology; anything else raises TopologyError listing the known names."""
    text = str(value).strip().lower()
    match = re.fullmatch(r"(v\w+?)[:=]?(\d+(?:x\d+)+)", text)
    if match and match.group(1) in CHIPS:
        chip, shape = CHIPS[match.group(1)], tuple(int(d) for d in match.group(2).split("x"))
        if len(shape) != chip.ndim:
            raise TopologyError(_topology_help(value, f"a {chip.generation} slice has {chip.ndim} dimensions"))
        if min(shape) < 1:
            raise TopologyError(_topology_help(value, "every dimension must be at least 1"))
        return Topology(f"{chip.generation}:{'x'.join(map(str, shape))}", chip, shape)
    match = re.fullmatch(r"(v\w+?)-(\d+)", text)
    if match:
        for chip in CHIPS.values():
            if match.group(1) in (chip.generation, chip.slice_prefix):
                count = int(match.group(2))
                grids = _SLICES_3D if chip.ndim == 3 else _SLICES_2D
                chips = count // 2 if chip.slice_counts_cores else count
                if (count % 2 and chip.slice_counts_cores) or chips not in grids:
                    break
                return parse_topology(f"{chip.generation}:{grids[chips]}")
    raise TopologyError(_topology_help(value, "not a known TPU topology"))


def _quiet_libtpu(topology: Topology) -> None:
    """On a machine without TPU chips, libtpu asks the GCE metadata server for the accelerator type and the
    worker hostnames and logs an error for each answer it does not get: tell it both (and not to ask) before
    it initialises. It also takes /tmp/libtpu_lockfile, which any other process that loaded libtpu (a jax
    program run without JAX_PLATFORMS=cpu) may hold; compiling needs no chip, so let several load it.
    A real TPU VM keeps its own settings."""
    from train.platform import tpu_chips_attached

    if tpu_chips_attached():
        return
    per = 2 if topology.chip.slice_counts_cores else 1
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{topology.chip.slice_prefix}-{topology.num_chips * per}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: Topology | str) -> list:
    """Compile-only jax devices of every chip of `topology` (no TPU needed; needs the libtpu package)."""
    topology = parse_topology(topology) if isinstance(topology, str) else topology
    try:
        import libtpu  # noqa: F401 - only to fail with the fix rather than jax's generic message
    except ImportError:
        # A setup problem of the user's (exit status 2), not a step that does not fit (1).
        raise ValueError("train.aot needs libtpu to compile for TPUs: pip install -e '.[tpu]'") from None
    _quiet_libtpu(topology)
    import jax
    from jax.experimental import topologies

    kwargs = {"chip_config_name": topology.chip.chip_config}
    padded = topology.shape + (1,) * (3 - len(topology.shape))
    if any(d < b for d, b in zip(padded, _HOST_BOUNDS)):  # a slice smaller than one host
        kwargs["chips_per_host_bounds"] = tuple(min(d, b) for d, b in zip(padded, _HOST_BOUNDS))
    try:
        devices = topologies.get_topology_desc(topology_name=topology.name, platform="tpu", **kwargs).devices
    except jax.errors.JaxRuntimeError as error:
        raise TopologyError(_topology_help(topology.name, f"libtpu refused it ({error})")) from None
    if len(devices) != topology.num_chips:
        raise RuntimeError(f"libtpu made {len(devices)} devices for {topology.name}, expected one per chip "
                           f"({topology.num_chips})")
    return list(devices)


def _memory(stats) -> dict[str, int]:
    """Per-chip bytes from `Compiled.memory_analysis()`."""
    fields = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "alias": stats.alias_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
        "code": stats.generated_code_size_in_bytes,
    }
    fields = {k: int(v) for k, v in fields.items()}
    # Outputs that reuse donated arguments (the new state in the old one's buffers) are counted once.
    live = fields["arguments"] + fields["outputs"] - fields["alias"] + fields["temp"] + fields["code"]
    # The compiler's own peak (its buffer-assignment simulation) also counts layout copies it makes of
    # arguments; take whichever is larger so `total` never understates what the chip must hold.
    fields["total"] = max(live, int(getattr(stats, "peak_memory_in_bytes", 0) or 0))
    return fields


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (even shardings: all equal)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue  # a few bytes
        total += math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    return total


def _memory_without_program(error: str, state, batch) -> dict[str, int | None]:
    """Per-chip bytes when libtpu refused the program as too big: the buffers from the shapes and shardings
    (the state is donated, so the new one reuses it), the total from the compiler's message (None where it
    gives none); temp and code are unknown."""
    state_bytes = _shard_bytes(state)
    match = _OOM_REQUIRED.search(error)
    total = None
    if match:
        total = int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))
    return {"arguments": state_bytes + _shard_bytes(batch), "outputs": state_bytes, "alias": state_bytes,
            "temp": None, "code": None, "total": total}


def compile_train_step(config, topology: Topology | str, *, mesh: str | None = None,
                       batch_size: int | None = None) -> dict[str, Any]:
    """Compiles `config`'s train step for `topology` and returns the per-chip memory report (a JSON-able dict).

    `mesh` / `batch_size` replace `config.mesh` / `config.batch_size`. Raises ValueError naming the config key
    (TopologyError naming --topology) before compiling anything. Bytes are per chip (`per_chip`). A step that
    does not fit is refused by the compiler: `fits` is False, `compiler_error` holds its message (with the
    total it needed), `measured` is False, and arguments / outputs / alias come from the shapes and shardings
    while temp and code are None.
    """
    from train import experiment, objectives, partitioning
    from train import state as state_lib
    from train import step as step_lib

    topology = parse_topology(topology) if isinstance(topology, str) else topology
    config = copy.deepcopy(config)
    with config.unlocked():
        if mesh is not None:
            config.mesh = mesh
        if batch_size is not None:
            config.batch_size = batch_size
    exp = experiment.resolve(config)
    if exp.task is not None:
        raise ValueError(f"config.objective.name={config.objective.name!r}: train.aot compiles the steps of "
                         "language-model objectives; a fine-tuning step's batch shapes (buckets, choices) come from "
                         "its data files")
    devices = topology_devices(topology)

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    rules, tx, schedule, objective = exp.rules, exp.tx, exp.schedule, exp.objective  # exactly as train/loop.py
    device_mesh = exp.make_mesh(devices)
    module = exp.build_module(device_mesh)
    shardings = state_lib.state_shardings(module, tx, device_mesh, rules)
    state = state_lib.abstract_state(shardings, module, tx)
    batch_sharding = partitioning.batch_sharding(device_mesh, rules)
    shape = (config.batch_size, config.seq_len)
    try:
        rows_per_chip = batch_sharding.shard_shape(shape)[0]
    except ValueError:
        split = dict(zip(("batch", "seq_len"), batch_sharding.spec))
        raise ValueError(f"config.batch_size={config.batch_size}, config.seq_len={config.seq_len}: a batch "
                         f"{shape} does not split evenly over mesh {dict(device_mesh.shape)} "
                         f"(batch over {split.get('batch')}, length over {split.get('seq_len')})") from None
    # The arrays the objective's batches hold (denoising: encoder and decoder sides, each [batch, seq_len]).
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding)
             for k in objectives.batch_keys(objective)}
    key = jax.eval_shape(lambda: jax.random.key(config.seed, impl=config.rng_impl))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(device_mesh, PartitionSpec()))
    index_rows = None
    if getattr(objective, "uses_index", False):
        module, objective, state, shardings, batch, batch_sharding, context = _retrieval_shapes(
            config, module, objective, state, shardings, device_mesh, batch_sharding)
        index_rows = int(state.index.shape[0])
        train_step = step_lib.make_train_step(module, objective, tx, schedule, shardings, batch_sharding,
                                              grad_accum_steps=config.grad_accum_steps,
                                              context_sharding=jax.tree.map(lambda x: x.sharding, context))
        args = (state, batch, key, context)
    else:
        train_step = step_lib.make_train_step(module, objective, tx, schedule, shardings, batch_sharding,
                                              grad_accum_steps=config.grad_accum_steps)
        args = (state, batch, key)

    started = time.perf_counter()
    with partitioning.activate(device_mesh, rules):  # jit traces here: the logical constraints need the mesh
        lowered = train_step.lower(*args)
    compiler_error = None
    try:
        memory = _memory(lowered.compile().memory_analysis())
    except jax.errors.JaxRuntimeError as error:
        # Out of HBM. (Compiling anyway with `xla_tpu_no_crash_on_oom` ends in "Invalid TPU program" for a
        # step this size, after as long again: not worth the wait.)
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        compiler_error = str(error).strip()
        memory = _memory_without_program(compiler_error, state, batch)
    seconds = time.perf_counter() - started
    hbm = int(topology.chip.hbm_gib * 2**30)
    params = state_lib.count_params(state.params)
    return {
        "topology": topology.name,
        "device_kind": topology.chip.device_kind,
        "chips": topology.num_chips,
        "hbm_per_chip": hbm,
        "model": type(module).__name__,
        "params": params,
        "mesh": {str(k): int(v) for k, v in device_mesh.shape.items()},
        "batch_size": config.batch_size,
        "rows_per_chip": rows_per_chip,
        "seq_len": config.seq_len,
        "grad_accum_steps": config.grad_accum_steps,
        "dtype": config.dtype,
        "remat": bool(config.remat),
        "optimizer": config.optimizer,
        "per_chip": memory,
        "fits": compiler_error is None and memory["total"] <= hbm,
        "measured": compiler_error is None,
        "compiler_error": compiler_error,
        "compile_seconds": round(seconds, 1),
        **({} if index_rows is None else {"index_rows": index_rows}),
    }


def _retrieval_shapes(config, module, objective, state, shardings, mesh, batch_sharding):
    """A retrieval objective's step arguments as shapes: the state with its index (``num_block_records`` rows of
    ``retriever_proj_size``, split over ``objective.index_axis``), the block store's tokens (``data.block_tokens``
    per block, split the same way) and its batch (``objective.batch_shapes``)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from jaxmodels import registry
    from layers.retrieval import RowSharding
    from train.state import IndexedTrainState

    axis = objective.index_axis
    if axis not in mesh.axis_names:
        raise ValueError(f"config.objective.index_axis={axis!r}: not an axis of the mesh {dict(mesh.shape)}")
    shards = int(mesh.shape[axis])
    c = module.config
    BlockTokens = registry.of_config(c).block_store.token_class  # noqa: N806
    rows = -(-c.num_block_records // shards) * shards
    if shards > 1:
        objective = dataclasses.replace(objective, index_mesh=mesh)
        if hasattr(module, "index_sharding"):
            module = module.clone(index_sharding=RowSharding(mesh, axis))
    index_sharding, row_sharding = NamedSharding(mesh, P(axis, None)), NamedSharding(mesh, P(axis))
    state = IndexedTrainState(
        step=state.step, params=state.params, opt_state=state.opt_state,
        index=jax.ShapeDtypeStruct((rows, c.retriever_proj_size), jnp.float32, sharding=index_sharding),
        index_step=state.step)
    shardings = IndexedTrainState(step=shardings.step, params=shardings.params, opt_state=shardings.opt_state,
                                  index=index_sharding, index_step=shardings.step)
    blocks = BlockTokens(
        jax.ShapeDtypeStruct((rows, config.data.block_tokens), jnp.uint16, sharding=index_sharding),
        jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=row_sharding),
        cls_token_id=2, sep_token_id=3, pad_token_id=0, special_ids=(0, 1, 2, 3, 4))
    batch_sharding = NamedSharding(mesh, P(batch_sharding.spec[0]))
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding)
             for k, shape in objective.batch_shapes(config.batch_size, config.seq_len).items()}
    return module, objective, state, shardings, batch, batch_sharding, {"blocks": blocks}


def _gib(n: int | None) -> str:
    return "     n/a" if n is None else f"{n / 2**30:8.3f}"


def format_report(report: dict[str, Any], title: str = "") -> str:
    """The table `python -m train.aot` prints."""
    m, hbm = report["per_chip"], report["hbm_per_chip"]
    mesh = ",".join(f"{k}={v}" for k, v in report["mesh"].items())
    how = "compiled" if report["measured"] else "refused by the compiler"
    share = "" if m["total"] is None else f" ({100 * m['total'] / hbm:.0f}%)"
    lines = [
        (f"{title + ': ' if title else ''}{report['model']} ({report['params'] / 1e6:.1f}M params), "
         f"{report['optimizer']}, {report['dtype']}{', remat' if report['remat'] else ''}"),
        (f"{report['topology']}: {report['chips']} x {report['device_kind']} ({hbm / 2**30:g} GiB HBM each), "
         f"mesh {mesh}"),
        f"batch {report['batch_size']} x {report['seq_len']}"
        + (f" in {report['grad_accum_steps']} micro-batches" if report["grad_accum_steps"] > 1 else "")
        + f" ({report['rows_per_chip']} rows per chip); {how} in {report['compile_seconds']:.0f}s",
        "",
        "per chip          GiB" + ("" if report["measured"] else "   (buffers from the shapes, total from the compiler)"),
        f"  arguments  {_gib(m['arguments'])}   params, optimizer state, batch shard",
        f"  outputs    {_gib(m['outputs'])}   new state, metrics",
        f"  alias      {_gib(m['alias'])}   outputs written into the donated arguments",
        f"  temp       {_gib(m['temp'])}   activations, gradients, workspace",
        f"  code       {_gib(m['code'])}",
        f"  total      {_gib(m['total'])}   of {hbm / 2**30:g} GiB{share}",
        "",
        f"fits: {'yes' if report['fits'] else 'NO'}",
    ]
    if report.get("compiler_error"):
        lines.append(f"compiler: {report['compiler_error']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------
def _flags(argv: list[str]):
    """This command's flags, on their own FlagValues (the trainer's CLI keeps the global ones); the
    `--config.<key>=` overrides are found in `argv`."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Experiment config file (a get_config() module); "
                                    "--config.<key>=<value> overrides as for `python -m train`.",
                                    flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("topology", None, "TPU slice to compile for: v5e:4x4, v6e:2x2, v4:2x2x1, v5p:2x2x1, "
                        "or a slice name such as v5e-16 / v4-8.", flag_values=values)
    flags.DEFINE_string("mesh", None, "Replaces config.mesh, e.g. data=-1,fsdp=4.", flag_values=values)
    flags.DEFINE_integer("batch_size", None, "Replaces config.batch_size (the global batch).", flag_values=values)
    flags.DEFINE_bool("json", False, "Print the report as one JSON object instead of the table.",
                      flag_values=values)
    return values


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    # Before jax starts: compile on this machine's CPU client; the TPU is only a compile target.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import flags
    from ml_collections import config_flags

    from train.__main__ import check_override_keys

    values = _flags(argv)
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(__doc__.strip() + "\n\n" + values.get_help())
        return 0
    error = check_override_keys(argv[1:]) if any(a.startswith("--config.") for a in argv[1:]) else None
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        rest = values(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(rest) > 1:
        print(f"error: unexpected arguments: {rest[1:]}", file=sys.stderr)
        return 2
    if values["config"].value is None or not values.topology:
        print("error: give --config=configs/<name>.py and --topology (e.g. v5e:4x4)", file=sys.stderr)
        return 2
    try:
        report = compile_train_step(values["config"].value, values.topology, mesh=values.mesh,
                                    batch_size=values.batch_size)
    except ValueError as error:  # TopologyError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    if values.json:
        print(json.dumps(report))
    else:
        print(format_report(report, title=os.path.basename(config_flags.get_config_filename(values["config"]))))
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
