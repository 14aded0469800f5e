"""Reference programs through Parsl's MPIExecutor on the real one-node SLURM cluster: the
reference stage's bash app gets its nodes and ranks from the site-config, and CP2K or pw.x runs
as one 2-rank MPI job."""

from __future__ import annotations

import os

import parsl
import pytest
from ase.build import molecule
from real_components import require_command

from cagoflow.apps import make_apps
from cagoflow.apps.commands import exit_status, resource_specification, shell_command
from cagoflow.executors.site import SiteConfig
from cagoflow.engines.cp2k import OUTPUT_FILE, Cp2kReference, Cp2kSettings
from cagoflow.engines.espresso import EspressoReference, EspressoSettings
from cagoflow.engines.reference import ReferenceStatus
from cagoflow.executors.parsl_config import build_config

AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if os.geteuid() == 0 else {}


def site(engine: str = "cp2k") -> SiteConfig:
    """Python stages in threads here; the reference program in blocks of the `cpu` partition, 2
    ranks per calculation."""
    return SiteConfig.model_validate(
        {
            "name": "mpi-test",
            "executors": {
                "local": {"kind": "threads", "max_workers": 1},
                "cp2k": {
                    "kind": "mpi",
                    "max_workers": 1,
                    "mpi_launcher": "srun",
                    "provider": {
                        "partition": "cpu", "walltime": "00:15:00", "cores_per_node": 2, "mem_per_node": 3,
                        "init_blocks": 0, "min_blocks": 0, "max_blocks": 1, "exclusive": False, "cmd_timeout": 20,
                    },  # fmt: skip
                },
            },
            "stages": {"default": "local", "reference": "cp2k"},
            "engines": {engine: {"ranks": 2, "threads": 1, "env": AS_ROOT}},
        }
    )


@pytest.fixture
def parsl_on(tmp_path):
    def load(site_config: SiteConfig):
        parsl.load(build_config(site_config, tmp_path / "runinfo"))

    yield load
    parsl.dfk().cleanup()
    parsl.clear()


def test_cp2k_runs_as_one_mpi_job_of_the_site_ranks(slurm_cluster, parsl_on, tmp_path):
    require_command("cp2k.psmp")
    atoms = molecule("H2O", cell=[6.0, 6.0, 6.0], pbc=True)
    atoms.center()
    atoms.rattle(0.05, seed=1)
    engine = Cp2kReference(Cp2kSettings(method="pbe", cutoff=250, rel_cutoff=40, eps_scf=1e-7, stress=False))
    directory = tmp_path / "task"
    directory.mkdir()
    engine.write_input(atoms, directory)
    config = site()
    command = shell_command(directory, [["cp2k.psmp", *engine.arguments(directory)]], config, "reference", "engine.log")
    resources = resource_specification(config, "reference", "cp2k.psmp")
    parsl_on(config)
    apps = make_apps(config)
    apps.run_reference({"command": command}, parsl_resource_specification=resources).result(timeout=600)

    output = (directory / OUTPUT_FILE).read_text()
    log = (directory / "engine.log").read_text()
    assert exit_status(directory) == 0, log[-2000:]
    ranks = [line for line in output.splitlines() if "Total number of message passing processes" in line]
    assert ranks and ranks[0].split()[-1] == "2", output[:3000]  # one calculation on 2 ranks, not 2 singletons
    assert output.count("PROGRAM STARTED AT") == 1
    result = engine.read_result(atoms, directory, exit_status(directory))
    assert result.status == ReferenceStatus.CONVERGED
    assert abs(result.atoms.get_forces()).max() > 0.1  # a rattled molecule: real forces came back


def test_pw_x_runs_as_one_mpi_job_of_the_site_ranks(slurm_cluster, parsl_on, tmp_path):
    """Quantum ESPRESSO the same way: a periodic water box labelled with forces and stress."""
    from cagoflow.structures import water_box

    require_command("pw.x")
    atoms = water_box(4, seed=1)
    engine = EspressoReference(EspressoSettings(pseudopotentials=PSEUDOPOTENTIALS, ecutwfc=25, ecutrho=200))
    directory = tmp_path / "task"
    engine.write_input(atoms, directory)
    config = site("espresso")
    command = shell_command(directory, [["pw.x", *engine.arguments(directory)]], config, "reference", "engine.log")
    parsl_on(config)
    apps = make_apps(config)
    resources = resource_specification(config, "reference", "pw.x")
    apps.run_reference({"command": command}, parsl_resource_specification=resources).result(timeout=600)

    log = (directory / "engine.log").read_text()
    assert exit_status(directory) == 0, log[-2000:]
    processes = [line for line in log.splitlines() if "Parallel version (MPI), running on" in line]
    assert processes and processes[0].split()[-2] == "2", log[:3000]  # one calculation on 2 ranks
    assert log.count("Program PWSCF") == 1
    result = engine.read_result(atoms, directory, exit_status(directory))
    assert result.status == ReferenceStatus.CONVERGED, result.message
    assert abs(result.atoms.get_forces()).max() > 0.1 and result.atoms.get_stress().shape == (6,)


#: LDA pseudopotentials of Debian's quantum-espresso-data (soft: 25 Ry suffice for a test).
PSEUDOPOTENTIALS = {"H": "H.pz-vbc.UPF", "O": "O.pz-rrkjus.UPF"}
