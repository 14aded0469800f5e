"""Shared test helpers.

Tests of real components (a trainer, LAMMPS, CP2K, SLURM) call ``real_components.require_module`` or
``require_command``: outside CI a missing component skips the test; under CI (``CI=true``)
it is a failure, never a silent skip. The ``slurm_cluster`` fixture starts the one-node test
cluster of ``scripts/slurm-test-cluster.sh`` (the same rule applies).

``water_frames`` (session scope, made once per test session, for the MLIP backend and LAMMPS
tests): 30 frames of a periodic box of 8 H2O (24 atoms, 6.2 Å edge), rattled by 0.05 Å, every
third cell strained by up to ~2 %, labelled with GFN1-xTB (tblite): energy (eV), forces (eV/Å)
and stress (eV/Å³), written as extxyz files with 20 training, 5 validation and 5 test frames.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from cagoflow.apps.commands import thread_environment
from cagoflow.structures import water_box
from real_components import missing, require_command, require_module

# One thread per process and no DataLoader worker processes in DeePMD-kit's trainer (NUM_WORKERS),
# for every process the tests start, unless the caller set them: the test machines have 2 cores,
# and trainers started with the defaults (a thread per core, 2 loader processes for training and
# 2 for validation, each importing torch) ran 3-6 × slower. Tests of the thread settings
# themselves delete these variables first.
for _name, _value in {**thread_environment(1), "NUM_WORKERS": "0"}.items():
    os.environ.setdefault(_name, _value)

#: Fixtures that train real models, run an engine for minutes, or start a cluster or a campaign:
#: every test that uses one (directly or through another fixture) is marked ``slow``, like the
#: tests marked by hand that run such programs themselves. ``pytest -m "not slow"`` is the fast lane.
SLOW_FIXTURES = frozenset({
    "trained", "six_members", "deepmd_committee", "native_nvt", "slurm_cluster", "pbe_water", "parsl_on",
    "write_campaign", "finished_campaign", "stopped_campaign", "deepmd_campaign", "calibrated",
})  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# The programs of the environment the tests run in (lmp, dp, nequip-train, cagoflow, Parsl's
# worker pool) come first on PATH, as they do for a user who activated it.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests (the machine is shared: for tens of atoms one thread
    is faster than two); request it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-test-cluster.sh"


def _as_root(command: list[str]) -> list[str]:
    """``command`` as root: directly when we are root, else through password-less sudo (CI)."""
    if os.geteuid() == 0:
        return command
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", *command]
    return command  # the script then says it needs root


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A running one-node SLURM cluster with partitions `cpu` and `gpu` (site-configs/ci-slurm.yaml).

    Skips outside CI when SLURM is not installed or cannot be started here (not root, no sudo);
    fails under CI. Stops the cluster at the end of the session when this session started it.
    """
    require_command("slurmctld")
    was_up = subprocess.run(_as_root([str(CLUSTER_SCRIPT), "status"]), capture_output=True, text=True)
    started = subprocess.run(_as_root([str(CLUSTER_SCRIPT), "start"]), capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        missing(f"a running SLURM test cluster ({started.stderr.strip()})")
    yield
    if was_up.returncode != 0:
        subprocess.run(_as_root([str(CLUSTER_SCRIPT), "stop"]), capture_output=True, text=True, timeout=120)


# --- labelled water frames -------------------------------------------------------------------

N_TRAIN, N_VALIDATION, N_TEST = 20, 5, 5


@dataclass(frozen=True)
class WaterFrames:
    """Labelled water frames and the extxyz files of their splits.

    Attributes:
        train_file, validation_file, test_file: extxyz files (energy, forces, stress).
        frames: all frames, training then validation then test, each with a
            SinglePointCalculator holding its labels.
    """

    train_file: Path
    validation_file: Path
    test_file: Path
    frames: list[Atoms]

    @property
    def train(self) -> list[Atoms]:
        return self.frames[:N_TRAIN]

    @property
    def validation(self) -> list[Atoms]:
        return self.frames[N_TRAIN : N_TRAIN + N_VALIDATION]

    @property
    def test(self) -> list[Atoms]:
        return self.frames[N_TRAIN + N_VALIDATION :]


def make_water_frames(folder: Path, seed: int = 0) -> WaterFrames:
    """Label the frames with GFN1-xTB and write the three splits into ``folder`` (~3 s)."""
    from tblite.ase import TBLite

    rng = np.random.default_rng(seed)
    base = water_box(8, seed=seed)
    frames = []
    for index in range(N_TRAIN + N_VALIDATION + N_TEST):
        atoms = base.copy()
        if index % 3 == 2:
            strain = rng.normal(0.0, 0.015, (3, 3))
            atoms.set_cell(atoms.cell @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        atoms.rattle(stdev=0.05, seed=seed * 1000 + index)
        atoms.calc = TBLite(method="GFN1-xTB", verbosity=0)
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        frames.append(atoms)
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{name}.extxyz" for name in ("train", "validation", "test")]
    bounds = [0, N_TRAIN, N_TRAIN + N_VALIDATION, len(frames)]
    for file, start, stop in zip(files, bounds[:-1], bounds[1:]):
        write(file, frames[start:stop], format="extxyz")
    return WaterFrames(*files, frames)


@pytest.fixture(scope="session")
def water_frames(tmp_path_factory) -> WaterFrames:
    """30 GFN1-xTB-labelled frames of 8 H2O as train/validation/test extxyz files (made once)."""
    require_module("tblite")
    return make_water_frames(tmp_path_factory.mktemp("water-frames"))
