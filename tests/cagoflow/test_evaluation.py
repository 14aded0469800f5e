"""Tests of cagoflow.evaluation: held-out errors, production MD, summaries, benchmark frames, settings.

Test system: eight water molecules (24 atoms, periodic) and Morse pair potentials built for
it: O–O wells at 2.9 Å, narrow O–H wells at 0.97 Å, weak H–H, so the box stays a stable
liquid-like gas over short ASE MD runs. The unperturbed model is the truth (the reference that
labels the benchmark set); members are the truth itself, perturbed copies and the truth with
its well depths flipped (attraction down to r = 0: it collapses within 10 steps, the unstable
member).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from ase import Atoms

from cagoflow.morse_committee import MorseCalculator, MorseCommittee, MorseModel, MorsePair
from cagoflow.calculator_committee import CalculatorCommittee
from cagoflow.calibration import calibrate_committee
from cagoflow.committee import committee_statistics
from cagoflow.demo import label
from cagoflow.engines.ase_md import run_md
from cagoflow.engines.committee_mean_calculator import CommitteeMeanCalculator
from cagoflow.engines.md_settings import MDStage
from cagoflow.errors import InputError
from cagoflow.evaluation import (
    BenchmarkGeneration,
    BenchmarkSettings,
    EvaluationSettings,
    EvaluationSummary,
    HeldOutErrors,
    MemberProduction,
    ProductionSettings,
    benchmark_frames,
    heldout_errors,
    load_benchmark,
    production_md,
    summarize,
)
from cagoflow.io import write_structures
from cagoflow.structures import water_box

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = {
    ("O", "O"): MorsePair(D=0.2, alpha=1.5, r0=2.9),
    ("O", "H"): MorsePair(D=1.0, alpha=3.0, r0=0.97),
    ("H", "H"): MorsePair(D=0.05, alpha=1.5, r0=1.55),
}
#: Density of the test box, g/cm³ (not the default 1, so a hard-coded value cannot pass).
DENSITY = 0.95
#: Short NVT at 300 K, 0.5 fs, a frame every 10 steps.
SHORT = {"timestep": 0.5, "dump_interval": 10, "thermostat_damping": 25.0}

TRUTH = MorseModel.from_pairs(PAIRS)
FLIPPED = dataclasses.replace(TRUTH, D=-TRUTH.D)


def stacked(*models: MorseModel) -> MorseModel:
    """One model whose members are those of ``models``, in order."""
    return dataclasses.replace(
        models[0], **{name: np.concatenate([getattr(m, name) for m in models]) for name in ("D", "alpha", "r0")}
    )


#: Members: 0 the truth, 1–2 perturbed by 5 %, 3 the collapsing one.
COMMITTEE = MorseCommittee(stacked(TRUTH, MorseModel.from_pairs(PAIRS, n_members=2, spread=0.05, seed=1), FLIPPED))


@pytest.fixture(scope="module")
def box() -> Atoms:
    atoms = water_box(8, density_g_cm3=DENSITY, seed=0)
    atoms.info["system"] = "water"
    return atoms


@pytest.fixture(scope="module")
def references(box) -> list[Atoms]:
    rattled = []
    for k in range(6):
        atoms = box.copy()
        atoms.rattle(stdev=0.05, seed=k)
        rattled.append(atoms)
    return label(rattled, MorseCalculator(TRUTH))


@pytest.fixture(scope="module")
def production() -> ProductionSettings:
    return ProductionSettings(replicas=2, md=MDStage(steps=200, **SHORT))


@pytest.fixture(scope="module")
def stable_run(box, production) -> MemberProduction:
    return production_md(COMMITTEE.subset([0]), box, production, seed=3)


@pytest.fixture(scope="module")
def unstable_run(box, production) -> MemberProduction:
    return production_md(COMMITTEE.subset([3]), box, production, seed=3)


# --- held-out errors --------------------------------------------------------------------------------


def test_truth_as_member_has_zero_heldout_errors_and_perturbed_members_positive(references):
    errors = heldout_errors(COMMITTEE.predict(references), references)
    truth, *others = errors.members
    assert truth.force_rmse == pytest.approx(0.0, abs=1e-10)
    assert truth.energy_rmse_per_atom == pytest.approx(0.0, abs=1e-10)
    assert truth.virial_rmse_per_atom == pytest.approx(0.0, abs=1e-10)
    for member in others:
        assert member.force_rmse > 1e-3 and member.energy_rmse_per_atom > 1e-4 and member.virial_rmse_per_atom > 1e-4
    assert errors.mean.n_structures == 6 and len(errors.members) == 4


def test_heldout_errors_round_trip_through_json(references):
    errors = heldout_errors(COMMITTEE.predict(references), references)
    assert HeldOutErrors.from_dict(json.loads(json.dumps(dataclasses.asdict(errors)))) == errors


def test_member_rmses_bracket_the_committee_mean(references):
    errors = heldout_errors(COMMITTEE.predict(references), references)
    for quantity in ("force_rmse", "energy_rmse_per_atom", "virial_rmse_per_atom"):
        members = [getattr(member, quantity) for member in errors.members]
        mean = getattr(errors.mean, quantity)
        # the error of the mean is at most the mean of the errors (triangle inequality) ...
        assert 0 < mean <= np.mean(members) <= max(members)
        # ... and the perfect member beats the mean of imperfect ones
        assert min(members) < mean


# --- production MD ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_stable_member_reports_density_diffusion_and_coordination(stable_run):
    assert stable_run.stability.stable and stable_run.stability.steps_done == (200, 200)
    assert stable_run.n_frames == 40
    assert stable_run.density == pytest.approx(DENSITY, rel=1e-9)  # NVT: the box's own density
    assert stable_run.diffusion > 0 and np.isfinite(stable_run.diffusion)
    assert 0 < stable_run.coordination < 30
    assert stable_run.notes == ()


def test_unstable_member_has_a_reason_and_no_properties(unstable_run):
    assert not unstable_run.stability.stable
    assert len(unstable_run.stability.reasons) == 2
    assert all("min interatomic distance" in reason for reason in unstable_run.stability.reasons)
    assert (unstable_run.density, unstable_run.diffusion, unstable_run.coordination) == (None, None, None)


def test_too_short_a_run_has_no_diffusion_but_says_why(box):
    settings = ProductionSettings(replicas=1, md=MDStage(steps=30, **SHORT))
    run = production_md(COMMITTEE.subset([0]), box, settings, seed=0)
    assert run.stability.stable and run.n_frames == 3
    assert run.diffusion is None and run.density == pytest.approx(DENSITY)
    assert any(note.startswith("diffusion: 3 frames are too few") for note in run.notes)


def test_one_member_drives_md_but_has_no_spread(box, references):
    one = COMMITTEE.subset([1])
    atoms = box.copy()
    atoms.calc = CommitteeMeanCalculator(one)
    assert atoms.get_potential_energy() == pytest.approx(float(one.predict([box]).energies[0, 0]))
    statistics = atoms.calc.statistics
    assert np.isnan(statistics.force_sigma).all() and statistics.force_sigma.shape == (len(box),)
    assert np.isnan(statistics.energy_std).all() and np.isnan(statistics.virial_std).all()
    # whatever needs a spread still refuses one member
    with pytest.raises(ValueError, match="at least two members"):
        committee_statistics(one.predict([box]))
    with pytest.raises(InputError, match="at least two members"):
        calibrate_committee(one.predict(references), references)


def test_member_production_round_trips_through_json(stable_run, unstable_run):
    for run in (stable_run, unstable_run):
        assert MemberProduction.from_dict(json.loads(json.dumps(dataclasses.asdict(run)))) == run


# --- summary ----------------------------------------------------------------------------------------


def test_summary_excludes_the_unstable_member_and_names_its_reason(references, stable_run, unstable_run):
    errors = heldout_errors(COMMITTEE.predict(references).members([0, 3]), references)
    summary = summarize(errors, [stable_run, unstable_run])
    assert summary.members == 2 and summary.stable_members == 1 and summary.stable == [True, False]
    assert summary.density_mean == pytest.approx(DENSITY) and summary.density_std == 0.0
    assert summary.diffusion_mean == stable_run.diffusion and summary.coordination_mean == stable_run.coordination
    assert len(summary.reasons) == 1 and summary.reasons[0].startswith("member 1: min interatomic distance")
    assert summary.force_rmse == errors.mean.force_rmse and summary.benchmark_structures == 6
    assert summary.member_force_rmse == [errors.members[0].force_rmse, errors.members[1].force_rmse]
    assert len(summary.member_virial_rmse_per_atom) == 2
    assert EvaluationSummary(**json.loads(json.dumps(dataclasses.asdict(summary)))) == summary


def test_summary_without_stable_members_has_no_properties(references, unstable_run):
    errors = heldout_errors(COMMITTEE.predict(references).members([3]), references)
    summary = summarize(errors, [unstable_run])
    assert summary.stable_members == 0 and summary.density_mean is None and summary.coordination_std is None
    with pytest.raises(ValueError, match="1 members but production MD of 2"):
        summarize(errors, [unstable_run, unstable_run])


# --- benchmark set ----------------------------------------------------------------------------------


def test_benchmark_frames_are_evenly_spaced_unlabelled_md_frames(box):
    md = MDStage(steps=80, **SHORT)  # 8 saved frames, 4 wanted: every second one, the last included
    frames = benchmark_frames(box, MorseCalculator(TRUTH), BenchmarkGeneration(frames=4, md=md), seed=5)
    trajectory = run_md(box, CalculatorCommittee([MorseCalculator(TRUTH)]), md, seed=5).frames
    assert len(frames) == 4
    for frame, expected in zip(frames, trajectory[1::2]):
        np.testing.assert_allclose(frame.positions, expected.positions, atol=1e-12)
        assert frame.calc is None and frame.info == {"system": "water"} and "momenta" not in frame.arrays
    rattled = benchmark_frames(box, MorseCalculator(TRUTH), BenchmarkGeneration(frames=4, md=md, rattle=0.1), seed=5)
    shifts = np.concatenate([r.positions - f.positions for r, f in zip(rattled, frames)])
    assert np.std(shifts) == pytest.approx(0.1, rel=0.2)


def test_benchmark_md_that_blows_up_is_refused(box):
    settings = BenchmarkGeneration(frames=2, md=MDStage(steps=40, **SHORT))
    with pytest.raises(ValueError, match="benchmark MD is unstable: min interatomic distance"):
        benchmark_frames(box, MorseCalculator(FLIPPED), settings, seed=0)


def test_load_benchmark_needs_labels(tmp_path, references, box):
    write_structures(tmp_path / "labelled.extxyz", references)
    loaded = load_benchmark(tmp_path / "labelled.extxyz")
    assert len(loaded) == 6
    np.testing.assert_allclose(loaded[2].get_forces(), references[2].get_forces(), atol=1e-7)  # extxyz: 8 digits
    write_structures(tmp_path / "bare.extxyz", [box])
    with pytest.raises(InputError, match="no reference energy and forces"):
        load_benchmark(tmp_path / "bare.extxyz")


# --- settings ---------------------------------------------------------------------------------------


def test_benchmark_file_resolves_against_the_campaign_directory(tmp_path, references):
    write_structures(tmp_path / "bench.extxyz", references)
    settings = EvaluationSettings.model_validate(
        {"benchmark": {"file": "bench.extxyz"}}, context={"base_dir": tmp_path}
    )
    assert settings.benchmark.file == (tmp_path / "bench.extxyz").resolve()
    assert EvaluationSettings().benchmark.generate == BenchmarkGeneration()


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (BenchmarkSettings, {}, "exactly one of 'file' or 'generate', found neither"),
        (BenchmarkSettings, {"file": "b.extxyz", "generate": {}}, "found both"),
        (BenchmarkGeneration, {"frames": 41}, "41 frames wanted, but the MD saves only 40"),
        (BenchmarkGeneration, {"calculator": "ase.calculators.emt.EMT"}, "import path 'module:Class'"),
        (ProductionSettings, {"density_range": [1.2, 2.0]}, "0 < low < 1 < high"),
        (ProductionSettings, {"replicas": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_settings_are_refused(tmp_path, model, data, message):
    (tmp_path / "b.extxyz").write_text("")
    with pytest.raises(ValueError, match=message):
        model.model_validate(data, context={"base_dir": tmp_path})
