"""Shared fixtures of the MLIP backend tests: a small labelled water data set.

``water_frames`` (session scope, made once per test session): 30 frames of a periodic box of
8 H2O (24 atoms, 6.2 Å edge), rattled by 0.05 Å, every third cell strained by up to ~2 %,
labelled with GFN1-xTB (tblite): energy (eV), forces (eV/Å) and stress (eV/Å³), written as
extxyz files with 20 training, 5 validation and 5 test frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from cagoflow.structures import water_box
from conftest import require_module

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
