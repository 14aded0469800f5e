"""Tests of cagoflow.engines.ase_reference: any ASE calculator as a reference engine."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from cagoflow.engines.ase_reference import AseCalculatorReference, label_with_calculator, status_of_exception
from cagoflow.engines.reference import InProcessReference, ReferenceStatus
from cagoflow.errors import InputError
from cagoflow.filters import REFERENCE_STATUS_KEY


class Exploding(Calculator):
    """Raises the given message on every calculation (or returns NaN energies)."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, message: str = "boom", nan: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.message, self.nan = message, nan

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if not self.nan:
            raise RuntimeError(self.message)
        self.results = {"energy": np.nan, "forces": np.zeros((len(self.atoms), 3)), "stress": np.zeros(6)}


def copper() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    return atoms


def test_emt_on_copper_matches_emt_directly():
    engine = AseCalculatorReference("ase.calculators.emt:EMT")
    assert isinstance(engine, InProcessReference) and engine.name == "ase/EMT"
    atoms = copper()
    result = engine.compute(atoms)
    assert result.status is ReferenceStatus.CONVERGED, result.message
    assert result.engine == "ase/EMT" and result.wall_time >= 0
    direct = atoms.copy()
    direct.calc = EMT()
    assert result.atoms.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(result.atoms.get_forces(), direct.get_forces(), atol=1e-12)
    np.testing.assert_allclose(result.atoms.get_stress(), direct.get_stress(), atol=1e-12)
    assert result.labelled().info[REFERENCE_STATUS_KEY] == "converged"
    assert atoms.calc is None


def test_calculator_is_reused_and_reset_between_structures():
    engine = AseCalculatorReference("ase.calculators.emt:EMT")
    first = engine.compute(copper())
    other = bulk("Cu", "fcc", a=3.7, cubic=True)
    second = engine.compute(other)
    again = engine.compute(copper())
    assert second.ok and again.ok
    assert second.atoms.get_potential_energy() != pytest.approx(first.atoms.get_potential_energy())
    assert again.atoms.get_potential_energy() == pytest.approx(first.atoms.get_potential_energy(), abs=1e-12)


def test_no_stress_for_a_molecule_or_when_switched_off():
    molecule = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.4]])
    result = AseCalculatorReference("ase.calculators.emt:EMT").compute(molecule)
    assert result.ok and "stress" not in result.atoms.calc.results
    result = AseCalculatorReference("ase.calculators.emt:EMT", stress=False).compute(copper())
    assert result.ok and "stress" not in result.atoms.calc.results


def test_kwargs_reach_the_calculator():
    engine = AseCalculatorReference("ase.calculators.lj:LennardJones", {"sigma": 2.3, "epsilon": 0.2, "rc": 6.0})
    result = engine.compute(copper())
    assert result.ok
    reference = copper()
    from ase.calculators.lj import LennardJones

    reference.calc = LennardJones(sigma=2.3, epsilon=0.2, rc=6.0)
    assert result.atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy())


def test_a_raising_calculator_is_a_failed_result():
    atoms = copper()
    result = label_with_calculator(atoms, Exploding("the engine crashed"), "test/Exploding")
    assert result.status is ReferenceStatus.FAILED and not result.ok
    assert result.message == "RuntimeError: the engine crashed"
    assert result.atoms.calc is None and len(result.atoms) == len(atoms)
    assert result.labelled().info["reference_message"] == result.message


def test_an_unsupported_element_in_emt_is_a_failed_result():
    result = AseCalculatorReference("ase.calculators.emt:EMT").compute(Atoms("U2", positions=[[0, 0, 0], [0, 0, 3]]))
    assert result.status is ReferenceStatus.FAILED
    assert "U" in result.message or "92" in result.message


def test_non_convergence_and_non_finite_results():
    atoms = copper()
    result = label_with_calculator(atoms, Exploding("SCF did not converge after 50 steps"), "test")
    assert result.status is ReferenceStatus.NOT_CONVERGED
    result = label_with_calculator(atoms, Exploding(nan=True), "test")
    assert result.status is ReferenceStatus.FAILED and "non-finite energy" in result.message


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("SCF not converged in 2 cycles", ReferenceStatus.NOT_CONVERGED),
        ("SCF run NOT converged", ReferenceStatus.NOT_CONVERGED),
        ("failed to converge", ReferenceStatus.NOT_CONVERGED),
        ("segmentation fault", ReferenceStatus.FAILED),
        ("converged, then crashed", ReferenceStatus.FAILED),
    ],
)
def test_status_of_exception(message, status):
    assert status_of_exception(RuntimeError(message)) is status


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("ase.calculators.emt.EMT", "expected an import path 'module:Class'"),
        ("ase.calculators.nonexistent:EMT", "cannot import module 'ase.calculators.nonexistent'"),
        ("ase.calculators.emt:Emt", "has no attribute 'Emt'"),
        ("ase.calculators.emt:np", "is not an ASE calculator class"),
        ("numpy:ndarray", "is not an ASE calculator class"),
    ],
)
def test_bad_import_path_is_an_input_error_naming_the_field(path, words):
    with pytest.raises(InputError) as info:
        AseCalculatorReference(path)
    assert info.value.field == "reference.calculator"
    assert words in str(info.value) and "reference.calculator" in str(info.value)


def test_bad_kwargs_are_an_input_error_naming_the_settings():
    with pytest.raises(InputError) as info:  # SumCalculator(calcs, ...) has a strict signature
        AseCalculatorReference("ase.calculators.mixing:SumCalculator", {"no_such_option": 1})
    assert info.value.field == "reference.settings"
    assert "no_such_option" in str(info.value)


def test_pickles_without_its_calculator_and_is_thread_safe():
    engine = AseCalculatorReference("ase.calculators.emt:EMT")
    clone = pickle.loads(pickle.dumps(engine))
    assert clone._calculator is None
    expected = engine.compute(copper()).atoms.get_potential_energy()
    energies = []

    def work():
        energies.append(clone.compute(copper()).atoms.get_potential_energy())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert energies == pytest.approx([expected] * 4, abs=1e-12)
