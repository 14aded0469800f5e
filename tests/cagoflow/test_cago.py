"""CAGO on the analytic Morse committee: reaching δ, gradients, safeguards, the hit."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.units import GPa

from cagoflow.analytic import MorseCommittee, MorseModel
from cagoflow.autograd import ExactGradient
from cagoflow.cago import (
    CagoSettings,
    FiniteDifferenceGradient,
    Geometry,
    Objective,
    cago_hit,
    choose_gradient,
    run_cago,
    true_force_error,
)
from cagoflow.calibration import PowerLaw
from cagoflow.committee import force_sigma_hat
from cagoflow.errors import InputError
from cagoflow.geometry import min_interatomic_distance
from cagoflow.structures import water_box

LAW = PowerLaw(a=1.2, b=0.9)


@pytest.fixture(scope="module")
def committee() -> MorseCommittee:
    return MorseCommittee(MorseModel.for_symbols(["O", "H"], n_members=3, spread=0.05, seed=1))


@pytest.fixture(scope="module")
def box():
    return water_box(8, seed=0)


@pytest.fixture(scope="module")
def small_box():
    return water_box(4, seed=0)


class NoExactGradient:
    """The same committee without its torch energy: CAGO must fall back to finite differences.

    Records the size of every prediction call.
    """

    def __init__(self, inner: MorseCommittee):
        self.inner = inner
        self.calls: list[int] = []

    @property
    def n_members(self) -> int:
        return self.inner.n_members

    def predict(self, structures):
        self.calls.append(len(structures))
        return self.inner.predict(structures)

    def subset(self, members):
        return NoExactGradient(self.inner.subset(members))


def initial_sigma(committee, atoms) -> float:
    sigma = LAW(force_sigma_hat(committee.predict([atoms]).forces))
    return float(np.sqrt(np.mean(sigma**2)))


@pytest.mark.parametrize("factor", [1.5, 0.6], ids=["from-below", "from-above"])
def test_cago_reaches_delta(committee, box, factor):
    delta = factor * initial_sigma(committee, box)
    result = run_cago(box, committee, LAW, CagoSettings(delta=delta, max_steps=100))
    assert result.reason == "reached"
    assert result.gradient == "exact"
    assert abs(result.sigma_cal_rms - delta) <= 0.05 * delta
    assert result.sigma_history[0] == pytest.approx(initial_sigma(committee, box))
    assert result.sigma_history[-1] == pytest.approx(result.sigma_cal_rms)
    assert len(result.trajectory) == result.n_steps + 1 == len(result.sigma_history)
    assert result.atoms.info["cago_reason"] == "reached"
    # the calibrated σ of the final structure, recomputed independently
    assert initial_sigma(committee, result.atoms) == pytest.approx(result.sigma_cal_rms, rel=1e-9)
    # the cell moved too (periodic box, optimize_cell by default)
    assert not np.allclose(result.atoms.cell, box.cell)


def test_cago_with_finite_differences_reaches_delta(committee, small_box):
    delta = 1.5 * initial_sigma(committee, small_box)
    fd = NoExactGradient(committee)
    result = run_cago(small_box, fd, LAW, CagoSettings(delta=delta, max_steps=50))
    assert result.gradient == "finite_difference"
    assert result.reached
    # every gradient is ONE committee call of 3N + 6 + 1 structures
    assert set(fd.calls) == {3 * len(small_box) + 6 + 1}
    assert result.n_structure_evaluations == sum(fd.calls)


def test_batched_and_single_finite_differences_are_identical(committee, small_box):
    delta = 1.5 * initial_sigma(committee, small_box)
    batched = run_cago(small_box, committee, LAW, CagoSettings(delta=delta, gradient="finite_difference", max_steps=5))
    single = run_cago(
        small_box, committee, LAW, CagoSettings(delta=delta, gradient="finite_difference", max_steps=5, batch_size=1)
    )
    assert batched.n_steps == single.n_steps
    assert batched.sigma_history == pytest.approx(single.sigma_history, rel=1e-12, abs=0)
    np.testing.assert_allclose(batched.atoms.positions, single.atoms.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batched.atoms.cell, single.atoms.cell, rtol=0, atol=1e-12)


def test_exact_gradient_matches_finite_differences(committee, box):
    """All terms on: force bias, pressure bias, close-contact guard (relative error < 1e-4)."""
    settings = CagoSettings(delta=0.3, l_bias=0.1, pressure_weight=1.0, target_pressure=1e4, min_distance=1.0)
    geometry = Geometry(box, optimize_cell=True)
    objective = Objective(LAW, settings, settings.delta)
    rng = np.random.default_rng(3)
    z = geometry.initial() + rng.normal(0.0, 0.02, geometry.n_variables)
    exact = ExactGradient(committee, geometry, objective)(z)
    fd = FiniteDifferenceGradient(committee, geometry, objective, step=1e-5)(z)
    assert exact.value == pytest.approx(fd.value, rel=1e-12)
    scale = np.abs(exact.gradient).max()
    assert np.abs(exact.gradient - fd.gradient).max() / scale < 1e-4
    np.testing.assert_allclose(exact.sigma_cal, fd.sigma_cal, rtol=1e-12)


def test_objective_terms(committee, box):
    """L = mean over atoms of (σ_cal − δ)²/δ² plus the bias terms, as documented."""
    prediction = committee.predict([box])
    forces = prediction.forces
    pressures = np.trace(prediction.virials[:, 0], axis1=-2, axis2=-1) / (3 * box.get_volume())
    delta = 0.2
    plain = Objective(LAW, CagoSettings(delta=delta), delta)
    sigma = LAW(force_sigma_hat(forces))
    assert plain(forces) == pytest.approx(np.mean((sigma - delta) ** 2) / delta**2)
    biased = Objective(LAW, CagoSettings(delta=delta, l_bias=0.5), delta)
    extra = 0.5 * np.sum(forces.mean(0) ** 2) / (len(box) * delta**2)
    assert biased(forces) == pytest.approx(plain(forces) + extra)
    pressure = Objective(LAW, CagoSettings(delta=delta, pressure_weight=2.0, target_pressure=0.0), delta)
    assert pressure(forces, pressures) == pytest.approx(plain(forces) + 2.0 * (pressures.mean() / GPa) ** 2)


def test_close_contact_guard_keeps_atoms_apart(committee, box):
    delta = 1.5 * initial_sigma(committee, box)
    free = run_cago(box, committee, LAW, CagoSettings(delta=delta, max_steps=30))
    guarded = run_cago(box, committee, LAW, CagoSettings(delta=delta, max_steps=30, min_distance=0.9))
    assert min_interatomic_distance(free.atoms) < 0.8
    assert min_interatomic_distance(guarded.atoms) > 0.85


def test_delta_above_validity_is_clamped_or_refused(committee, box):
    limit = 0.8 * initial_sigma(committee, box)
    result = run_cago(box, committee, LAW, CagoSettings(delta=2 * limit, max_steps=50), validity_limit=limit)
    assert result.delta == limit
    assert result.requested_delta == 2 * limit
    assert result.warnings and "validity limit" in result.warnings[0]
    assert abs(result.sigma_cal_rms - limit) <= 0.05 * limit
    with pytest.raises(InputError, match="validity limit"):
        run_cago(box, committee, LAW, CagoSettings(delta=2 * limit, above_validity="refuse"), validity_limit=limit)


def test_molecule_without_cell(committee):
    water = molecule("H2O")
    delta = 1.5 * initial_sigma(committee, water)
    result = run_cago(water, committee, LAW, CagoSettings(delta=delta, max_steps=100))
    assert result.reached
    np.testing.assert_array_equal(result.atoms.cell, water.cell)


def test_gradient_choice(committee):
    assert choose_gradient(committee, CagoSettings(delta=0.1)) == "exact"
    assert choose_gradient(NoExactGradient(committee), CagoSettings(delta=0.1)) == "finite_difference"
    assert choose_gradient(committee, CagoSettings(delta=0.1, gradient="finite_difference")) == "finite_difference"
    with pytest.raises(InputError, match="no exact gradient"):
        choose_gradient(NoExactGradient(committee), CagoSettings(delta=0.1, gradient="exact"))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"delta": 0.0}, "cago.delta"), ({"delta": -0.1}, "cago.delta"), ({"delta": 0.1, "tolerance": 1.5}, "cago.tolerance"),
     ({"delta": 0.1, "max_steps": 0}, "cago.max_steps"), ({"delta": 0.1, "fd_step": 0.0}, "cago.fd_step")],
)  # fmt: skip
def test_impossible_settings(kwargs, field):
    with pytest.raises(InputError) as info:
        CagoSettings(**kwargs)
    assert info.value.field == field


def test_true_error_and_hit():
    reference = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    members = np.stack([reference + [[0.3, 0.0, 0.0], [0.0, 0.4, 0.0]], reference - [[0.3, 0.0, 0.0], [0.0, 0.4, 0.0]]])
    # e_0 = 0.3, e_1 = 0.4 → RMS over atoms sqrt((0.09 + 0.16)/2)
    assert true_force_error(members, reference) == pytest.approx(np.sqrt(0.125))
    hit = cago_hit(members, reference, delta=0.25)
    assert hit.ratio == pytest.approx(np.sqrt(0.125) / 0.25)
    assert hit.provenance() == {"true_error": hit.true_error, "delta": 0.25, "hit_ratio": hit.ratio}
