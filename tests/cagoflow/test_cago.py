"""CAGO on the analytic Morse committee: reaching δ, gradients, safeguards, batching, the hit."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.units import GPa
from pydantic import ValidationError

from cagoflow.morse_committee import MorseCommittee, MorseModel
from cagoflow.cago import (
    CagoCalibration,
    CagoSettings,
    ContactGuard,
    RelativeDelta,
    cago_hit,
    run_cago,
    run_cago_batch,
    true_force_error,
)
from cagoflow.cago_gradients import ExactGradient, FiniteDifferenceGradient, choose_gradient
from cagoflow.cago_objective import Geometry, Objective, Problem
from cagoflow.calibration import PowerLaw
from cagoflow.committee import force_sigma_hat
from cagoflow.errors import InputError
from cagoflow.geometry import closest_contact, min_interatomic_distance, shortest_pair_distances
from cagoflow.structures import water_box

LAW = PowerLaw(a=1.2, b=0.9)
#: The analytic law, trusted everywhere: tests of the optimiser judge no validity limit.
CALIBRATION = CagoCalibration(LAW, validity_limit=np.inf)
#: The analytic committee's spread grows mostly when O–H bonds are compressed, and the ideal
#: test boxes have every bond at the same length: tests of the optimiser itself switch the limits off.
UNGUARDED = {"contact_guard": None, "trust_region": None, "packing_guard": None}
#: Only the close-contact guard on.
CONTACT_ONLY = {"trust_region": None, "packing_guard": None}


def trusted(**fields) -> CagoCalibration:
    """The analytic law trusted everywhere, with the given guard data."""
    return CagoCalibration(LAW, validity_limit=np.inf, **fields)


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

    def __init__(self, inner: MorseCommittee, calls: list[int] | None = None):
        self.inner = inner
        self.calls: list[int] = [] if calls is None else calls  # shared with its subsets

    @property
    def n_members(self) -> int:
        return self.inner.n_members

    def predict(self, structures):
        self.calls.append(len(structures))
        return self.inner.predict(structures)

    def subset(self, members):
        return NoExactGradient(self.inner.subset(members), self.calls)


def initial_sigma(committee, atoms) -> float:
    sigma = LAW(force_sigma_hat(committee.predict([atoms]).forces))
    return float(np.sqrt(np.mean(sigma**2)))


def largest_steps(result) -> list[float]:
    """Largest distance any atom moved in each iteration, Å."""
    return [
        float(np.linalg.norm(b.positions - a.positions, axis=1).max())
        for a, b in zip(result.trajectory, result.trajectory[1:])
    ]


@pytest.mark.parametrize("factor", [1.5, 0.6], ids=["from-below", "from-above"])
def test_cago_reaches_delta(committee, box, factor):
    delta = factor * initial_sigma(committee, box)
    result = run_cago(box, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta=delta, max_steps=100))
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


def test_step_limit_walks_to_delta(committee, box):
    """No atom moves more than max_step per iteration; the first step is max_step long."""
    delta = 2.0 * initial_sigma(committee, box)
    for max_step in (0.05, 0.1):
        result = run_cago(box, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta=delta, max_steps=100, max_step=max_step))
        assert result.reached
        steps = largest_steps(result)
        assert max(steps) <= max_step * (1 + 1e-6)
        assert steps[0] == pytest.approx(max_step, rel=0.03)
        assert result.n_steps >= 3  # walked there, did not jump
        assert result.max_displacement > 0


def test_cago_with_finite_differences_reaches_delta(committee, small_box):
    delta = 1.5 * initial_sigma(committee, small_box)
    fd = NoExactGradient(committee)
    result = run_cago(small_box, fd, CALIBRATION, CagoSettings(**UNGUARDED, delta=delta, max_steps=50))
    assert result.gradient == "finite_difference"
    assert result.reached
    # the starting prediction, then every gradient is ONE committee call of 3N + 6 + 1 structures
    assert fd.calls[0] == 1 and set(fd.calls[1:]) == {3 * len(small_box) + 6 + 1}
    assert result.n_structure_evaluations == sum(fd.calls[1:])


@pytest.mark.slow
def test_batched_and_single_finite_differences_are_identical(committee, small_box):
    delta = 1.5 * initial_sigma(committee, small_box)
    settings = CagoSettings(**UNGUARDED, delta=delta, gradient="finite_difference", max_steps=5)
    batched = run_cago(small_box, committee, CALIBRATION, settings)
    single = run_cago(small_box, committee, CALIBRATION, settings, gradient=FiniteDifferenceGradient(committee, batch_size=1))
    assert batched.n_steps == single.n_steps
    assert batched.sigma_history == pytest.approx(single.sigma_history, rel=1e-12, abs=0)
    np.testing.assert_allclose(batched.atoms.positions, single.atoms.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(batched.atoms.cell, single.atoms.cell, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("gradient", ["exact", "finite_difference"])
def test_many_structures_at_once_equal_one_at_a_time(committee, gradient):
    """Vectorised CAGO: four structures in lock-step, one committee call per round, give the
    one-at-a-time results; FD rounds evaluate all still-running structures in one call."""
    starts = [water_box(4, seed=seed) for seed in range(4)]
    starts[3] = water_box(3, seed=9)  # a different size in the same batch
    delta = 1.4 * np.mean([initial_sigma(committee, atoms) for atoms in starts])
    settings = CagoSettings(**UNGUARDED, delta=delta, max_steps=40, gradient=gradient)
    counting = NoExactGradient(committee) if gradient == "finite_difference" else committee
    together = run_cago_batch(starts, counting, CALIBRATION, settings)
    alone = [run_cago(atoms, committee, CALIBRATION, settings) for atoms in starts]
    for a, b in zip(together, alone):
        assert a.reason == b.reason and a.n_steps == b.n_steps
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.sigma_history, b.sigma_history, rtol=1e-8)
    if gradient == "finite_difference":
        sizes = [3 * len(atoms) + 7 for atoms in starts]
        assert counting.calls[1] == sum(sizes)  # round 1: all four structures in ONE call
        assert len(counting.calls) == 1 + max(r.n_steps + 1 for r in together)


def test_exact_gradient_matches_finite_differences(committee, box):
    """All terms on: force bias and pressure bias (relative error < 1e-4)."""
    geometry = Geometry(box, optimize_cell=True)
    objective = Objective(LAW, 0.3, force_bias=0.1, pressure_weight=1.0, target_pressure=1e4)
    problem = Problem(geometry, objective)
    rng = np.random.default_rng(3)
    z = geometry.initial() + rng.normal(0.0, 0.02, geometry.n_variables)
    (exact,) = ExactGradient(committee)([problem], [z])
    (fd,) = FiniteDifferenceGradient(committee, step=1e-5)([problem], [z])
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
    plain = Objective(LAW, delta)
    sigma = LAW(force_sigma_hat(forces))
    assert plain(forces) == pytest.approx(np.mean((sigma - delta) ** 2) / delta**2)
    biased = Objective(LAW, delta, force_bias=0.5)
    extra = 0.5 * np.sum(forces.mean(0) ** 2) / (len(box) * delta**2)
    assert biased(forces) == pytest.approx(plain(forces) + extra)
    pressure = Objective(LAW, delta, pressure_weight=2.0, target_pressure=0.0)
    assert pressure(forces, pressures) == pytest.approx(plain(forces) + 2.0 * (pressures.mean() / GPa) ** 2)


def test_contact_guard_learned_from_the_training_set(committee, box):
    """Limits at 0.85 × the training set's shortest distances: CAGO never returns a structure inside."""
    training = shortest_pair_distances([box])
    delta = 3.0 * initial_sigma(committee, box)
    settings = CagoSettings(**CONTACT_ONLY, delta=delta, max_steps=40)
    free = run_cago(box, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta=delta, max_steps=40))
    guarded = run_cago(box, committee, trusted(contact_distances=training), settings)
    assert closest_contact(free.atoms, {k: 0.85 * v for k, v in training.items()})[0] < 1.0  # unguarded goes inside
    assert guarded.guard == pytest.approx({k: 0.85 * v for k, v in training.items()})
    for atoms in guarded.trajectory:
        assert closest_contact(atoms, guarded.guard)[0] >= 1.0
    assert "contact" in guarded.flags
    assert guarded.closest_contact[0] >= 0.85 and guarded.closest_contact[1] in training


