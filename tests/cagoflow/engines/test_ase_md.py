"""Tests of cagoflow.engines.ase_md and cagoflow.engines.committee_mean_calculator.

Test system: eight water molecules at 0.5 g/cm³ with a Morse committee whose cutoff (1.3 Å)
only reaches bonded O–H pairs. The default Morse parameters attract every H to every O (1 eV
wells), so at full cutoff the water box collapses and heats to thousands of K within 100 fs;
with the short cutoff at half the density the molecules stay intact over these short runs: a
gas of flexible molecules whose total energy NVE conserves and whose temperature a thermostat
can hold. The same committee with the signs of its well depths flipped (attraction down to
r = 0) is the deliberately unstable model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from cagoflow.morse_committee import MorseCommittee, MorseModel
from cagoflow.committee import Committee, committee_statistics
from cagoflow.engines.md_settings import MDStage
from cagoflow.engines.ase_md import FRAME_INFO_KEYS, MDResult, run_md
from cagoflow.engines.committee_mean_calculator import CommitteeMeanCalculator
from cagoflow.geometry import min_interatomic_distance
from cagoflow.structures import water_box

#: NVT: the mean kinetic temperature of a 200 fs run may differ from the target by this fraction
#: (24 atoms: single frames fluctuate by ±30 %).
TEMPERATURE_RTOL = 0.15
#: NVE at 0.5 fs: largest deviation of the total energy from its start, eV (kinetic energy ≈ 0.9 eV).
NVE_ENERGY_ATOL = 0.02


#: The machine is shared: one torch thread is 3× faster here than two for 24 atoms.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> MorseModel:
    return MorseModel.for_symbols(["O", "H"], n_members=3, spread=0.02, cutoff=1.3, switch_width=0.3)


@pytest.fixture(scope="module")
def committee(model) -> MorseCommittee:
    return MorseCommittee(model)


@pytest.fixture(scope="module")
def gas() -> Atoms:
    return water_box(8, density_g_cm3=0.5)


def stage(**kwargs) -> MDStage:
    settings = {"temperature": 300.0, "timestep": 0.5, "steps": 100, "dump_interval": 10, "thermostat_damping": 25.0}
    settings.update(kwargs)
    return MDStage(**settings)


# --- CommitteeMeanCalculator ----------------------------------------------------------------------


def test_committee_calculator_gives_the_committee_mean(committee):
    atoms = water_box(8)
    prediction = committee.predict([atoms])
    atoms.calc = CommitteeMeanCalculator(committee)
    assert atoms.get_potential_energy() == pytest.approx(prediction.energies[:, 0].mean(), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), prediction.forces.mean(0), atol=1e-12)
    stress = -prediction.virials[:, 0].mean(0) / atoms.get_volume()
    np.testing.assert_allclose(atoms.get_stress(voigt=False), stress, atol=1e-12)
    statistics = atoms.calc.statistics
    np.testing.assert_allclose(statistics.force_sigma, committee_statistics(prediction).force_sigma)


def test_committee_calculator_forces_are_the_gradient_of_its_energy():
    committee = MorseCommittee(MorseModel.for_symbols(["O", "H"], n_members=3, spread=0.05))
    atoms = water_box(2)
    atoms.calc = CommitteeMeanCalculator(committee)
    forces = atoms.get_forces()
    h = 1e-5
    for index, axis in [(0, 0), (1, 2), (4, 1)]:
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[index, axis] += sign * h
            displaced.calc = CommitteeMeanCalculator(committee)
            energies.append(displaced.get_potential_energy())
        assert forces[index, axis] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-6)


def test_committee_calculator_one_evaluation_per_structure(committee):
    calls = []

    class Counting:
        n_members = committee.n_members

        def predict(self, structures):
            calls.append(len(structures))
            return committee.predict(structures)

        def subset(self, members):
            raise NotImplementedError

    atoms = water_box(2)
    atoms.calc = CommitteeMeanCalculator(Counting())
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    assert calls == [1]


def test_committee_calculator_no_stress_without_a_periodic_cell(committee):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = molecule("H2O")
    atoms.calc = CommitteeMeanCalculator(committee)
    assert np.isfinite(atoms.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_committee_calculator_non_finite_positions_give_nan(committee):
    atoms = water_box(2)
    atoms.positions[0, 0] = np.nan
    atoms.calc = CommitteeMeanCalculator(committee)
    assert np.isnan(atoms.get_potential_energy())
    assert np.isnan(atoms.get_forces()).all()
    assert atoms.calc.statistics is None


# --- ensembles ----------------------------------------------------------------------------------


def test_nvt_holds_the_target_temperature(gas, committee):
    result = run_md(gas, committee, stage(steps=400, dump_interval=5), seed=3)
    assert result.stable, result.reason
    temperatures = np.array([frame.info["md_temperature_K"] for frame in result.frames])
    assert temperatures.mean() == pytest.approx(300.0, rel=TEMPERATURE_RTOL)
    np.testing.assert_allclose([frame.get_volume() for frame in result.frames], gas.get_volume())


def test_nve_conserves_the_total_energy(gas, committee):
    result = run_md(gas, committee, stage(ensemble="nve", steps=200, dump_interval=5), seed=3)
    assert result.stable, result.reason
    total = np.array([frame.info["md_energy_mean"] + frame.get_kinetic_energy() for frame in result.frames])
    assert np.abs(total - total[0]).max() < NVE_ENERGY_ATOL


def test_npt_changes_the_volume_towards_the_pressure(gas, committee):
    """The molecular gas has a pressure of about 2 kbar: at 1 bar it expands, at 10 kbar it shrinks."""
    volume = gas.get_volume()
    final = {}
    for pressure in (1.0, 1.0e4):
        npt = stage(ensemble="npt", pressure=pressure, steps=100, barostat_damping=200.0)
        result = run_md(gas, committee, npt, seed=3)
        assert result.stable, result.reason
        volumes = [frame.get_volume() for frame in result.frames]
        ratios = [frame.info["md_density_ratio"] for frame in result.frames]
        np.testing.assert_allclose(ratios, volume / np.array(volumes))
        final[pressure] = volumes[-1]
    assert final[1.0] > 1.02 * volume
    assert final[1.0e4] < 0.85 * volume


def test_npt_needs_a_periodic_cell(committee):
    with pytest.raises(ValueError, match="periodic"):
        run_md(molecule("H2O"), committee, stage(ensemble="npt", pressure=1.0), seed=0)


def test_nvt_of_a_molecule_without_cell(committee):
    result = run_md(molecule("H2O"), committee, stage(steps=20, dump_interval=10), seed=0)
    assert result.stable and len(result.frames) == 2
    assert result.frames[0].info["md_density_ratio"] == 1.0


# --- frames, seeds, input -------------------------------------------------------------------------


def test_frames_every_dump_interval_with_statistics(gas, committee):
    md = stage(steps=60, dump_interval=7, timestep=0.5)
    result = run_md(gas, committee, md, seed=1)
    assert isinstance(result, MDResult)
    assert result.stable and result.reason == "" and result.steps_done == 60
    assert len(result.frames) == md.steps // md.dump_interval == md.frames == 8
    assert [frame.info["md_step"] for frame in result.frames] == list(range(7, 57, 7))
    assert result.frames[-1].info["md_time_fs"] == pytest.approx(56 * 0.5)
    frame = result.frames[2]
    assert set(FRAME_INFO_KEYS) <= set(frame.info)
    assert frame.calc is None
    sigma = frame.arrays["md_force_sigma"]
    assert sigma.shape == (len(gas),)
    # the recorded spread is the committee's spread at the frame's positions
    expected = committee_statistics(committee.predict([frame]))
    np.testing.assert_allclose(sigma, expected.force_sigma, rtol=1e-10)
    assert frame.info["md_force_sigma_rms"] == pytest.approx(np.sqrt(np.mean(sigma**2)))
    assert frame.info["md_energy_std"] == pytest.approx(float(expected.energy_std[0]))
    assert frame.info["md_min_distance"] == pytest.approx(min_interatomic_distance(frame))
    assert result.wall_time > 0


def test_reproducible_from_the_seed(gas, committee):
    md = stage(steps=30, dump_interval=10)
    first, again, other = (run_md(gas, committee, md, seed=seed) for seed in (5, 5, 6))
    for a, b in zip(first.frames, again.frames):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.get_momenta(), b.get_momenta())
    assert not np.allclose(first.frames[-1].positions, other.frames[-1].positions)


def test_input_atoms_untouched_and_initial_temperature_exact(gas, committee):
    before = gas.copy()
    result = run_md(gas, committee, stage(steps=1, dump_interval=1), seed=2)
    np.testing.assert_array_equal(gas.positions, before.positions)
    assert gas.calc is None and not gas.has("momenta")
    # one 0.5 fs step moves the temperature only slightly away from the exact start value
    assert result.frames[0].info["md_temperature_K"] == pytest.approx(300.0, rel=0.05)


def test_progress_is_reported_at_every_check(gas, committee):
    calls = []
    run_md(gas, committee, stage(steps=50, dump_interval=10), seed=0, check_interval=20, progress=lambda *a: calls.append(a))
    assert calls == [(20, 50), (40, 50), (50, 50)]


# --- instability is a result ------------------------------------------------------------------------


def test_collapsing_model_stops_at_the_min_distance(gas, model):
    """Negative well depths: attraction all the way to r = 0, the molecules collapse."""
    pathological = MorseCommittee(dataclasses.replace(model, D=-model.D))
    result = run_md(gas, pathological, stage(steps=2000, dump_interval=5), seed=0, check_interval=10)
    assert not result.stable
    assert "min interatomic distance" in result.reason
    assert result.steps_done < 2000 and result.steps_done % 5 == 0
    assert all(frame.info["md_min_distance"] >= 0.4 for frame in result.frames)
    assert len(result.frames) < result.steps_done // 5  # the failing configuration is not saved


def test_density_outside_the_range_stops_npt(gas, committee):
    npt = stage(ensemble="npt", pressure=1.0, steps=2000, barostat_damping=100.0)
    result = run_md(gas, committee, npt, seed=0, check_interval=10, density_range=(0.9, 1.1))
    assert not result.stable
    assert "density" in result.reason and "[0.9, 1.1]" in result.reason
    assert result.steps_done < 2000


def test_checks_use_the_given_limits_and_can_be_disabled(gas, committee):
    md = stage(steps=20)
    strict = run_md(gas, committee, md, seed=0, check_interval=10, min_distance=5.0)
    assert not strict.stable and strict.steps_done == 10 and strict.frames == []
    assert "< 5.0 Å at step 10" in strict.reason
    unchecked = run_md(gas, committee, md, seed=0, min_distance=None, density_range=None)
    assert unchecked.stable and len(unchecked.frames) == 2


class PoisonedCommittee:
    """Delegates to a committee; from call ``after`` on returns NaN energies, or raises."""

    def __init__(self, inner: Committee, after: int, mode: str):
        self.inner, self.after, self.mode, self.calls = inner, after, mode, 0

    @property
    def n_members(self) -> int:
        return self.inner.n_members

    def subset(self, members):
        return self

    def predict(self, structures):
        self.calls += 1
        prediction = self.inner.predict(structures)
        if self.calls > self.after:
            if self.mode == "raise":
                raise FloatingPointError("the model exploded")
            return dataclasses.replace(prediction, energies=np.full_like(prediction.energies, np.nan))
        return prediction


@pytest.mark.parametrize(
    ("mode", "words"), [("nan", "non-finite committee energy"), ("raise", "FloatingPointError: the model exploded")]
)
def test_nan_or_exception_of_the_committee_is_a_result(gas, committee, mode, words):
    poisoned = PoisonedCommittee(committee, after=15, mode=mode)
    result = run_md(gas, poisoned, stage(steps=100, dump_interval=5), seed=0)
    assert not result.stable
    assert words in result.reason
    assert 10 <= result.steps_done <= 15
    assert len(result.frames) <= 3


def test_a_committee_that_cannot_start_raises(gas, committee):
    poisoned = PoisonedCommittee(committee, after=0, mode="raise")
    with pytest.raises(FloatingPointError):
        run_md(gas, poisoned, stage(), seed=0)
