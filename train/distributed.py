"""Multi-process runs: starting `jax.distributed`, and the few host-side exchanges the trainer needs.

    initialize(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=0)  # explicit
    initialize()                       # TPU pod slice / Slurm / Open MPI: the cluster is detected; else no-op
    with primary_first():              # process 0 builds caches (tokenizer, TFDS files); the others then reuse
        path = build_tokenizer(...)
    states = allgather_json(local_state)   # [state of process 0, state of process 1, ...] on every process

Every process runs the same program on its own devices; arrays spanning processes are assembled with
`jax.make_array_from_process_local_data`. On CPU, cross-process collectives go through gloo (JAX's default).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np


def detect_cluster(environ: Mapping[str, str] | None = None, tpu_vm: bool | None = None) -> str | None:
    """The kind of multi-process launch this process belongs to, or None for a plain single process.

    A Cloud TPU VM (a TPU chip under /dev) always goes through `jax.distributed.initialize()`: jax then
    reads the pod slice's workers from the metadata server (a single-host VM is a one-process cluster).
    Under Slurm (`srun`) and Open MPI (`mpirun`) it is the launcher's environment, with more than one task.
    """
    environ = os.environ if environ is None else environ
    if tpu_vm is None:
        tpu_vm = os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
    if tpu_vm:
        return "Cloud TPU VM"
    if "SLURM_STEP_NODELIST" in environ and environ.get("SLURM_NTASKS", "1").isdigit() \
            and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return "Slurm"
    if "OMPI_MCA_orte_hnp_uri" in environ and environ.get("OMPI_COMM_WORLD_SIZE", "1").isdigit() \
            and int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    return None


def check_flags(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`ValueError` naming the flag when the explicit multi-process flags are incomplete or inconsistent."""
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    if all(v is None for v in given.values()):
        return
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"{missing[0]}: required with {', '.join(k for k in given if k not in missing)} "
                         "(give all three, or none to auto-detect a TPU pod / Slurm cluster)")
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")
    if num_processes < 1:
        raise ValueError(f"--num_processes={num_processes}: must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id}: must be in [0, --num_processes={num_processes})")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
    """Starts `jax.distributed` when the run has several processes; returns how ("explicit", the detected
    cluster's name, or "single process"). Must run before anything touches a jax device."""
    check_flags(coordinator_address, num_processes, process_id)
    if coordinator_address is not None:
        if num_processes == 1:
            return "single process"
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
        return "explicit"
    cluster = detect_cluster()
    if cluster is not None:
        jax.distributed.initialize()  # jax's own cluster detection reads the same environment
        return cluster
    return "single process"


def is_primary() -> bool:
    """Whether this process writes the run's logs and metrics (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def primary_first(name: str = "primary_first"):
    """Runs the body on process 0 first and on the others after it: for building shared on-disk caches
    (a tokenizer, a TFDS dataset) once instead of racing on the same files."""
    if not is_primary():
        barrier(name)
    yield
    if is_primary():
        barrier(name)


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([encoded.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:encoded.size] = encoded
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(gathered, lengths)]


def merge_data_states(states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One `ShardedBatches` state holding every process's shards (what a checkpoint stores)."""
    merged: dict[str, Any] = {"num_shards": states[0]["num_shards"], "shards": {}}
    for state in states:
        merged["shards"].update(state["shards"])
    return merged


__all__ = ["allgather_json", "barrier", "check_flags", "detect_cluster", "initialize", "is_primary",
           "merge_data_states", "primary_first"]
