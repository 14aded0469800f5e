"""Tests of cagoflow.engines.tblite: tblite as an in-process reference engine."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.stress import voigt_6_to_full_3x3_stress
from real_components import require_module

from cagoflow.engines.reference import InProcessReference, ReferenceStatus
from cagoflow.engines.tblite import TbliteReference
from cagoflow.errors import InputError
from cagoflow.filters import REFERENCE_STATUS_KEY
from cagoflow.structures import water_box

#: Central finite differences (h = 1e-4 Å, strain 1e-4) agree with tblite's analytic forces
#: (eV/Å) and stress (eV/Å³) to within this; the differences seen are ~1e-6.
FD_FORCE_ATOL = 1e-3
FD_STRESS_ATOL = 1e-5
#: GFN1-xTB energy of ASE's H2O (eV), as printed in tblite's own documentation.
GFN1_H2O_ENERGY = -156.9675059


@pytest.fixture(autouse=True)
def _tblite():
    require_module("tblite")


@pytest.fixture(scope="module", autouse=True)
def one_openmp_thread():
    """tblite runs on the system's libgomp: on a shared 2-core machine two spinning OpenMP
    threads made these tests 10× slower than one; restored afterwards."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:
        yield
        return
    threads = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(1)
    yield
    gomp.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def gfn1() -> TbliteReference:
    return TbliteReference("GFN1-xTB")


def fd_energy(engine: TbliteReference, atoms: Atoms) -> float:
    result = engine.compute(atoms)
    assert result.ok, result.message
    return result.atoms.get_potential_energy()


def test_implements_the_protocol(gfn1):
    assert isinstance(gfn1, InProcessReference)
    assert gfn1.name == "tblite/GFN1-xTB"


def test_one_water_gfn1_converged_forces_match_finite_differences(gfn1):
    atoms = molecule("H2O")
    result = gfn1.compute(atoms)
    assert result.status is ReferenceStatus.CONVERGED and result.ok and result.message == ""
    assert result.engine == "tblite/GFN1-xTB" and result.wall_time > 0
    assert result.atoms.get_potential_energy() == pytest.approx(GFN1_H2O_ENERGY, abs=1e-4)
    assert "stress" not in result.atoms.calc.results  # a molecule has no stress
    forces = result.atoms.get_forces()
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-6)
    h = 1e-4
    for index in range(len(atoms)):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[index, axis] += h
            minus.positions[index, axis] -= h
            numeric = -(fd_energy(gfn1, plus) - fd_energy(gfn1, minus)) / (2 * h)
            assert forces[index, axis] == pytest.approx(numeric, abs=FD_FORCE_ATOL)
    labelled = result.labelled()
    assert labelled.info[REFERENCE_STATUS_KEY] == "converged"
    assert atoms.calc is None  # the input is not modified


@pytest.mark.parametrize("method", ["GFN2-xTB", "IPEA1-xTB"])
def test_other_methods(method):
    result = TbliteReference(method).compute(molecule("H2O"))
    assert result.ok, result.message
    assert result.engine == f"tblite/{method}"
    assert abs(result.atoms.get_potential_energy() - GFN1_H2O_ENERGY) > 1.0  # a different Hamiltonian


def test_water_box_stress_and_forces_match_finite_differences(gfn1):
    box = water_box(4)
    result = gfn1.compute(box)
    assert result.ok, result.message
    stress = result.atoms.get_stress(voigt=True)
    assert stress.shape == (6,) and np.isfinite(stress).all()
    forces = result.atoms.get_forces()
    h = 1e-4
    for index, axis in [(0, 0), (1, 1), (5, 2), (9, 0)]:
        plus, minus = box.copy(), box.copy()
        plus.positions[index, axis] += h
        minus.positions[index, axis] -= h
        numeric = -(fd_energy(gfn1, plus) - fd_energy(gfn1, minus)) / (2 * h)
        assert forces[index, axis] == pytest.approx(numeric, abs=FD_FORCE_ATOL)
    # stress = (1/V) dE/dε for a symmetric strain ε applied to cell and atoms
    full = voigt_6_to_full_3x3_stress(stress)
    volume = box.get_volume()
    for i, j in [(0, 0), (2, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.zeros((3, 3))
            strain[i, j] = strain[j, i] = sign * h
            strained = box.copy()
            strained.set_cell(box.cell @ (np.eye(3) + strain), scale_atoms=True)
            energies.append(fd_energy(gfn1, strained))
        numeric = (energies[0] - energies[1]) / (2 * h) / volume / (1 if i == j else 2)
        assert full[i, j] == pytest.approx(numeric, abs=FD_STRESS_ATOL)


def test_stress_can_be_switched_off():
    result = TbliteReference("GFN1-xTB", stress=False).compute(water_box(1))
    assert result.ok and "stress" not in result.atoms.calc.results


def test_unsupported_element_is_a_failed_result(gfn1):
    atoms = Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]])
    result = gfn1.compute(atoms)
    assert result.status is ReferenceStatus.FAILED and not result.ok
    assert "No support for elements" in result.message
    assert result.atoms.calc is None
    np.testing.assert_array_equal(result.atoms.positions, atoms.positions)
    labelled = result.labelled()
    assert labelled.info[REFERENCE_STATUS_KEY] == "failed"
    assert "No support" in labelled.info["reference_message"]


def test_scf_out_of_iterations_is_not_converged():
    result = TbliteReference("GFN1-xTB", max_iterations=2).compute(water_box(4))
    assert result.status is ReferenceStatus.NOT_CONVERGED
    assert "SCF not converged" in result.message


def test_further_tblite_options_are_passed_on():
    engine = TbliteReference("GFN1-xTB", mixer_damping=0.2, max_iterations=300)
    assert engine.calculator_parameters()["mixer_damping"] == 0.2
    assert engine.compute(molecule("H2O")).atoms.get_potential_energy() == pytest.approx(GFN1_H2O_ENERGY, abs=1e-4)


def test_charge_and_multiplicity_are_passed_on(gfn1):
    neutral = gfn1.compute(molecule("H2O")).atoms.get_potential_energy()
    cation = TbliteReference("GFN1-xTB", charge=1, multiplicity=2).compute(molecule("H2O"))
    assert cation.ok, cation.message
    assert cation.atoms.get_potential_energy() - neutral > 5.0  # an ionisation energy, eV


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "GFN3-xTB"}, "reference.method"),
        ({"max_iterations": 0}, "reference.settings.max_iterations"),
        ({"accuracy": -1.0}, "reference.settings.accuracy"),
        ({"mixer_dampin": 0.2}, "reference.settings.mixer_dampin"),
        ({"verbosity": 2}, "reference.settings.verbosity"),
    ],
)
def test_bad_settings_are_input_errors(kwargs, field):
    with pytest.raises(InputError) as info:
        TbliteReference(**kwargs)
    assert info.value.field == field