def fooled_committee() -> tuple[MorseCommittee, MorseModel]:
    """Three members that agree closely near their minimum and part at short range (they differ
    in the width α of the O–H well only), and a truth with a much stiffer O–H wall: pushed
    together, the members' spread grows more slowly than their error."""
    base = MorseModel.for_symbols(["O", "H"], n_members=3, spread=0.0)
    alpha = base.alpha.copy()
    alpha[:, 0, 1] = alpha[:, 1, 0] = 1.5 * np.array([0.97, 1.0, 1.03])
    truth = MorseModel.for_symbols(["O", "H"], n_members=1, spread=0.0)
    stiff = truth.alpha.copy()
    stiff[:, 0, 1] = stiff[:, 1, 0] = 2.4
    from dataclasses import replace

    return MorseCommittee(replace(base, alpha=alpha)), replace(truth, alpha=stiff)


@pytest.mark.slow
def test_a_fooled_small_committee_stays_outside_the_guard_and_walks():
    """Large δ on a committee whose spread under-reports short-range errors: with the guard and
    the step limit CAGO neither returns a structure inside the guard nor jumps there."""
    committee, _ = fooled_committee()
    start = water_box(8, seed=2)
    training = shortest_pair_distances([water_box(8, seed=s) for s in range(3)])
    delta = 4.0 * initial_sigma(committee, start)
    result = run_cago(start, committee, trusted(contact_distances=training), CagoSettings(**CONTACT_ONLY, delta=delta))
    for atoms in result.trajectory:
        assert closest_contact(atoms, result.guard)[0] >= 1.0
    assert max(largest_steps(result)) <= 0.1 * (1 + 1e-6)
    assert result.n_steps > 2 and "fast" not in result.flags
    unguarded = run_cago(start, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta=delta))
    assert closest_contact(unguarded.atoms, result.guard)[0] < 1.0  # without the guard it is fooled


