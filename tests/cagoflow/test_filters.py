"""Tests of cagoflow.filters on hand-made structures with known forces and distances."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from cagoflow.filters import (
    FilterResult,
    PostFilterSettings,
    PreFilterSettings,
    Rejection,
    max_atomic_force,
    post_filter,
    pre_filter,
)


def dimer(distance: float) -> Atoms:
    """Two H atoms ``distance`` Å apart."""
    return Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, distance]])


def forces_with_max(largest: float, natoms: int) -> np.ndarray:
    """(natoms, 3) forces whose largest atomic norm is ``largest`` eV/Å (a 3-4-5 triangle)."""
    forces = np.full((natoms, 3), 0.1)
    forces[-1] = [0.6 * largest, 0.8 * largest, 0.0]
    return forces


def labelled(atoms: Atoms, forces: np.ndarray, status: str | None = "converged", energy: float = -1.0) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    if status is not None:
        atoms.info["reference_status"] = status
    return atoms


def test_max_atomic_force_is_the_largest_norm():
    assert max_atomic_force(forces_with_max(52.3, 3)) == pytest.approx(52.3)
    assert max_atomic_force(np.zeros((0, 3))) == 0.0


def test_pre_filter_reasons_and_kept_indices():
    structures = [molecule("H2O"), molecule("H2O"), dimer(0.6), dimer(0.5), dimer(0.75)]
    mean_forces = [
        forces_with_max(5.0, 3),  # fine
        forces_with_max(52.3, 3),  # too large a force
        forces_with_max(1.0, 2),  # too close
        forces_with_max(41.0, 2),  # both
        forces_with_max(40.0, 2),  # exactly at both thresholds: kept
    ]

    result = pre_filter(structures, mean_forces)

    assert result.kept == (0, 4)
    assert result.rejected == (
        Rejection(1, "max committee-mean force 52.3 eV/Å > 40 eV/Å"),
        Rejection(2, "min interatomic distance 0.600 Å < 0.75 Å"),
        Rejection(3, "max committee-mean force 41.0 eV/Å > 40 eV/Å; min interatomic distance 0.500 Å < 0.75 Å"),
    )
    assert result.select(structures) == [structures[0], structures[4]]
    assert result.reasons[2].startswith("min interatomic distance")


def test_pre_filter_custom_thresholds_and_periodic_images():
    # two atoms 0.9 Å apart only through the periodic boundary
    atoms = Atoms("H2", positions=[[0, 0, 0.1], [0, 0, 4.2]], cell=[5, 5, 5], pbc=True)
    forces = [forces_with_max(10.0, 2)]
    assert pre_filter([atoms], forces).kept == (0,)
    strict = pre_filter([atoms], forces, PreFilterSettings(max_mean_force=8.0, min_distance=1.0))
    assert strict.rejected == (
        Rejection(0, "max committee-mean force 10.0 eV/Å > 8 eV/Å; min interatomic distance 0.900 Å < 1 Å"),
    )


def test_pre_filter_nonfinite_and_shape_errors():
    result = pre_filter([molecule("H2O")], [np.full((3, 3), np.nan)])
    assert result.rejected == (Rejection(0, "committee-mean forces are not finite"),)
    with pytest.raises(ValueError, match="shape"):
        pre_filter([molecule("H2O")], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="for 0 structures, expected 1"):
        pre_filter([molecule("H2O")], [])


def test_post_filter_reasons_and_kept_indices():
    water = molecule("H2O")
    structures = [
        labelled(water, forces_with_max(3.0, 3)),  # fine
        labelled(water, forces_with_max(31.0, 3)),  # too large a reference force
        labelled(water, forces_with_max(1.0, 3), status="not_converged"),
        labelled(water, forces_with_max(1.0, 3), status="failed"),
        water.copy(),  # no labels
        labelled(water, forces_with_max(1.0, 3), energy=np.nan),
        labelled(water, forces_with_max(30.0, 3), status=None),  # no status, at the threshold: kept
    ]

    result = post_filter(structures)

    assert result.kept == (0, 6)
    assert result.rejected == (
        Rejection(1, "max reference force 31.0 eV/Å > 30 eV/Å"),
        Rejection(2, "reference status 'not_converged' (converged required)"),
        Rejection(3, "reference status 'failed' (converged required)"),
        Rejection(4, "no reference energy and forces"),
        Rejection(5, "reference energy or forces are not finite"),
    )
    assert len(result.select(structures)) == 2


def test_post_filter_failed_without_labels_gives_both_reasons():
    atoms = molecule("H2O")
    atoms.info["reference_status"] = "failed"
    result = post_filter([atoms])
    assert result.rejected[0].reason == "reference status 'failed' (converged required); no reference energy and forces"


def test_post_filter_settings():
    structure = labelled(molecule("H2O"), forces_with_max(35.0, 3), status="not_converged")
    lenient = PostFilterSettings(max_reference_force=50.0, require_converged=False)
    assert post_filter([structure], lenient) == FilterResult(kept=(0,), rejected=())
    assert post_filter([structure]).rejected[0].reason == (
        "reference status 'not_converged' (converged required); max reference force 35.0 eV/Å > 30 eV/Å"
    )
