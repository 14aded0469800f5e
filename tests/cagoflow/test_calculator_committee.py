"""Tests of cagoflow.calculator_committee: the generic committee over ASE calculators."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from cagoflow.morse_committee import MorseCalculator, MorseCommittee, MorseModel
from cagoflow.calculator_committee import CalculatorCommittee
from cagoflow.committee import Committee
from cagoflow.structures import water_box

#: The calculator path sums the same torch expression one structure at a time (eV, eV/Å).
MATCH_ATOL = 1e-10


class HarmonicTether(Calculator):
    """Atoms on springs to their starting positions: energy and forces, but no stress."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, reference: np.ndarray, k: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.reference = np.asarray(reference, dtype=float)
        self.k = k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        displacement = self.atoms.positions - self.reference
        self.results = {"energy": 0.5 * self.k * float((displacement**2).sum()), "forces": -self.k * displacement}


@pytest.fixture(scope="module")
def model() -> MorseModel:
    return MorseModel.for_symbols(["H", "O"], n_members=4, spread=0.05, seed=2)


@pytest.fixture(scope="module")
def water_structures() -> list[Atoms]:
    """Periodic boxes of different sizes and a non-periodic molecule."""
    return [water_box(8), molecule("H2O"), water_box(2, seed=1)]


def rattled_copper(repeat: int, seed: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.rattle(stdev=0.05, seed=seed)
    return atoms


def test_follows_the_protocol(model):
    committee = CalculatorCommittee([MorseCalculator(model, m) for m in range(3)])
    assert isinstance(committee, Committee)
    assert committee.n_members == 3


def test_needs_a_calculator():
    with pytest.raises(ValueError, match="at least one"):
        CalculatorCommittee([])


def test_morse_members_match_the_batched_morse_committee(model, water_structures):
    members = [0, 1, 2]
    generic = CalculatorCommittee([MorseCalculator(model, m) for m in members]).predict(water_structures)
    batched = MorseCommittee(model.members(members)).predict(water_structures)
    np.testing.assert_array_equal(generic.natoms, [24, 3, 6])
    np.testing.assert_allclose(generic.energies, batched.energies, rtol=0, atol=MATCH_ATOL)
    np.testing.assert_allclose(generic.forces, batched.forces, rtol=0, atol=MATCH_ATOL)
    np.testing.assert_allclose(generic.virials, batched.virials, rtol=0, atol=MATCH_ATOL)
    assert np.isnan(generic.virials[:, 1]).all()  # the molecule is not periodic
    assert np.isfinite(generic.virials[:, [0, 2]]).all()
    assert np.all(generic.energies[0] != generic.energies[1])  # the members really differ


def test_subset_picks_calculators(model, water_structures):
    committee = CalculatorCommittee([MorseCalculator(model, m) for m in range(3)])
    picked = committee.subset([2, 0])
    assert picked.n_members == 2
    assert picked.calculators == [committee.calculators[2], committee.calculators[0]]
    expected = committee.predict(water_structures).members([2, 0])
    actual = picked.predict(water_structures)
    np.testing.assert_array_equal(actual.energies, expected.energies)
    np.testing.assert_array_equal(actual.forces, expected.forces)
    np.testing.assert_array_equal(actual.virials, expected.virials)


def test_structures_are_left_untouched(model, water_structures):
    structures = [atoms.copy() for atoms in water_structures]
    CalculatorCommittee([MorseCalculator(model, 0), MorseCalculator(model, 1)]).predict(structures)
    for atoms, original in zip(structures, water_structures):
        assert atoms.calc is None
        np.testing.assert_array_equal(atoms.positions, original.positions)


def test_emt_gives_finite_arrays_of_the_right_shapes():
    cluster = Atoms("Cu3", positions=[[0.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.0, 2.5, 0.0]])
    structures = [rattled_copper(1, seed=1), rattled_copper(2, seed=2), cluster]
    prediction = CalculatorCommittee([EMT(), EMT()]).predict(structures)
    assert prediction.energies.shape == (2, 3)
    assert prediction.forces.shape == (2, 4 + 32 + 3, 3)
    assert prediction.virials.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(prediction.natoms, [4, 32, 3])
    assert np.isfinite(prediction.energies).all() and np.isfinite(prediction.forces).all()
    assert np.isfinite(prediction.virials[:, :2]).all() and np.isnan(prediction.virials[:, 2]).all()
    assert np.abs(prediction.forces).max() > 1e-3  # rattled: forces are not zero
    for s in range(3):  # Newton's third law, structure by structure
        np.testing.assert_allclose(prediction.structure_forces(s).sum(axis=1), 0.0, atol=1e-10)
    # Two identical calculators: identical members.
    np.testing.assert_array_equal(prediction.energies[0], prediction.energies[1])


def test_calculator_without_stress_gives_no_virials():
    atoms = rattled_copper(1, seed=3)
    calculators = [HarmonicTether(atoms.positions, k=1.0), HarmonicTether(atoms.positions, k=2.0)]
    moved = atoms.copy()
    moved.positions[0] += [0.1, 0.0, 0.0]
    prediction = CalculatorCommittee(calculators).predict([atoms, moved])
    assert prediction.virials is None
    np.testing.assert_allclose(prediction.energies, [[0.0, 0.005], [0.0, 0.01]], atol=1e-15)
    np.testing.assert_allclose(prediction.structure_forces(1)[:, 0], [[-0.1, 0.0, 0.0], [-0.2, 0.0, 0.0]], atol=1e-15)


def test_calculator_without_stress_on_non_periodic_structures_gives_nan_virials():
    """Stress is never asked of structures that are not periodic along all three axes."""
    atoms = molecule("H2O")
    calculators = [HarmonicTether(atoms.positions), HarmonicTether(atoms.positions)]
    prediction = CalculatorCommittee(calculators).predict([atoms])
    assert prediction.virials.shape == (2, 1, 3, 3) and np.isnan(prediction.virials).all()
