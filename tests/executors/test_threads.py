"""Threads per task: derived from the site-config (cagoflow.executors.site: ExecutorConfig.worker_cores,
task_threads; SiteConfig.program_threads, python_threads), and python apps that really run with
them on a Parsl thread pool and on a local HighThroughputExecutor (cagoflow.apps.with_threads)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import parsl
import pytest
import torch
from parsl import python_app

from cagoflow.apps import with_threads
from cagoflow.apps.commands import thread_environment
from cagoflow.executors.site import ExecutorConfig, SiteConfig, load_site, machine_cores
from cagoflow.executors.parsl_config import build_config

SITES = Path(__file__).resolve().parents[2] / "site-configs"


def executor(**settings) -> ExecutorConfig:
    return ExecutorConfig.model_validate(settings)


def slurm(**provider) -> dict:
    return {"partition": "p", **provider}


@pytest.mark.parametrize(
    ("settings", "machine", "cores", "threads"),
    [
        ({"kind": "threads", "max_workers": 2}, 16, 8, 8),
        ({"kind": "threads"}, 16, 8, 8),  # Parsl's default pool: 2 threads
        ({"kind": "threads", "max_workers": 4}, 2, 0, 1),  # more workers than cores: still one thread
        ({"kind": "htex_local", "max_workers": 4}, 16, 4, 4),
        ({"kind": "htex_local", "cores_per_worker": 3}, 16, 3, 3),  # 5 workers, one core left over
        ({"kind": "htex_local", "available_accelerators": 2}, 16, 8, 8),  # one worker per accelerator
        ({"kind": "htex_local", "cores_per_worker": 0.5}, 2, 0, 1),
        ({"kind": "htex_slurm", "available_accelerators": 4, "cores_per_worker": 8,
          "provider": slurm(cores_per_node=32)}, 2, 8, 8),
        ({"kind": "htex_slurm", "max_workers": 8, "provider": slurm(cores_per_node=8)}, 2, 1, 1),
        ({"kind": "htex_slurm", "max_workers": 2, "provider": slurm(cores_per_node=16)}, 2, 8, 8),
        ({"kind": "htex_slurm", "cores_per_worker": 7, "provider": slurm()}, 2, 7, 7),  # cores per node unknown
        ({"kind": "mpi", "provider": slurm(cores_per_node=128)}, 2, 128, 128),
        ({"kind": "mpi", "provider": slurm()}, 2, None, 1),  # unknown: the ranks fill the node
        ({"kind": "mpi", "max_workers": 2}, 16, 8, 8),  # on this machine, 2 calculations at once
    ],
)  # fmt: skip
def test_worker_share_from_the_executor(settings: dict, machine: int, cores: int | None, threads: int) -> None:
    config = executor(**settings)
    assert config.worker_cores(machine) == cores
    assert config.task_threads(machine=machine) == threads


def test_ranks_share_the_cores_of_a_node() -> None:
    node = executor(kind="mpi", provider=slurm(cores_per_node=128))
    assert node.task_threads(ranks_per_node=32) == 4
    assert node.task_threads(ranks_per_node=256) == 1


def test_default_share_is_this_machines_cores_per_worker() -> None:
    assert executor(kind="threads", max_workers=1).worker_cores() == machine_cores() >= 1


def mpi_site(**cp2k) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "executors": {
                "cpu": {"kind": "htex_slurm", "max_workers": 4, "provider": slurm(cores_per_node=16)},
                "cp2k": {"kind": "mpi", "provider": slurm(cores_per_node=128, nodes_per_block=4)},
            },
            "stages": {"default": "cpu", "reference": "cp2k"},
            "engines": {"cp2k": cp2k},
        }
    )


def test_program_threads_per_rank_and_the_engine_override() -> None:
    site = mpi_site(ranks=64, nodes=2)
    assert site.program_threads("reference", site.engines.cp2k) == 4  # 128 cores / 32 ranks per node
    assert site.program_threads("train", site.engines.deepmd) == 4  # 16 cores / 4 workers
    assert site.program_threads("train") == 4  # a program that is no engine
    pinned = mpi_site(ranks=64, nodes=2, threads=1)
    assert pinned.program_threads("reference", pinned.engines.cp2k) == 1
    assert mpi_site(ranks=256).program_threads("reference", mpi_site(ranks=256).engines.cp2k) == 1  # at least 1


def test_python_parts_of_an_mpi_stage_get_the_share_of_their_own_executor() -> None:
    site = mpi_site(ranks=64, nodes=2)
    assert site.python_threads("reference") == 4  # run on 'cpu', not on the 128-core MPI nodes


def test_engine_threads_default_to_derived() -> None:
    site = SiteConfig.model_validate({"executors": {"local": {"kind": "threads"}}})
    assert site.engines.deepmd.threads is None and site.engines.cp2k.threads is None
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        SiteConfig.model_validate({"executors": {"local": {"kind": "threads"}}, "engines": {"lammps": {"threads": 0}}})


@pytest.mark.parametrize(
    ("name", "stage", "threads"),
    [
        ("slurm-generic", "train", 8),  # 32 cores / 4 GPU workers
        ("slurm-generic", "calibrate", 1),  # 8 cores / 8 workers
        ("saga", "cago", 6),  # 24 cores / 4 GPU workers
        ("lumi", "train", 7),  # cores_per_worker (cores per node not given)
        ("lumi", "calibrate", 1),  # 4 cores / 4 workers
        ("ci-slurm", "train", 1),
    ],
)
def test_shipped_sites(name: str, stage: str, threads: int) -> None:
    site = load_site(SITES / f"{name}.yaml")
    assert site.python_threads(stage) == threads
    assert site.program_threads(stage, site.engines.deepmd) == threads


def test_shipped_cp2k_settings() -> None:
    generic, saga = load_site(SITES / "slurm-generic.yaml"), load_site(SITES / "saga.yaml")
    assert generic.program_threads("reference", generic.engines.cp2k) == 2  # 64 ranks × 2 threads
    assert saga.program_threads("reference", saga.engines.cp2k) == 1  # 40 ranks on 40 cores


# ---------------------------------------------------------------------------------------------
# Real python apps
# ---------------------------------------------------------------------------------------------

PROBE = """
def probe():
    import os
    import torch
    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), os.getpid()
