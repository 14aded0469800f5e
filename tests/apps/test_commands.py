"""Shell lines of external programs: site command, environment, time limit, lock, exit status."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cagoflow.apps.commands import (
    NOT_STARTED,
    BlockEnding,
    check_started,
    exit_status,
    program_line,
    program_seconds,
    resource_specification,
    shell_command,
    time_limit,
)
from cagoflow.executors.site import SiteConfig, default_site
from real_components import require_module


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


def threads_of(threads: int, loaders: int | None = None) -> str:
    """The thread variables of a shell line for ``threads`` threads (``loaders``: DeePMD's NUM_WORKERS)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS")
    words = [f"{name}={threads}" for name in names] + ["DP_INTER_OP_PARALLELISM_THREADS=1"]
    return " ".join(words + ([f"NUM_WORKERS={loaders}"] if loaders is not None else []))


def test_site_command_environment_and_binding():
    site = slurm_site(cp2k={"command": "srun -n 16 cp2k.psmp", "threads": 4, "env": {"FOO": "bar baz"}})
    line = program_line(["cp2k.psmp", "-i", "cp2k.inp", "-o", "cp2k.out"], site, "reference", False)
    assert line == (
        f"env {threads_of(4)} OMP_PROC_BIND=close FOO='bar baz' srun --cpu-bind=cores -n 16 cp2k.psmp -i cp2k.inp -o cp2k.out"
    )


def test_mpi_prefix_stays_shell_text_and_setup_comes_first():
    site = slurm_site(cp2k={"command": "$PARSL_MPI_PREFIX cp2k.psmp", "setup": "module load cp2k", "cpu_bind": None})
    line = program_line(["cp2k.psmp", "-i", "in"], site, "reference", True)
    assert line.startswith("module load cp2k\n")
    assert 'timeout --kill-after=30 "$limit" $PARSL_MPI_PREFIX cp2k.psmp -i in' in line


def test_unknown_programs_run_as_they_are_with_the_stage_threads():
    site = default_site()
    threads = site.executors["local"].task_threads()
    assert program_line(["python", "-m", "x", "a b"], site, "train", False) == f"env {threads_of(threads)} python -m x 'a b'"


def gpu_cpu_site(**engines) -> SiteConfig:
    """4 GPU workers on 32-core nodes (8 cores each), 8 workers on 8-core CPU nodes (1 core each)."""
    return SiteConfig.model_validate(
        {
            "executors": {
                "gpu": {"kind": "htex_slurm", "available_accelerators": 4, "cores_per_worker": 8,
                        "provider": {"partition": "gpu", "cores_per_node": 32, "gpus_per_node": 4}},
                "cpu": {"kind": "htex_slurm", "max_workers": 8, "provider": {"partition": "cpu", "cores_per_node": 8}},
            },
            "stages": {"default": "cpu", "train": "gpu", "md": "gpu"},
            "engines": engines,
        }
    )  # fmt: skip


def test_programs_get_the_threads_of_their_workers_share():
    site = gpu_cpu_site()
    train = program_line(["dp", "--pt", "train", "input.json"], site, "train", False)
    assert train == f"env {threads_of(8, loaders=4)} dp --pt train input.json"
    assert program_line(["nequip-train", "-cn", "config.yaml"], site, "train", False).startswith(f"env {threads_of(8)} nequip-train")
    assert program_line(["lmp", "-in", "in.lammps"], site, "md", False).startswith(f"env {threads_of(8)} lmp")
    cp2k = program_line(["cp2k.psmp", "-i", "in"], site, "reference", False)
    assert cp2k == f"env {threads_of(1)} OMP_PROC_BIND=close cp2k.psmp -i in"
    two_ranks = program_line(["cp2k.psmp", "-i", "in"], gpu_cpu_site(cp2k={"ranks": 2}), "train", False)
    assert two_ranks.startswith(f"env {threads_of(4)} OMP_PROC_BIND=close")  # 8 cores / 2 ranks


def test_engine_threads_and_site_env_win_over_derived_values():
    site = gpu_cpu_site(deepmd={"threads": 3, "env": {"NUM_WORKERS": "0", "OMP_NUM_THREADS": "2"}})
    line = program_line(["dp", "--pt", "train", "input.json"], site, "train", False)
    assert line == (
        "env OMP_NUM_THREADS=2 MKL_NUM_THREADS=3 OPENBLAS_NUM_THREADS=3 DP_INTRA_OP_PARALLELISM_THREADS=3 "
        "DP_INTER_OP_PARALLELISM_THREADS=1 NUM_WORKERS=0 dp --pt train input.json"
    )


def test_a_program_found_by_its_path_is_the_site_engine():
    site = gpu_cpu_site(deepmd={"setup": "module load deepmd"})
    line = program_line(["/opt/venv/bin/dp", "--pt", "freeze"], site, "train", False)
    assert line == f"module load deepmd\nenv {threads_of(8, loaders=4)} /opt/venv/bin/dp --pt freeze"
    wrapped = program_line(["/opt/venv/bin/dp", "--pt", "freeze"], gpu_cpu_site(deepmd={"command": "srun dp"}), "train", False)
    assert wrapped.endswith(" srun dp --pt freeze")


PROBE = (
    "import deepmd.pt.utils.env as env, torch; "
    "print('probe', env.NUM_WORKERS, torch.get_num_threads(), torch.get_num_interop_threads())"
)


@pytest.mark.slow
def test_deepmd_reads_the_thread_variables_of_its_shell_line(tmp_path):
    """DeePMD-kit's own settings module, started by the campaign's shell line, takes its torch
    threads, inter-op threads and DataLoader workers from the derived variables."""
    require_module("deepmd")
    site = SiteConfig.model_validate(
        {"executors": {"local": {"kind": "threads", "max_workers": 2}},
         "engines": {"deepmd": {"command": f"{shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}"}}}
    )  # fmt: skip
    line = shell_command(tmp_path, [["dp", "--pt", "train", "input.json"]], site, "train", "train.log")
    environment = {key: value for key, value in os.environ.items() if not key.endswith("_THREADS") and key != "NUM_WORKERS"}
    subprocess.run(line, shell=True, env=environment, check=True)
    threads = site.program_threads("train", site.engines.deepmd)
    assert exit_status(tmp_path) == 0, (tmp_path / "train.log").read_text()
    (probe,) = (line for line in (tmp_path / "train.log").read_text().splitlines() if line.startswith("probe "))
    assert probe == f"probe {min(4, threads)} {threads} 1"


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


def test_shell_command_records_the_programs_wall_time(tmp_path):
    line = shell_command(tmp_path, [["sleep", "0.3"], ["sleep", "0.2"]], default_site(), "train", "run.log")
    subprocess.run(line, shell=True, check=True)
    assert 0.5 <= program_seconds(tmp_path) < 3.0
    assert program_seconds(tmp_path / "missing") == 0.0


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
    assert f"env {threads_of(2)} OMP_PROC_BIND=close timeout --kill-after=30 \"$limit\" $PARSL_MPI_PREFIX cp2k.psmp -i in" in command
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