def test_trust_region_and_packing_guard_stop_what_the_contact_guard_lets_through():
    """The fooled committee walked on by the contact guard alone moves far and changes the
    packing; the trust region keeps every atom within its radius, the packing guard keeps the
    mean nearest-neighbour distances within the data's range, and each says it stopped the walk."""
    from cagoflow.geometry import neighbour_distance_ranges, packing_departure

    committee, _ = fooled_committee()
    start = water_box(8, seed=2)
    data = [water_box(8, seed=s) for s in range(3)]
    training = shortest_pair_distances(data)
    ranges = neighbour_distance_ranges(data)
    delta = 4.0 * initial_sigma(committee, start)
    contact_only = run_cago(start, committee, trusted(contact_distances=training), CagoSettings(**CONTACT_ONLY, delta=delta))
    assert contact_only.max_displacement > 0.3
    assert packing_departure(contact_only.atoms, ranges)[0] > 0.03  # the pair floor lets this through
    region = CagoSettings(delta=delta, packing_guard=None, trust_region={"radius": 0.15})
    held = run_cago(start, committee, trusted(contact_distances=training), region)
    assert held.reason == "trust_region" and "trust_region" in held.flags
    assert held.trust_radius == 0.15 and held.max_displacement <= 0.15 + 1e-9
    packed = run_cago(start, committee, trusted(contact_distances=training, packing_ranges=ranges),
                      CagoSettings(delta=delta, trust_region=None))  # fmt: skip
    assert packed.reason == "packing" and "packing" in packed.flags
    for atoms in packed.trajectory:
        assert packing_departure(atoms, ranges)[0] <= 0.03 + 1e-12
    assert packed.summary()["packing_departure"] <= 0.03 + 1e-12