"""


def _probe():
    """``probe`` compiled in a namespace named ``__main__``: Parsl's serialiser (dill) sends it by
    value, so HTEX workers that cannot import this test module can run it."""
    namespace: dict = {"__name__": "__main__"}
    exec(textwrap.dedent(PROBE), namespace)
    return namespace["probe"]


@contextmanager
def _loaded(site: SiteConfig, run_dir: Path) -> Iterator[None]:
    parsl.load(build_config(site, run_dir))
    try:
        yield
    finally:
        parsl.dfk().cleanup()
        parsl.clear()


@pytest.fixture
def restored_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Thread pools run tasks in this process: its torch threads and thread variables come back."""
    for name in thread_environment(1):
        monkeypatch.delenv(name, raising=False)  # and restored after the test
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("restored_threads")
def test_python_app_on_a_thread_pool_runs_with_the_derived_threads(tmp_path: Path) -> None:
    site = SiteConfig.model_validate({"executors": {"local": {"kind": "threads", "max_workers": 4}}})
    threads = site.python_threads("cago")
    app = python_app(with_threads(_probe(), threads, "probe"), executors=["local"])
    with _loaded(site, tmp_path / "runinfo"):
        results = [future.result(timeout=60) for future in [app() for _ in range(4)]]
    assert {result[:2] for result in results} == {(threads, str(threads))}


@pytest.mark.slow
def test_python_app_on_a_local_htex_runs_with_the_derived_threads(tmp_path: Path) -> None:
    site = SiteConfig.model_validate({"executors": {"local": {"kind": "htex_local", "max_workers": 2}}})
    threads = site.python_threads("md")
    app = python_app(with_threads(_probe(), threads, "probe"), executors=["local"])
    with _loaded(site, tmp_path / "runinfo"):
        result = app().result(timeout=120)
    assert result[:2] == (threads, str(threads))
    assert threads == max(1, machine_cores() // min(2, machine_cores()))
