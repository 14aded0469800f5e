"""Tests of cagoflow.committee: predictions, statistics (NumPy and torch), batching, virials."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from cagoflow.committee import (
    VARIANCE_FLOOR,
    Committee,
    CommitteePrediction,
    committee_statistics,
    force_sigma_hat,
    member_std,
    member_variance,
    predict_in_batches,
    virial_from_stress,
)


def random_prediction(n_members: int = 4, natoms: Sequence[int] = (3, 5), seed: int = 0, virials: bool = True):
    """A CommitteePrediction filled with seeded normal numbers (eV, eV/Å)."""
    rng = np.random.default_rng(seed)
    natoms = np.asarray(natoms, dtype=int)
    return CommitteePrediction(
        energies=rng.normal(size=(n_members, len(natoms))),
        forces=rng.normal(size=(n_members, int(natoms.sum()), 3)),
        natoms=natoms,
        virials=rng.normal(size=(n_members, len(natoms), 3, 3)) if virials else None,
    )


class ToyCommittee:
    """Members m = 0..M−1 whose predictions are simple functions of the positions of each structure.

    Every structure is computed on its own, so any batching must give identical arrays.
    ``calls`` records the number of structures of each ``predict`` call.
    """

    def __init__(self, n_members: int = 3):
        self.scales = np.arange(1, n_members + 1, dtype=float)
        self.calls: list[int] = []

    @property
    def n_members(self) -> int:
        return len(self.scales)

    def subset(self, members: Sequence[int]) -> "ToyCommittee":
        toy = ToyCommittee()
        toy.scales = self.scales[np.asarray(members, dtype=int)]
        return toy

    def predict(self, structures: Sequence[Atoms]) -> CommitteePrediction:
        self.calls.append(len(structures))
        energies = np.array([[scale * np.sin(a.positions).sum() for a in structures] for scale in self.scales])
        forces = np.array([np.concatenate([-scale * np.cos(a.positions) for a in structures]) for scale in self.scales])
        sums = [a.positions.sum(0) for a in structures]
        virials = np.array([[scale * np.outer(total, total) for total in sums] for scale in self.scales])
        natoms = np.array([len(a) for a in structures], dtype=int)
        return CommitteePrediction(energies, forces, natoms, virials)


def toy_structures(sizes: Sequence[int] = (2, 3, 1, 4, 2)) -> list[Atoms]:
    rng = np.random.default_rng(1)
    return [Atoms(f"H{n}", positions=rng.uniform(0.0, 5.0, size=(n, 3))) for n in sizes]


# --- statistics on hand-made arrays ----------------------------------------------------------


def test_member_variance_is_unbiased_variance_over_members():
    values = np.random.default_rng(0).normal(size=(5, 7, 3))
    np.testing.assert_allclose(member_variance(values), np.var(values, axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(member_std(values), np.sqrt(np.var(values, axis=0, ddof=1) + VARIANCE_FLOOR), rtol=1e-12)


def test_member_variance_of_two_members_by_hand():
    # ȳ = 2, σ̂² = ((1 − 2)² + (3 − 2)²) / (2 − 1) = 2
    assert member_variance(np.array([1.0, 3.0])) == pytest.approx(2.0)


def test_force_sigma_hat_is_eq9_spread_of_absolute_components():
    forces = np.random.default_rng(2).normal(size=(4, 6, 3))
    expected = np.array(
        [np.sqrt(sum(np.var(np.abs(forces[:, i, k]), ddof=1) for k in range(3))) for i in range(forces.shape[1])]
    )
    np.testing.assert_allclose(force_sigma_hat(forces), expected, rtol=1e-10)


def test_force_sigma_hat_by_hand():
    # |F_x| ∈ {1, 3}: σ̂² = 2; |F_y| ∈ {2, 2}: 0; |F_z| ∈ {3, 1}: 2  →  σ̂_F = sqrt(4) = 2 eV/Å.
    forces = np.array([[[1.0, 2.0, 3.0]], [[3.0, -2.0, 1.0]]])
    np.testing.assert_allclose(force_sigma_hat(forces), [2.0], rtol=1e-12)
    # Members that differ only in the sign of a component agree on |F|: σ̂_F is (almost) zero.
    flipped = np.array([[[1.0, 0.5, 0.0]], [[-1.0, -0.5, 0.0]]])
    np.testing.assert_allclose(force_sigma_hat(flipped), [np.sqrt(VARIANCE_FLOOR)], rtol=1e-12)


def test_committee_statistics_fields_and_shapes():
    prediction = random_prediction(n_members=4, natoms=(3, 5))
    stats = committee_statistics(prediction)
    assert stats.energy_mean.shape == stats.energy_std.shape == (2,)
    assert stats.force_mean.shape == stats.force_std.shape == stats.abs_force_std.shape == (8, 3)
    assert stats.force_sigma.shape == (8,)
    assert stats.virial_mean.shape == stats.virial_std.shape == (2, 3, 3)
    np.testing.assert_allclose(stats.energy_mean, prediction.energies.mean(0))
    np.testing.assert_allclose(stats.energy_std, prediction.energies.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(stats.force_mean, prediction.forces.mean(0))
    np.testing.assert_allclose(stats.force_std, prediction.forces.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(stats.abs_force_std, np.abs(prediction.forces).std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(stats.force_sigma, np.sqrt((stats.abs_force_std**2).sum(-1)), rtol=1e-10)
    np.testing.assert_allclose(stats.virial_mean, prediction.virials.mean(0))
    np.testing.assert_allclose(stats.virial_std, prediction.virials.std(0, ddof=1), rtol=1e-12)


def test_committee_statistics_without_virials():
    stats = committee_statistics(random_prediction(virials=False))
    assert stats.virial_mean is None and stats.virial_std is None


def test_one_member_has_no_spread():
    with pytest.raises(ValueError, match="at least two members"):
        member_variance(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least two members"):
        committee_statistics(random_prediction(n_members=1))


def test_statistics_on_torch_tensors_equal_numpy():
    forces = np.random.default_rng(3).normal(size=(5, 4, 3))
    tensor = torch.tensor(forces, dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(member_variance(tensor).detach().numpy(), member_variance(forces), rtol=1e-14)
    np.testing.assert_allclose(member_std(tensor).detach().numpy(), member_std(forces), rtol=1e-14)
    sigma = force_sigma_hat(tensor)
    np.testing.assert_allclose(sigma.detach().numpy(), force_sigma_hat(forces), rtol=1e-14)
    (gradient,) = torch.autograd.grad(sigma.sum(), tensor)
    assert torch.isfinite(gradient).all()


def test_torch_gradient_is_finite_at_zero_spread():
    tensor = torch.ones(3, 2, 3, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(force_sigma_hat(tensor).sum(), tensor)
    assert torch.isfinite(gradient).all()


# --- CommitteePrediction ---------------------------------------------------------------------


def test_prediction_members_selects_along_member_axis():
    prediction = random_prediction(n_members=4)
    picked = prediction.members([3, 1])
    assert picked.n_members == 2 and picked.n_structures == prediction.n_structures
    np.testing.assert_array_equal(picked.energies, prediction.energies[[3, 1]])
    np.testing.assert_array_equal(picked.forces, prediction.forces[[3, 1]])
    np.testing.assert_array_equal(picked.virials, prediction.virials[[3, 1]])
    np.testing.assert_array_equal(picked.natoms, prediction.natoms)
    assert random_prediction(virials=False).members([0, 1]).virials is None


def test_prediction_structure_forces_and_offsets():
    prediction = random_prediction(natoms=(3, 5, 2))
    np.testing.assert_array_equal(prediction.offsets, [0, 3, 8, 10])
    np.testing.assert_array_equal(prediction.structure_forces(0), prediction.forces[:, 0:3])
    np.testing.assert_array_equal(prediction.structure_forces(1), prediction.forces[:, 3:8])
    np.testing.assert_array_equal(prediction.structure_forces(2), prediction.forces[:, 8:10])


def test_prediction_uniform_forces():
    prediction = random_prediction(n_members=3, natoms=(4, 4, 4))
    uniform = prediction.uniform_forces()
    assert uniform.shape == (3, 3, 4, 3)
    for s in range(3):
        np.testing.assert_array_equal(uniform[:, s], prediction.structure_forces(s))
    with pytest.raises(ValueError, match="different numbers of atoms"):
        random_prediction(natoms=(4, 5)).uniform_forces()


def test_prediction_concatenate():
    first, second = random_prediction(natoms=(3, 5), seed=1), random_prediction(natoms=(2,), seed=2)
    joined = CommitteePrediction.concatenate([first, second])
    assert joined.n_structures == 3
    np.testing.assert_array_equal(joined.natoms, [3, 5, 2])
    np.testing.assert_array_equal(joined.energies, np.concatenate([first.energies, second.energies], axis=1))
    np.testing.assert_array_equal(joined.structure_forces(2), second.forces)
    np.testing.assert_array_equal(joined.virials[:, :2], first.virials)
    without = CommitteePrediction.concatenate([first, random_prediction(natoms=(2,), virials=False)])
    assert without.virials is None


# --- predict_in_batches ----------------------------------------------------------------------


def test_toy_committee_follows_the_protocol():
    assert isinstance(ToyCommittee(), Committee)


@pytest.mark.parametrize("batch_size", [1, 2, None])
def test_predict_in_batches_gives_identical_arrays(batch_size):
    structures = toy_structures()
    whole = ToyCommittee().predict(structures)
    committee = ToyCommittee()
    batched = predict_in_batches(committee, structures, batch_size)
    expected_calls = {1: [1] * 5, 2: [2, 2, 1], None: [5]}[batch_size]
    assert committee.calls == expected_calls
    for name in ("energies", "forces", "natoms", "virials"):
        np.testing.assert_array_equal(getattr(batched, name), getattr(whole, name))


def test_predict_in_batches_rejects_empty_batches():
    with pytest.raises(ValueError, match="batch_size"):
        predict_in_batches(ToyCommittee(), toy_structures(), 0)


# --- virial_from_stress ----------------------------------------------------------------------


def test_virial_from_stress_voigt_order_and_scale():
    stress = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # xx yy zz yz xz xy, eV/Å³
    expected = -10.0 * np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    np.testing.assert_array_equal(virial_from_stress(stress, 10.0), expected)


@pytest.mark.parametrize("scale, sign", [(1.04, -1.0), (0.96, +1.0)])
def test_virial_sign_under_tension_and_compression(scale, sign):
    """A stretched crystal pulls inwards (tension, P < 0); a compressed one pushes out (P > 0).

    With W = −V·stress the virial is −dE/dη: check that too by finite differences of the energy.
    """
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    atoms.calc = EMT()
    volume = atoms.get_volume()
    virial = virial_from_stress(atoms.get_stress(), volume)
    pressure = np.trace(virial) / (3 * volume)
    assert np.sign(pressure) == sign
    assert np.all(np.sign(np.diag(virial)) == sign)

    eta, cell = 1e-5, atoms.cell.copy()
    energies = []
    for strain in (+eta, -eta):
        atoms.set_cell(cell @ np.diag([1.0 + strain, 1.0, 1.0]), scale_atoms=True)
        energies.append(atoms.get_potential_energy())
    atoms.set_cell(cell, scale_atoms=True)
    assert virial[0, 0] == pytest.approx(-(energies[0] - energies[1]) / (2 * eta), rel=1e-5)