def test_packing_guard_lets_a_start_outside_the_data_walk_but_not_further_out():
    """An MD frame whose packing already lies outside the data's range (here: the data are the
    start expanded by 6 %) is still walked: the guard's range holds the start's own packing, and
    no step takes it more than the margin beyond that; the result reports its departure from
    the data's range."""
    from cagoflow.geometry import mean_neighbour_distances, neighbour_distance_ranges, packing_departure, ranges_including

    committee, _ = fooled_committee()
    start = water_box(8, seed=2)
    expanded = start.copy()
    expanded.set_cell(start.cell * 1.06, scale_atoms=True)
    ranges = neighbour_distance_ranges([expanded])
    assert packing_departure(start, ranges)[0] > 0.03  # outside the data's range, beyond the margin
    widened = ranges_including(ranges, start)
    assert all(low <= mean_neighbour_distances(start)[name] <= high for name, (low, high) in widened.items())
    delta = 4.0 * initial_sigma(committee, start)
    training = shortest_pair_distances([start])
    packed = run_cago(start, committee, trusted(contact_distances=training, packing_ranges=ranges),
                      CagoSettings(delta=delta, trust_region=None))  # fmt: skip
    assert packed.n_steps > 2 and packed.max_displacement > 0.05  # it walked
    for atoms in packed.trajectory:
        assert packing_departure(atoms, widened)[0] <= 0.03 + 1e-12
    assert packed.summary()["packing_departure"] == pytest.approx(packing_departure(packed.atoms, ranges)[0])


def test_trust_radius_derived_from_md_frames(committee):
    """Default radius: 3 × the thermal displacement of the frames CAGO starts from; one
    frame alone gives none, and the error says which field to set."""
    from cagoflow.geometry import thermal_displacement

    frames = [water_box(8, seed=0) for _ in range(4)]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=k)
    delta = 1.5 * initial_sigma(committee, frames[0])
    results = run_cago_batch(frames, committee, CALIBRATION, CagoSettings(delta=delta, max_steps=3, packing_guard=None))
    assert results[0].trust_radius == pytest.approx(3 * thermal_displacement(frames))
    with pytest.raises(InputError, match="trust_region"):
        run_cago(frames[0], committee, CALIBRATION, CagoSettings(delta=delta))


def test_labelled_walks_narrow_the_trust_radius_and_fail_closed(committee):
    """The labelled walks of the test split narrow the radius (never widen it); where they trust
    no displacement the radius is 0 and CAGO pushes nothing (``no_trust``); too few walks, or
    ``from_walks`` off, leave it as it was. Every walk records its largest displacement in its info."""
    from cagoflow.cago import TrustRegion
    from cagoflow.walk_validity import DISPLACEMENT_KEY, DisplacementBin, WalkCheck

    holds, fails = DisplacementBin(0.0, 0.1, 8, 1.0, 0.9, 1.1), DisplacementBin(0.0, 0.1, 8, 2.0, 1.5, 2.2)
    region = TrustRegion()
    assert region.narrowed(0.3, WalkCheck(8, (holds,), 0.1)) == (0.1, "walks")
    assert region.narrowed(0.05, WalkCheck(8, (holds,), 0.1)) == (0.05, "thermal")
    assert region.narrowed(0.3, WalkCheck(8, (fails,), None)) == (0.0, "walks: none holds")
    assert region.narrowed(0.3, WalkCheck(5, (), None)) == (0.3, "thermal")
    assert region.narrowed(0.3, None) == (0.3, "thermal")
    assert TrustRegion(radius=0.2).narrowed(0.2, WalkCheck(8, (holds,), 0.1)) == (0.1, "walks")
    assert TrustRegion(from_walks=False).narrowed(0.3, WalkCheck(8, (fails,), None)) == (0.3, "thermal")

    frames = [water_box(8, seed=0) for _ in range(2)]
    for k, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=k)
    delta = 1.5 * initial_sigma(committee, frames[0])
    settings = CagoSettings(delta=delta, max_steps=5, packing_guard=None, contact_guard=None)
    walked = run_cago_batch(frames, committee, CALIBRATION, settings, trust_radius=0.2)
    assert all(r.n_steps > 0 and r.atoms.info[DISPLACEMENT_KEY] == r.max_displacement > 0 for r in walked)
    refused = run_cago_batch(frames, committee, CALIBRATION, settings, trust_radius=0.0)
    for result, start in zip(refused, frames):
        assert result.reason == "no_trust" and result.delta is None and result.direction == "unmoved" and result.n_steps == 0
        assert result.atoms.positions == pytest.approx(start.positions) and "trust radius 0" in result.warnings[-1]


