"""Checks every differentiable MLIP committee must pass, shared by the backend tests.

Each function asserts one property of a trained committee: the spread grows away from the
training data, batched prediction equals one structure at a time, virials are the strain
derivative of the energy, the exact CAGO gradient agrees with finite differences, the torch
energy function agrees with ``predict``, and CAGO with the exact gradient moves σ toward δ.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from cagoflow.cago import CagoCalibration, CagoSettings, run_cago
from cagoflow.cago_gradients import ExactGradient, FiniteDifferenceGradient
from cagoflow.cago_objective import Geometry, Objective, Problem
from cagoflow.calibration import PowerLaw
from cagoflow.committee import CommitteePrediction, force_sigma_hat
from cagoflow.structures import water_box

#: The calibration of the checks (a, b as a trained committee gives them: σ_cal = 1.2 σ̂^0.9).
LAW = PowerLaw(a=1.2, b=0.9)
#: The optimiser alone: an analytic law judged nowhere, so no trust region or packing guard.
OPTIMISER_ONLY = {"trust_region": None, "packing_guard": None}


def sigma_rms(committee, atoms: Atoms) -> float:
    """RMS over atoms of the committee force spread σ̂_F_i, eV/Å."""
    return float(np.sqrt(np.mean(force_sigma_hat(committee.predict([atoms]).forces) ** 2)))


def assert_spread_grows_away_from_training(committee, training: Atoms) -> None:
    """σ̂ (RMS over atoms) of a 15 %-compressed and of a 0.25 Å-rattled copy of a training
    structure exceeds 1.5× its value at the structure."""
    compressed = training.copy()
    compressed.set_cell(training.cell * 0.85, scale_atoms=True)
    rattled = training.copy()
    rattled.rattle(stdev=0.25, seed=4)
    at_training = sigma_rms(committee, training)
    assert sigma_rms(committee, compressed) > 1.5 * at_training
    assert sigma_rms(committee, rattled) > 1.5 * at_training


def assert_batched_equals_one_at_a_time(committee, split, frames: list[Atoms], atol: float) -> None:
    """One batch of ``frames`` (24-atom boxes) plus other sizes, their atoms permuted, a molecule
    without cell and a tiny box equals one call per structure and ``split`` (the same members
    with small batches), to ``atol`` (eV, eV/Å); virials NaN exactly for the molecule."""
    permuted = frames[0][np.random.default_rng(0).permutation(len(frames[0]))]
    structures = [*frames, water_box(4, seed=3), permuted, molecule("H2O"), water_box(2, seed=1)]
    batched = committee.predict(structures)
    single = CommitteePrediction.concatenate([committee.predict([atoms]) for atoms in structures])
    for other in (single, split.predict(structures)):
        np.testing.assert_allclose(batched.energies, other.energies, rtol=0, atol=atol)
        np.testing.assert_allclose(batched.forces, other.forces, rtol=0, atol=atol)
        np.testing.assert_allclose(batched.virials, other.virials, rtol=0, atol=atol, equal_nan=True)
    assert np.isnan(batched.virials[:, -2]).all() and np.isfinite(batched.virials[:, :-2]).all()
    # a permutation of the atoms permutes the forces and leaves the energy
    assert batched.energies[:, len(frames) + 1] == pytest.approx(batched.energies[:, 0], abs=1e-9)


def assert_virial_is_strain_derivative(committee, atoms: Atoms, relative: float, absolute: float = 0.0) -> None:
    """W = −dE/dε (eV) by central differences with ε = 1e-5 over all 9 strain components;
    tolerance ``relative`` × max|W| + ``absolute`` (eV)."""
    step = 1e-5
    strained = []
    for i in range(3):
        for j in range(3):
            for sign in (1, -1):
                deformation = np.eye(3)
                deformation[i, j] += sign * step
                copy = atoms.copy()
                copy.set_cell(atoms.cell @ deformation, scale_atoms=False)
                copy.positions = atoms.positions @ deformation
                strained.append(copy)
    energies = committee.predict(strained).energies.reshape(committee.n_members, 3, 3, 2)
    finite_difference = -(energies[..., 0] - energies[..., 1]) / (2 * step)
    virials = committee.predict([atoms]).virials[:, 0]
    assert np.abs(virials).max() > 1.0
    np.testing.assert_allclose(virials, finite_difference, rtol=0, atol=relative * np.abs(virials).max() + absolute)


def assert_exact_gradient_matches_finite_differences(committee, atoms: Atoms, max_deviation: float) -> None:
    """Autograd (double backprop) vs batched forward differences, h = 1e-4 Å, over all 3N + 6
    components: same value, correlation ≥ 0.999, largest deviation below ``max_deviation`` ×
    the largest component."""
    geometry = Geometry(atoms, optimize_cell=True)
    problem = Problem(geometry, Objective(LAW, 0.2, force_bias=0.05, pressure_weight=0.1))
    z = geometry.initial()
    (exact,) = ExactGradient(committee)([problem], [z])
    (fd,) = FiniteDifferenceGradient(committee, step=1e-4)([problem], [z])
    assert exact.value == pytest.approx(fd.value, rel=1e-10)
    assert np.corrcoef(exact.gradient, fd.gradient)[0, 1] >= 0.999
    assert np.abs(exact.gradient - fd.gradient).max() < max_deviation * np.abs(exact.gradient).max()
    np.testing.assert_allclose(exact.sigma_cal, fd.sigma_cal, rtol=1e-8)


def assert_torch_energy_matches_predict(committee, structures: list[Atoms], atol: float) -> None:
    """The differentiable energy function of several structures at once gives ``predict``'s
    energies (eV) for every member and structure."""
    energy = committee.torch_energy(structures)
    copies = committee.n_members
    positions = torch.tensor(np.stack([np.concatenate([a.positions for a in structures])] * copies), dtype=torch.float64)
    cells = torch.tensor(np.stack([[np.asarray(a.cell) for a in structures]] * copies), dtype=torch.float64)
    np.testing.assert_allclose(
        energy(positions, cells).detach().numpy(), committee.predict(structures).energies, rtol=0, atol=atol
    )


def assert_cago_makes_progress(committee, atoms: Atoms) -> None:
    """8 L-BFGS steps with the exact gradient close 30 % of the gap between σ and δ = 2 σ_start."""
    delta = 2.0 * LAW(sigma_rms(committee, atoms))
    result = run_cago(atoms, committee, CagoCalibration(LAW, validity_limit=math.inf), CagoSettings(delta=delta, max_steps=8, **OPTIMISER_ONLY))
    assert result.gradient == "exact" and result.n_steps >= 1
    assert abs(result.sigma_history[-1] - delta) < 0.7 * abs(result.sigma_history[0] - delta)
