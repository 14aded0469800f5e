"""Tests of cagoflow.structures: the water boxes of examples and tests."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.geometry import get_distances

from cagoflow.geometry import min_interatomic_distance
from cagoflow.structures import water_box


def density_g_cm3(atoms: Atoms) -> float:
    return float(atoms.get_masses().sum() * 1.66053906660 / atoms.get_volume())

# water_box

@pytest.mark.parametrize("n_molecules", [1, 8, 16, 28, 64])
def test_water_box_density_and_distances(n_molecules: int) -> None:
    atoms = water_box(n_molecules, seed=3)
    assert len(atoms) == 3 * n_molecules and atoms.pbc.all()
    assert atoms.cell.cellpar()[3:] == pytest.approx([90, 90, 90])
    assert density_g_cm3(atoms) == pytest.approx(1.0, rel=0.01)
    molecule = np.repeat(np.arange(n_molecules), 3)
    _, distances = get_distances(atoms.positions, cell=atoms.cell, pbc=True)
    other = molecule[:, None] != molecule[None, :]
    if n_molecules > 1:
        assert distances[other].min() >= 1.5
        oxygens = atoms.numbers == 8
        assert distances[np.ix_(oxygens, oxygens)][other[np.ix_(oxygens, oxygens)]].min() >= 2.5
    assert min_interatomic_distance(atoms) > 0.9


def test_water_box_is_reproducible_and_seeded() -> None:
    assert np.array_equal(water_box(8, seed=5).positions, water_box(8, seed=5).positions)
    assert not np.allclose(water_box(8, seed=5).positions, water_box(8, seed=6).positions)


def test_water_box_density_sets_the_edge() -> None:
    assert water_box(16, density_g_cm3=0.5).get_volume() == pytest.approx(2 * water_box(16).get_volume())


@pytest.mark.parametrize(("n_molecules", "density"), [(0, 1.0), (4, 0.0), (4, -1.0)])
def test_water_box_refuses_impossible_arguments(n_molecules: int, density: float) -> None:
    with pytest.raises(ValueError):
        water_box(n_molecules, density_g_cm3=density)
