"""Checks every differentiable MLIP committee must pass, shared by the backend tests.

Each function asserts one property of a trained committee on one labelled structure:
virials are the strain derivative of the energy, the exact CAGO gradient agrees with finite
differences, the torch energy function agrees with ``predict``, and CAGO with the exact
gradient moves σ toward δ.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from cagoflow.autograd import ExactGradient
from cagoflow.cago import CagoSettings, FiniteDifferenceGradient, Geometry, Objective, run_cago
from cagoflow.calibration import PowerLaw
from cagoflow.committee import force_sigma_hat

#: The calibration of the checks (a, b as a trained committee gives them: σ_cal = 1.2 σ̂^0.9).
LAW = PowerLaw(a=1.2, b=0.9)


def sigma_rms(committee, atoms: Atoms) -> float:
    """RMS over atoms of the committee force spread σ̂_F_i, eV/Å."""
    return float(np.sqrt(np.mean(force_sigma_hat(committee.predict([atoms]).forces) ** 2)))


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
    cago = CagoSettings(delta=0.2, l_bias=0.05, pressure_weight=0.1)
    geometry = Geometry(atoms, optimize_cell=True)
    objective = Objective(LAW, cago, cago.delta)
    z = geometry.initial()
    exact = ExactGradient(committee, geometry, objective)(z)
    fd = FiniteDifferenceGradient(committee, geometry, objective, step=1e-4)(z)
    assert exact.value == pytest.approx(fd.value, rel=1e-10)
    assert np.corrcoef(exact.gradient, fd.gradient)[0, 1] >= 0.999
    assert np.abs(exact.gradient - fd.gradient).max() < max_deviation * np.abs(exact.gradient).max()
    np.testing.assert_allclose(exact.sigma_cal, fd.sigma_cal, rtol=1e-8)


def assert_torch_energy_matches_predict(committee, atoms: Atoms, atol: float) -> None:
    """The differentiable energy function gives ``predict``'s energies (eV) for every member."""
    energy = committee.torch_energy(atoms)
    copies = committee.n_members
    positions = torch.tensor(np.stack([atoms.positions] * copies), dtype=torch.float64)
    cells = torch.tensor(np.stack([np.asarray(atoms.cell)] * copies), dtype=torch.float64)
    np.testing.assert_allclose(
        energy(positions, cells).detach().numpy(), committee.predict([atoms]).energies[:, 0], rtol=0, atol=atol
    )


def assert_cago_makes_progress(committee, atoms: Atoms) -> None:
    """8 L-BFGS steps with the exact gradient close 30 % of the gap between σ and δ = 2 σ_start."""
    delta = 2.0 * LAW(sigma_rms(committee, atoms))
    result = run_cago(atoms, committee, LAW, CagoSettings(delta=delta, max_steps=8, min_distance=0.75))
    assert result.gradient == "exact" and result.n_steps >= 1
    assert abs(result.sigma_history[-1] - delta) < 0.7 * abs(result.sigma_history[0] - delta)
