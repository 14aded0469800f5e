"""Tests of cagoflow.morse_committee: the batched Morse committee against finite differences and ASE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

import cagoflow.morse_committee as morse_committee
from cagoflow.morse_committee import SKIN, MorseCalculator, MorseCommittee, MorseModel, MorsePair, build_pairs
from cagoflow.committee import DifferentiableCommittee, force_sigma_hat, member_std, virial_from_stress
from cagoflow.structures import water_box

#: Central differences with eps = 1e-5 Å (strain 1e-5) reproduce the analytic forces and virials
#: to about 1e-9 eV/Å and 1e-8 eV (forces up to ~0.7 eV/Å, virials up to ~30 eV here).
FD_EPS = 1e-5
FD_FORCE_ATOL = 1e-6  # eV/Å
FD_VIRIAL_ATOL = 1e-6  # eV
BATCH_ATOL = 1e-12


@pytest.fixture(scope="module")
def model() -> MorseModel:
    return MorseModel.for_symbols(["H", "O"], n_members=3, spread=0.05, seed=1)


@pytest.fixture(scope="module")
def box() -> Atoms:
    return water_box(8)


@pytest.fixture(scope="module")
def h2o() -> Atoms:
    """One non-periodic water molecule (no cell)."""
    return molecule("H2O")


def with_member(atoms: Atoms, model: MorseModel, member: int) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = MorseCalculator(model, member)
    return atoms


def rattled(atoms: Atoms, amplitude: float, seed: int) -> Atoms:
    """A copy with every coordinate moved by uniform noise in ±``amplitude`` Å."""
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).uniform(-amplitude, amplitude, size=atoms.positions.shape)
    return atoms


def assert_predictions_close(actual, expected, atol: float) -> None:
    np.testing.assert_array_equal(actual.natoms, expected.natoms)
    np.testing.assert_allclose(actual.energies, expected.energies, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.forces, expected.forces, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.virials, expected.virials, rtol=0, atol=atol)  # NaN == NaN here


def test_morse_committee_follows_the_protocol(model):
    assert isinstance(MorseCommittee(model), DifferentiableCommittee)


# --- derivatives against finite differences --------------------------------------------------


def test_periodic_forces_are_minus_energy_gradient(model, box):
    member = 1
    prediction = MorseCommittee(model).predict([box])
    numerical = calculate_numerical_forces(with_member(box, model, member), eps=FD_EPS)
    assert np.abs(numerical).max() > 0.1  # a real test: the forces are not all zero
    np.testing.assert_allclose(prediction.forces[member], numerical, rtol=0, atol=FD_FORCE_ATOL)


def test_periodic_virials_are_minus_volume_times_numerical_stress(model, box):
    prediction = MorseCommittee(model).predict([box])
    for member in range(model.n_members):
        atoms = with_member(box, model, member)
        numerical = virial_from_stress(calculate_numerical_stress(atoms, eps=FD_EPS), atoms.get_volume())
        assert np.abs(numerical).max() > 1.0
        np.testing.assert_allclose(prediction.virials[member, 0], numerical, rtol=0, atol=FD_VIRIAL_ATOL)


def test_molecule_forces_are_minus_energy_gradient_and_virials_nan(model, h2o):
    prediction = MorseCommittee(model).predict([h2o])
    for member in range(model.n_members):
        numerical = calculate_numerical_forces(with_member(h2o, model, member), eps=FD_EPS)
        np.testing.assert_allclose(prediction.forces[member], numerical, rtol=0, atol=FD_FORCE_ATOL)
    assert prediction.virials.shape == (3, 1, 3, 3)
    assert np.isnan(prediction.virials).all()


def test_energies_match_the_member_calculators(model, box, h2o):
    prediction = MorseCommittee(model).predict([box, h2o])
    for member in range(model.n_members):
        for s, atoms in enumerate([box, h2o]):
            energy = with_member(atoms, model, member).get_potential_energy()
            assert prediction.energies[member, s] == pytest.approx(energy, abs=BATCH_ATOL)


# --- the committee spread --------------------------------------------------------------------


def test_members_differ_with_spread_and_agree_without(box, h2o):
    different = MorseCommittee(MorseModel.for_symbols(["H", "O"], n_members=3, spread=0.05)).predict([box, h2o])
    assert np.all(member_std(different.energies) > 1e-3)
    assert np.all(force_sigma_hat(different.forces) > 1e-4)
    same = MorseCommittee(MorseModel.for_symbols(["H", "O"], n_members=3, spread=0.0)).predict([box, h2o])
    for member in (1, 2):
        np.testing.assert_array_equal(same.energies[member], same.energies[0])
        np.testing.assert_array_equal(same.forces[member], same.forces[0])
        np.testing.assert_array_equal(same.virials[member], same.virials[0])


def test_spread_grows_with_the_parameter_perturbation(box, h2o):
    """Same seed, doubled ``spread``: σ̂_F and σ̂_E double to first order (within 10 % here)."""
    sigma_f, sigma_e = [], []
    for spread in (0.005, 0.01, 0.02):
        committee = MorseCommittee(MorseModel.for_symbols(["H", "O"], n_members=4, spread=spread, seed=1))
        prediction = committee.predict([box, h2o])
        sigma_f.append(force_sigma_hat(prediction.forces).mean())
        sigma_e.append(member_std(prediction.energies))
    for k in (1, 2):
        assert sigma_f[k] / sigma_f[k - 1] == pytest.approx(2.0, rel=0.1)
        np.testing.assert_allclose(sigma_e[k] / sigma_e[k - 1], 2.0, rtol=0.1)


# --- batching and neighbour lists ------------------------------------------------------------


def test_batched_prediction_equals_one_at_a_time(model, box, h2o):
    structures = [box, h2o, water_box(4, seed=3), rattled(box, 0.3, seed=4), water_box(1, seed=5)]
    committee = MorseCommittee(model)
    batched = committee.predict(structures)
    assert batched.forces.shape == (3, sum(len(a) for a in structures), 3)
    for s, atoms in enumerate(structures):
        single = committee.predict([atoms])
        np.testing.assert_allclose(batched.energies[:, s], single.energies[:, 0], rtol=0, atol=BATCH_ATOL)
        np.testing.assert_allclose(batched.structure_forces(s), single.forces, rtol=0, atol=BATCH_ATOL)
        np.testing.assert_allclose(batched.virials[:, s], single.virials[:, 0], rtol=0, atol=BATCH_ATOL)


@pytest.fixture
def count_lists(monkeypatch):
    """Counts the neighbour lists that build_pairs builds."""
    calls = []

    def counting(atoms, cutoff):
        calls.append(len(atoms))
        return original(atoms, cutoff)

    original = morse_committee.close_pairs
    monkeypatch.setattr(morse_committee, "close_pairs", counting)
    return calls


def test_neighbour_list_reuse_within_the_skin(model, box, count_lists):
    """Structures within the skin of the first share its list and give the fresh-list numbers."""
    strained = box.copy()
    strained.set_cell(box.cell * (1.0 + 1e-3), scale_atoms=True)
    near = [box, rattled(box, 0.2 * SKIN, seed=1), rattled(box, 0.2 * SKIN, seed=2), strained]
    committee = MorseCommittee(model)
    batched = committee.predict(near)
    assert count_lists == [len(box)]
    n_pairs = len(build_pairs([box], model).i)
    np.testing.assert_array_equal(np.bincount(build_pairs(near, model).structure), [n_pairs] * 4)
    fresh = [committee.predict([atoms]) for atoms in near]
    for s, single in enumerate(fresh):
        np.testing.assert_allclose(batched.energies[:, s], single.energies[:, 0], rtol=0, atol=BATCH_ATOL)
        np.testing.assert_allclose(batched.structure_forces(s), single.forces, rtol=0, atol=BATCH_ATOL)
        np.testing.assert_allclose(batched.virials[:, s], single.virials[:, 0], rtol=0, atol=BATCH_ATOL)


def test_structure_beyond_the_skin_gets_its_own_list(model, box, count_lists):
    far = box.copy()
    far.positions[0] += [SKIN + 0.1, 0.0, 0.0]
    near = rattled(box, 0.2 * SKIN, seed=1)
    structures = [box, far, near]
    prediction = MorseCommittee(model).predict(structures)
    assert len(count_lists) == 3  # box; far moved beyond the skin; near is compared with far now
    for s, atoms in enumerate(structures):
        for member in range(model.n_members):
            energy = with_member(atoms, model, member).get_potential_energy()
            assert prediction.energies[member, s] == pytest.approx(energy, abs=BATCH_ATOL)


# --- members, torch energies, species --------------------------------------------------------


def test_subset_picks_members(model, box, h2o):
    committee = MorseCommittee(model)
    picked = committee.subset([2, 0])
    assert picked.n_members == 2
    full = committee.predict([box, h2o])
    assert_predictions_close(picked.predict([box, h2o]), full.members([2, 0]), atol=BATCH_ATOL)


def test_torch_energy_matches_predict(model, box, h2o):
    """Several structures of different sizes in one differentiable call."""
    structures = [box, h2o, box]
    committee = MorseCommittee(model)
    prediction = committee.predict(structures)
    energy_fn = committee.torch_energy(structures)
    M = model.n_members
    stacked = np.concatenate([atoms.positions for atoms in structures])
    positions = torch.tensor(np.repeat(stacked[None], M, axis=0), dtype=torch.float64, requires_grad=True)
    cells = torch.tensor(np.repeat(np.stack([np.asarray(a.cell) for a in structures])[None], M, axis=0), dtype=torch.float64)
    energies = energy_fn(positions, cells)
    assert energies.shape == (M, 3)
    np.testing.assert_allclose(energies.detach().numpy(), prediction.energies, rtol=0, atol=BATCH_ATOL)
    (gradient,) = torch.autograd.grad(energies.sum(), positions)
    np.testing.assert_allclose(-gradient.numpy(), prediction.forces, rtol=0, atol=BATCH_ATOL)


def test_unknown_species_raise_naming_the_atomic_number(model):
    methane = molecule("CH4")
    with pytest.raises(ValueError, match="atomic number 6"):
        MorseCommittee(model).predict([methane])
    with pytest.raises(ValueError, match="atomic number 6"):
        MorseCommittee(model).torch_energy([methane])


def test_from_pairs_dimer_minimum_at_r0():
    pair = MorsePair(D=0.8, alpha=2.0, r0=1.1)
    model = MorseModel.from_pairs({("O", "H"): pair}, cutoff=5.0, switch_width=1.0)
    assert model.species == (1, 8)

    def dimer(distance: float) -> Atoms:
        return Atoms("OH", positions=[[10.0, 10.0, 10.0], [10.0, 10.0, 10.0 + distance]], cell=[20.0] * 3, pbc=False)

    committee = MorseCommittee(model)
    at_r0 = committee.predict([dimer(pair.r0)])
    assert at_r0.energies[0, 0] == pytest.approx(-pair.D, abs=1e-12)
    np.testing.assert_allclose(at_r0.forces[0], 0.0, atol=1e-12)
    closer, farther = committee.predict([dimer(pair.r0 - 0.1), dimer(pair.r0 + 0.1)]).uniform_forces()[0]
    assert closer[1, 2] > 0 > farther[1, 2]  # repelled inside r0, attracted outside
    assert committee.predict([dimer(6.0)]).energies[0, 0] == 0.0  # beyond the cutoff