def test_fast_flag(committee, box):
    delta = 1.08 * initial_sigma(committee, box)
    result = run_cago(box, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta=delta, max_steps=20))
    assert result.reached and 1 <= result.n_steps <= 2
    assert result.flags == ("fast",)
    assert result.summary()["flags"] == ["fast"]


def test_relative_delta_goes_up_and_never_clamps_down(committee, box):
    """A relative δ targets factor × the start's own σ_cal, upward; where that lies above the
    validity limit the start is not pushed (no_room) instead of being walked down to the limit."""
    start = initial_sigma(committee, box)
    result = run_cago(box, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta={"relative": 1.5}, max_steps=60))
    assert result.requested_delta == pytest.approx(1.5 * start) and result.delta == pytest.approx(1.5 * start)
    assert result.reached and result.direction == "up"
    assert result.start_sigma_cal == pytest.approx(start)
    assert result.summary()["direction"] == "up" and result.summary()["start_sigma_cal"] == pytest.approx(start)
    no_room = run_cago(
        box, committee, CagoCalibration(LAW, validity_limit=1.2 * start), CagoSettings(**UNGUARDED, delta=RelativeDelta(relative=1.5))
    )
    assert no_room.reason == "no_room" and no_room.delta is None and no_room.direction == "unmoved"
    assert no_room.requested_delta == pytest.approx(1.5 * start) and no_room.n_steps == 0
    assert "no room" in no_room.warnings[0]


def test_absolute_delta_is_two_sided_and_reports_its_direction(committee, box):
    """An absolute δ below the start walks down, as in the paper, and says so."""
    start = initial_sigma(committee, box)
    down = run_cago(box, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta=0.7 * start, max_steps=80))
    assert down.reached and down.direction == "down" and down.sigma_cal_rms < start


def test_delta_above_validity_is_clamped_or_refused(committee, box):
    limit = 0.8 * initial_sigma(committee, box)
    result = run_cago(box, committee, CagoCalibration(LAW, validity_limit=limit), CagoSettings(**UNGUARDED, delta=2 * limit, max_steps=50))
    assert result.delta == limit
    assert result.requested_delta == 2 * limit
    assert result.warnings and "validity limit" in result.warnings[0]
    assert abs(result.sigma_cal_rms - limit) <= 0.05 * limit
    with pytest.raises(InputError, match="validity limit"):
        run_cago(
            box, committee, CagoCalibration(LAW, validity_limit=limit), CagoSettings(**UNGUARDED, delta=2 * limit, above_validity="refuse")
        )


def test_no_validity_limit_refuses_delta(committee, box):
    """A calibration without a validity limit pushes nothing: the structure comes back unmoved."""
    unknown = run_cago(box, committee, CagoCalibration(LAW), CagoSettings(**UNGUARDED, delta=0.1, max_steps=3))
    assert unknown.reason == "no_limit" and unknown.delta is None and unknown.direction == "unmoved"
    assert "no validity limit" in unknown.warnings[0] and unknown.atoms.positions == pytest.approx(box.positions)


def test_points_above_delta(committee, box):
    calibration = trusted(test_sigma_cal=np.array([0.05, 0.1, 0.2, 0.3]))
    result = run_cago(box, committee, calibration, CagoSettings(**UNGUARDED, delta=0.15, max_steps=1))
    assert result.points_above_delta == 2


