"""Quantum ESPRESSO through ASE's Espresso template: real pw.x, a periodic water box.

Forces and stress are judged against finite differences of pw.x's own energy (a label that is
wrong in sign, units or order fails), and every failure comes back as a result with its reason.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from real_components import require_command

from cagoflow.engines.espresso import EspressoReference, EspressoSettings
from cagoflow.engines.reference import ReferenceStatus
from cagoflow.structures import water_box

PSEUDOPOTENTIALS = {"H": "H.pz-vbc.UPF", "O": "O.pz-rrkjus.UPF"}


def engine(**settings) -> EspressoReference:
    return EspressoReference(EspressoSettings(pseudopotentials=PSEUDOPOTENTIALS, ecutwfc=25, ecutrho=200, **settings))


def label(reference: EspressoReference, atoms, directory: Path):
    """Write, run pw.x as a task's shell does (standard output to engine.log), read."""
    reference.write_input(atoms, directory)
    code = subprocess.run(
        ["pw.x", *reference.arguments(directory)], cwd=directory, stdout=open(directory / "engine.log", "w"),
        stderr=subprocess.STDOUT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    ).returncode  # fmt: skip
    return reference.read_result(atoms, directory, code)


@pytest.fixture(scope="module")
def box():
    return water_box(4, seed=1)


def test_forces_and_stress_are_derivatives_of_the_energy(box, tmp_path):
    require_command("pw.x")
    reference = engine()
    result = label(reference, box, tmp_path / "centre")
    assert result.status == ReferenceStatus.CONVERGED, result.message
    forces, stress = result.atoms.get_forces(), result.atoms.get_stress()

    step = 0.005  # Å
    energies = []
    for sign in (+1, -1):
        moved = box.copy()
        moved.positions[0, 0] += sign * step
        energies.append(label(reference, moved, tmp_path / f"atom-{sign}").atoms.get_potential_energy())
    assert forces[0, 0] == pytest.approx(-(energies[0] - energies[1]) / (2 * step), abs=0.02)  # eV/Å

    strain = 0.002
    energies = []
    for sign in (+1, -1):
        strained = box.copy()
        cell = np.array(box.cell)
        cell[:, 0] *= 1 + sign * strain
        strained.set_cell(cell, scale_atoms=True)
        energies.append(label(reference, strained, tmp_path / f"strain-{sign}").atoms.get_potential_energy())
    volume = box.get_volume()
    assert stress[0] == pytest.approx((energies[0] - energies[1]) / (2 * strain) / volume, abs=2e-3)  # eV/Å³


def test_an_unconverged_scf_is_a_result_with_its_reason(box, tmp_path):
    require_command("pw.x")
    result = label(engine(electron_maxstep=2), box, tmp_path)
    assert result.status == ReferenceStatus.NOT_CONVERGED
    assert "SCF not converged in 2 steps" in result.message and result.atoms.calc is None


def test_a_crash_is_a_failed_result_with_the_last_lines(box, tmp_path):
    require_command("pw.x")
    missing = EspressoSettings(pseudopotentials={**PSEUDOPOTENTIALS, "H": "H.missing.UPF"}, ecutwfc=25)
    result = label(EspressoReference(missing), box, tmp_path)
    assert result.status == ReferenceStatus.FAILED
    assert "pw.x exited with code" in result.message and "last lines of engine.log" in result.message


def test_an_element_without_pseudopotential_is_named(tmp_path):
    with pytest.raises(ValueError, match="no pseudopotential for O"):
        EspressoReference(EspressoSettings(pseudopotentials={"H": "H.pz-vbc.UPF"})).write_input(water_box(2, seed=1), tmp_path)
