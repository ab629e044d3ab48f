"""train.aot: the train step compiled for a TPU slice on this CPU machine, and its per-chip memory report.

Needs libtpu (the `[tpu]` extra); skipped without it. The tiny config compiles in seconds.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu")

from train import aot

# Its module-scoped fixture is costly: every test of the module on one pytest-xdist worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("test_aot")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny_albert_mlm.py")
TOPOLOGY = "v5e:2x2"


def tiny_config():
    from train.experiment import load_config

    config = load_config(TINY)
    config.batch_size = 32
    return config


@pytest.fixture(scope="module")
def data_parallel():
    return aot.compile_train_step(tiny_config(), TOPOLOGY, mesh="data=-1")


def test_report_is_per_chip_and_consistent(data_parallel):
    report = data_parallel
    assert report["topology"] == "v5e:2x2" and report["chips"] == 4
    assert report["device_kind"] == "TPU v5 lite" and report["hbm_per_chip"] == 16 * 2**30
    assert report["mesh"]["data"] == 4 and report["rows_per_chip"] == 8
    memory = report["per_chip"]
    for field in ("arguments", "outputs", "alias", "total"):
        assert memory[field] > 0, field
    assert memory["temp"] >= 0
    assert report["measured"] and report["compiler_error"] is None
    # The new state is written into the donated old one, so the alias is (nearly) the whole state.
    assert memory["alias"] <= min(memory["arguments"], memory["outputs"])
    assert memory["total"] >= memory["temp"]
    assert memory["total"] >= memory["arguments"] + memory["outputs"] - memory["alias"] + memory["temp"]
    assert report["fits"] is True
    assert "fits: yes" in aot.format_report(report)
    json.dumps(report)  # what --json prints


def test_mesh_is_honoured_fsdp_shards_the_state(data_parallel, capsys):
    """Through the command line's main (flags and --config overrides): fsdp=4 splits params and moments 4 ways,
    so a chip holds fewer argument bytes than under pure data parallelism, where each chip holds all of them."""
    code = aot.main(["aot", f"--config={TINY}", "--topology", TOPOLOGY, "--mesh", "fsdp=4",
                     "--config.batch_size=32", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["fits"]
    assert report["mesh"]["fsdp"] == 4 and report["mesh"]["data"] == 1 and report["rows_per_chip"] == 8
    assert report["per_chip"]["arguments"] < data_parallel["per_chip"]["arguments"]


def test_command_in_a_fresh_process_is_quiet_and_names_the_bad_flag():
    """libtpu initialises (the mesh is checked against the slice's devices) without its metadata-server
    complaints, and a mesh that does not match the slice exits 2 naming the key; nothing is compiled."""
    result = subprocess.run(
        [sys.executable, "-m", "train.aot", f"--config={TINY}", "--topology", TOPOLOGY, "--mesh", "data=3"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300,
        check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config.mesh='data=3': needs 3 devices, there are 4"


def test_gradient_accumulation_lowers_the_per_chip_peak(data_parallel):
    """Four micro-batches: each scan step sees a quarter of every chip's rows (train.step splits the batch
    strided, so the micro-batches stay sharded like the batch)."""
    config = tiny_config()
    config.grad_accum_steps = 4
    report = aot.compile_train_step(config, TOPOLOGY, mesh="data=-1")
    assert report["per_chip"]["arguments"] == data_parallel["per_chip"]["arguments"]
    assert report["per_chip"]["total"] < 0.7 * data_parallel["per_chip"]["total"]


def test_unknown_topology_names_the_flag_and_the_known_names(capsys):
    with pytest.raises(aot.TopologyError, match=r"--topology='v9:2x2'.*v5e:4x4.*v4-N for N in \[8, 16"):
        aot.parse_topology("v9:2x2")
    assert aot.main(["aot", f"--config={TINY}", "--topology=tpu-huge"]) == 2
    err = capsys.readouterr().err
    assert "--topology='tpu-huge'" in err and "v5e:AxB" in err and "v5litepod-N" in err


@pytest.mark.parametrize("name, expected", [
    ("v5e:4x4", "v5e:4x4"), ("v5e-16", "v5e:4x4"), ("v5litepod-16", "v5e:4x4"), ("v4-8", "v4:2x2x1"),
    ("v5p-8", "v5p:2x2x1"), ("v6e-4", "v6e:2x2"), ("V4:2x2x2", "v4:2x2x2"),
])
def test_topology_names(name, expected):
    assert aot.parse_topology(name).name == expected


@pytest.mark.parametrize("name", ["v5e:2x2x1", "v4:2x2", "v5e-12", "v4-9", "v5e:0x2", ""])
def test_malformed_topologies(name):
    with pytest.raises(aot.TopologyError, match="--topology="):
        aot.parse_topology(name)


def test_batch_that_does_not_split_over_the_mesh_names_the_key():
    config = tiny_config()
    config.batch_size = 6
    with pytest.raises(ValueError, match=r"config.batch_size=6"):
        aot.compile_train_step(config, TOPOLOGY, mesh="data=4")


def test_out_of_memory_report_takes_the_total_from_the_compiler(data_parallel):
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(jax.devices()[:1], ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    state = {"w": jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=replicated)}
    batch = {"inputs": jax.ShapeDtypeStruct((8, 128), jnp.int32, sharding=replicated)}
    error = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
             "(24.63G) exceeds available HBM (15.75G).")
    memory = aot._memory_without_program(error, state, batch)
    assert memory["arguments"] == 1024 * 256 * 4 + 8 * 128 * 4
    assert memory["outputs"] == memory["alias"] == 1024 * 256 * 4
    assert memory["total"] == int(24.63 * 2**30) and memory["temp"] is None
    report = {**data_parallel, "per_chip": memory, "fits": False, "measured": False, "compiler_error": error}
    text = aot.format_report(report)
    assert "fits: NO" in text and "n/a" in text and "24.630" in text and "(15.75G)" in text
