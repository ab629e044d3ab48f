"""train.distributed: flag checks and cluster detection (the two-process run itself is tests/scale)."""

import pytest

from train import distributed


@pytest.mark.parametrize("flags,message", [
    (("localhost:1234", 2, None), "--process_id: required with --coordinator_address, --num_processes"),
    ((None, 2, 0), "--coordinator_address: required"),
    (("localhost", 2, 0), "--coordinator_address='localhost': expected HOST:PORT"),
    (("localhost:1234", 0, 0), "--num_processes=0: must be >= 1"),
    (("localhost:1234", 2, 2), r"--process_id=2: must be in \[0, --num_processes=2\)"),
])
def test_bad_flags_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        distributed.check_flags(*flags)


def test_complete_or_absent_flags_pass():
    distributed.check_flags(None, None, None)
    distributed.check_flags("10.0.0.1:8476", 4, 3)


@pytest.mark.parametrize("environ,tpu_vm,expected", [
    ({}, False, None),
    ({}, True, "Cloud TPU VM"),
    ({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"}, False, "Slurm"),
    ({"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, False, None),   # one task: a plain process
    ({"SLURM_NTASKS": "4"}, False, None),                                  # sbatch script, not inside srun
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "8"}, False, "Open MPI"),
])
def test_cluster_detection(environ, tpu_vm, expected):
    assert distributed.detect_cluster(environ, tpu_vm=tpu_vm) == expected


def test_single_process_helpers_are_no_ops():
    if distributed.detect_cluster() is None:  # (on a TPU VM it would start jax.distributed for real)
        assert distributed.initialize() == "single process"
    assert distributed.initialize("localhost:1234", 1, 0) == "single process"
    assert distributed.allgather_json({"a": [1, 2]}) == [{"a": [1, 2]}]
    with distributed.primary_first():
        pass
    assert distributed.is_primary()
