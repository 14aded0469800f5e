"""Shell lines of external programs: site command, environment, time limit, lock, exit status."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cagoflow.apps.commands import (
    NOT_STARTED,
    BlockEnding,
    check_started,
    exit_status,
    program_line,
    resource_specification,
    shell_command,
    time_limit,
)
from cagoflow.config import SiteConfig, default_site


def slurm_site(**engines) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "name": "cluster",
            "executors": {
                "gpu": {"kind": "htex_slurm", "provider": {"partition": "gpu", "walltime": "01:00:00"}},
                "cpu": {"kind": "htex_slurm", "provider": {"partition": "cpu", "walltime": "00:30:00"}},
            },
            "stages": {"default": "cpu", "train": "gpu"},
            "engines": engines,
        }
    )


def test_site_command_environment_and_binding():
    site = slurm_site(cp2k={"command": "srun -n 16 cp2k.psmp", "threads": 4, "env": {"FOO": "bar baz"}})
    line = program_line(["cp2k.psmp", "-i", "cp2k.inp", "-o", "cp2k.out"], site, False)
    assert line == "env OMP_NUM_THREADS=4 FOO='bar baz' OMP_PROC_BIND=close srun --cpu-bind=cores -n 16 cp2k.psmp -i cp2k.inp -o cp2k.out"


def test_mpi_prefix_stays_shell_text_and_setup_comes_first():
    site = slurm_site(cp2k={"command": "$PARSL_MPI_PREFIX cp2k.psmp", "setup": "module load cp2k", "cpu_bind": None})
    line = program_line(["cp2k.psmp", "-i", "in"], site, True)
    assert line.startswith("module load cp2k\n")
    assert 'timeout --kill-after=30 "$limit" $PARSL_MPI_PREFIX cp2k.psmp -i in' in line


def test_unknown_programs_run_as_they_are():
    assert program_line(["python", "-m", "x", "a b"], default_site(), False) == "python -m x 'a b'"


def test_time_limit_from_the_block_walltime():
    site = slurm_site()
    assert time_limit(site, "train") == 3600 - 120
    assert time_limit(site, "reference") == 1800 - 120
    assert time_limit(default_site(), "train") is None


def test_shell_command_records_the_exit_status_and_log(tmp_path):
    line = shell_command(tmp_path, [["sh", "-c", "echo hello"], ["sh", "-c", "exit 3"], ["sh", "-c", "echo never"]], default_site(), "train", "run.log")
    assert subprocess.run(line, shell=True).returncode == 0  # a failure is data, not an exception
    assert exit_status(tmp_path) == 3
    assert (tmp_path / "run.log").read_text() == "hello\n"
    assert exit_status(tmp_path / "missing") == 1


def test_time_limit_applies_and_a_short_job_starts_nothing(tmp_path):
    line = shell_command(tmp_path, [["sleep", "5"]], slurm_site(), "train", "run.log")
    fast = subprocess.run(line.replace("limit=3480", "limit=1"), shell=True, executable="/bin/bash")
    assert fast.returncode == 0 and exit_status(tmp_path) == 124  # timeout's status: killed at the limit
    squeue = tmp_path / "bin" / "squeue"
    squeue.parent.mkdir()
    squeue.write_text("#!/bin/sh\necho 4:10\n")  # a job with 4 min 10 s left
    squeue.chmod(0o755)
    environment = {"PATH": f"{squeue.parent}:/usr/bin:/bin", "SLURM_JOB_ID": "7"}
    subprocess.run(line, shell=True, executable="/bin/bash", env=environment)
    assert exit_status(tmp_path) == NOT_STARTED
    with pytest.raises(BlockEnding):
        check_started(tmp_path)


def mpi_site(**cp2k) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "executors": {
                "cpu": {"kind": "threads"},
                "cp2k": {"kind": "mpi", "provider": {"partition": "cpu", "walltime": "02:00:00", "nodes_per_block": 4}},
            },
            "stages": {"default": "cpu", "reference": "cp2k"},
            "engines": {"cp2k": cp2k},
        }
    )


def test_mpi_executor_gets_nodes_ranks_and_binding_per_calculation():
    site = mpi_site(ranks=64, nodes=2, threads=2)
    assert resource_specification(site, "reference", "cp2k.psmp") == {
        "num_nodes": 2, "num_ranks": 64, "ranks_per_node": 32, "launcher_options": "--cpu-bind=cores",
    }  # fmt: skip
    command = shell_command(Path("/scratch/task"), [["cp2k.psmp", "-i", "in"]], site, "reference", "engine.log")
    assert "env OMP_NUM_THREADS=2 OMP_PROC_BIND=close timeout --kill-after=30 \"$limit\" $PARSL_MPI_PREFIX cp2k.psmp -i in" in command
    assert resource_specification(site, "train", "dp") is None  # threads take no specification
    assert resource_specification(slurm_site(), "reference", "cp2k.psmp") is None


def test_mpi_executor_runs_only_the_program_its_python_parts_go_to_the_default():
    site = mpi_site()
    assert site.executor_for("reference") == "cp2k"
    assert site.python_executor_for("reference") == "cpu"
    assert site.python_executor_for("train") == "cpu"


def test_mpi_executor_refuses_python_stages_and_uneven_ranks():
    with pytest.raises(ValueError, match="stage 'calibrate' runs Python on executor 'cp2k' of kind 'mpi'"):
        SiteConfig.model_validate(
            {"executors": {"cpu": {"kind": "threads"}, "cp2k": {"kind": "mpi"}}, "stages": {"default": "cp2k", "train": "cpu"}}
        )
    with pytest.raises(ValueError, match="ranks 10 do not divide evenly over nodes 3"):
        mpi_site(ranks=10, nodes=3)