def test_molecule_without_cell(committee):
    water = molecule("H2O")
    delta = 1.5 * initial_sigma(committee, water)
    result = run_cago(water, committee, CALIBRATION, CagoSettings(**UNGUARDED, delta=delta, max_steps=100))
    assert result.reached
    np.testing.assert_array_equal(result.atoms.cell, water.cell)


def test_gradient_choice(committee):
    assert choose_gradient(committee, "auto") == "exact"
    assert choose_gradient(NoExactGradient(committee), "auto") == "finite_difference"
    assert choose_gradient(committee, "finite_difference") == "finite_difference"
    with pytest.raises(InputError, match="no exact gradient"):
        choose_gradient(NoExactGradient(committee), "exact")


@pytest.mark.parametrize(
    "kwargs, field",
    [({"delta": 0.0}, "delta"), ({"delta": -0.1}, "delta"), ({"tolerance": 1.5}, "tolerance"),
     ({"max_steps": 0}, "max_steps"), ({"fd_step": 0.0}, "fd_step"), ({"max_step": 2.0}, "max_step"),
     ({"delta": {"relative": 0}}, "delta"), ({"delta": {"relative": 1.0}}, "delta"),
     ({"trust_region": {"radius": 0}}, "trust_region"), ({"packing_guard": {"margin": -0.1}}, "packing_guard"), ({"contact_guard": {"fraction": 1.5}}, "contact_guard")],
)  # fmt: skip
def test_impossible_settings(kwargs, field):
    with pytest.raises(ValidationError) as info:
        CagoSettings(**kwargs)
    assert info.value.errors()[0]["loc"][0] == field


def test_default_guard_is_on():
    assert CagoSettings().contact_guard == ContactGuard(fraction=0.85)


def test_true_error_and_hit():
    reference = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    members = np.stack([reference + [[0.3, 0.0, 0.0], [0.0, 0.4, 0.0]], reference - [[0.3, 0.0, 0.0], [0.0, 0.4, 0.0]]])
    # e_0 = 0.3, e_1 = 0.4 → RMS over atoms sqrt((0.09 + 0.16)/2)
    assert true_force_error(members, reference) == pytest.approx(np.sqrt(0.125))
    hit = cago_hit(members, reference, delta=0.25)
    assert hit.ratio == pytest.approx(np.sqrt(0.125) / 0.25)
    assert hit.provenance() == {"true_error": hit.true_error, "delta": 0.25, "hit_ratio": hit.ratio}


def test_min_interatomic_distance_of_the_start_is_kept_by_default_guard(committee, box):
    """Without training distances the guard uses the starting structures' own shortest pairs."""
    delta = 3.0 * initial_sigma(committee, box)
    result = run_cago(box, committee, CALIBRATION, CagoSettings(**CONTACT_ONLY, delta=delta, max_steps=40))
    assert min_interatomic_distance(result.atoms) >= 0.85 * min_interatomic_distance(box) - 1e-9


def test_labelled_hits_one_prediction_per_subset(committee, small_box):
    """Hits of labelled structures: one predict per member subset, a true error only without δ."""
    from cagoflow.cago import labelled_hits
    from cagoflow.demo import label
    from cagoflow.morse_committee import MorseCalculator

    truth = MorseCalculator(MorseModel.for_symbols(["O", "H"]))
    structures = label([water_box(4, seed=seed) for seed in range(3)], truth)
    counting = NoExactGradient(committee)
    figures = labelled_hits(counting, structures, [[0, 1], [1, 2], [0, 1]], [0.2, None, 0.3])  # 1: a baseline frame under a relative δ
    expected = cago_hit(committee.subset([0, 1]).predict([structures[0]]).forces, structures[0].get_forces(), 0.2)
    assert figures[0] == pytest.approx(expected.provenance())
    assert set(figures[1]) == {"true_error"} and figures[1]["true_error"] > 0
    assert figures[2]["delta"] == 0.3 and figures[2]["hit_ratio"] == pytest.approx(figures[2]["true_error"] / 0.3)
    assert counting.calls == [2, 1]  # one prediction per subset: structures 0 and 2 together
