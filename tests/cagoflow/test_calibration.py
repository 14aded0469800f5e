"""Tests of cagoflow.calibration (power-law fit, diagnostics, committee calibration, JSON) and its plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from cagoflow.calibration import (
    CalibrationBin,
    CommitteeCalibration,
    PowerLaw,
    binned_errors,
    calibrate_committee,
    calibrate_quantity,
    cross_validated_sigma_cal,
    diagnose,
    fit_power_law,
    negative_log_likelihood,
    per_atom_force_error,
    validity_limit,
)
from cagoflow.calibration_plots import plot_calibration
from cagoflow.committee import CommitteePrediction, force_sigma_hat
from cagoflow.errors import InputError
from cagoflow.geometry import neighbour_distance_ranges

N_SAMPLES = 20000
DATA = Path(__file__).parents[1] / "data"


def synthetic(a: float, b: float, seed: int, n: int = N_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """σ̂ log-uniform over [0.01, 1], residuals ~ N(0, (a σ̂^b)²)."""
    rng = np.random.default_rng(seed)
    sigma_hat = 10.0 ** rng.uniform(-2.0, 0.0, n)
    return sigma_hat, rng.normal(0.0, a * sigma_hat**b)


# --- the power law ---------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [(2.0, 0.8), (0.5, 1.3)])
def test_fit_recovers_known_power_law(a, b):
    # With n = 20000 and two decades of σ̂ the statistical errors are about 1 % in a and
    # 0.004 in b; the tolerances (5 % in a, 0.03 in b) are ~5 standard errors.
    sigma_hat, residuals = synthetic(a, b, seed=1)
    law = fit_power_law(sigma_hat, residuals)
    assert law.a == pytest.approx(a, rel=0.05)
    assert law.b == pytest.approx(b, abs=0.03)


def test_fit_accepts_any_shape():
    sigma_hat, residuals = synthetic(2.0, 0.8, seed=2)
    flat = fit_power_law(sigma_hat, residuals)
    shaped = fit_power_law(sigma_hat.reshape(100, 50, 4), residuals.reshape(100, 50, 4))
    assert shaped == flat


def test_closed_form_a_is_optimal():
    sigma_hat, residuals = synthetic(0.5, 1.3, seed=3)
    law = fit_power_law(sigma_hat, residuals)
    best = negative_log_likelihood(law, sigma_hat, residuals)
    for factor in (0.99, 1.01):
        assert negative_log_likelihood(PowerLaw(law.a * factor, law.b), sigma_hat, residuals) > best
    for shift in (-0.01, 0.01):
        assert negative_log_likelihood(PowerLaw(law.a, law.b + shift), sigma_hat, residuals) > best


def test_power_law_inverse_and_torch():
    torch = pytest.importorskip("torch")
    law = PowerLaw(2.0, 0.8)
    sigma_hat = np.array([1e-3, 0.1, 1.0, 3.0])
    np.testing.assert_allclose(law(sigma_hat), 2.0 * sigma_hat**0.8)
    np.testing.assert_allclose(law.inverse(law(sigma_hat)), sigma_hat, rtol=1e-12)
    tensor = torch.tensor(sigma_hat, requires_grad=True)
    calibrated = law(tensor)
    calibrated.sum().backward()
    np.testing.assert_allclose(calibrated.detach().numpy(), law(sigma_hat))
    np.testing.assert_allclose(tensor.grad.numpy(), 2.0 * 0.8 * sigma_hat ** (-0.2))


def test_zero_sigma_is_floored():
    sigma_hat, residuals = synthetic(2.0, 0.8, seed=4, n=200)
    sigma_hat[:3] = 0.0
    law = fit_power_law(sigma_hat, residuals)
    assert np.isfinite(law.a) and np.isfinite(law.b)


@pytest.mark.parametrize(
    "sigma_hat, residuals, field",
    [
        (np.ones(20), np.ones(21), "residuals"),
        (np.ones((4, 5)), np.ones(20), "residuals"),
        (np.ones(5), np.ones(5), "sigma_hat"),
        (np.ones(0), np.ones(0), "sigma_hat"),
        (np.r_[np.ones(19), np.nan], np.ones(20), "sigma_hat"),
        (np.ones(20), np.r_[np.ones(19), np.inf], "residuals"),
        (np.r_[np.ones(19), -1.0], np.ones(20), "sigma_hat"),
        (np.ones(20), np.zeros(20), "residuals"),
    ],
)
def test_bad_inputs_are_refused(sigma_hat, residuals, field):
    with pytest.raises(InputError) as info:
        fit_power_law(sigma_hat, residuals, quantity="forces")
    assert info.value.field == f"forces.{field}"
    with pytest.raises(InputError):
        diagnose(PowerLaw(1.0, 1.0), sigma_hat, residuals)


# --- diagnostics -----------------------------------------------------------------------------


def test_diagnostics_on_independent_test_set():
    law = fit_power_law(*synthetic(2.0, 0.8, seed=5))
    diagnostics = diagnose(law, *synthetic(2.0, 0.8, seed=6))  # data the law was not fitted on
    assert diagnostics.n_samples == N_SAMPLES
    assert diagnostics.std_r_after == pytest.approx(1.0, abs=0.03)
    assert diagnostics.std_r_before > 2.0  # σ/σ̂ = 2 σ̂^-0.2 ≥ 2: σ̂ underestimates
    assert diagnostics.miscalibration_area_after < 0.02
    assert diagnostics.miscalibration_area_before > 0.2
    assert len(diagnostics.bins) == 10
    assert sum(item.count for item in diagnostics.bins) == N_SAMPLES
    assert all(0.9 < item.ratio < 1.1 for item in diagnostics.bins)


def test_miscalibration_area_sees_overconfidence():
    sigma_hat, residuals = synthetic(1.0, 1.0, seed=7)
    exact = diagnose(PowerLaw(1.0, 1.0), sigma_hat, residuals)
    overconfident = diagnose(PowerLaw(0.5, 1.0), sigma_hat, residuals)
    assert exact.miscalibration_area_after < 0.02
    assert overconfident.miscalibration_area_after > 0.15
    assert overconfident.std_r_after == pytest.approx(2.0, rel=0.03)


def test_binned_errors_equal_counts_and_edges():
    sigma_cal = np.arange(1.0, 101.0)
    residuals = 2.0 * sigma_cal
    bins = binned_errors(sigma_cal, residuals, n_bins=4, min_count=1)
    assert [item.count for item in bins] == [25, 25, 25, 25]
    assert [(item.sigma_cal_low, item.sigma_cal_high) for item in bins] == [(1, 25), (26, 50), (51, 75), (76, 100)]
    assert all(item.ratio == pytest.approx(2.0) for item in bins)
    assert bins[0].sigma_cal_rms == pytest.approx(np.sqrt(np.mean(np.arange(1.0, 26.0) ** 2)))
    # too few samples for 10 bins of at least 20: fewer, larger bins
    assert [item.count for item in binned_errors(sigma_cal, residuals, n_bins=10, min_count=20)] == [20] * 5


def test_validity_limit_everywhere_calibrated_is_top_edge():
    sigma_hat, residuals = synthetic(2.0, 0.8, seed=8)
    law = PowerLaw(2.0, 0.8)
    diagnostics = diagnose(law, sigma_hat, residuals)
    assert diagnostics.validity_limit == diagnostics.out_of_sample.bins[-1].sigma_cal_high
    assert diagnostics.in_sample_validity_limit == diagnostics.bins[-1].sigma_cal_high == pytest.approx(law(sigma_hat).max())


def test_validity_limit_rules():
    def make(low: float, band_high: float = 1.0, band_low: float = 1.0, count: int = 100, structures: int = 10):
        return CalibrationBin(low, low + 1.0, 1.0, 1.0, count, structures=structures, band_low=band_low, band_high=band_high)

    assert validity_limit([make(0.0), make(1.0, band_high=1.2), make(2.0, band_high=1.3), make(3.0)]) == 2.0
    assert validity_limit([make(0.0), make(1.0, band_low=0.7), make(2.0)]) == 1.0  # under-confident
    assert validity_limit([make(0.0, band_high=1.3), make(1.0)]) is None  # the first bin fails: no limit
    assert validity_limit([make(0.0), make(1.0, count=5), make(2.0)]) == 1.0  # a thin bin stops the walk
    assert validity_limit([make(0.0), make(1.0, structures=2), make(2.0)]) == 1.0  # too few structures behind it
    assert validity_limit([CalibrationBin(0.0, 1.0, 1.0, 1.0, 100, structures=10)]) is None  # no band: not judged
    assert validity_limit([]) is None


def test_monotone_band_pools_one_outlying_bin():
    # 10 bins of 20 samples with ratio rmse/σ_cal exactly 1, except bin 3 (1.6); without resamples
    # the band is the point estimate's isotonic fits: the increasing fit pools bin 3 with the 6
    # bins above it, (1.6 + 6)/7, the decreasing fit with the 3 bins below it, (3 + 1.6)/4.
    sigma_cal = np.arange(1.0, 201.0)
    factor = np.where((sigma_cal > 60) & (sigma_cal <= 80), 1.6, 1.0)
    bins = binned_errors(sigma_cal, factor * sigma_cal, n_bins=10, n_resamples=0)
    assert [round(item.ratio, 12) for item in bins] == [1.0, 1.0, 1.0, 1.6] + [1.0] * 6
    np.testing.assert_allclose([item.band_high for item in bins], [1.0] * 3 + [7.6 / 7] * 7)
    np.testing.assert_allclose([item.band_low for item in bins], [1.15] * 4 + [1.0] * 6)
    assert validity_limit(bins) == 200.0
    # over-confidence growing in the last bins is not pooled away: the walk stops before them
    growing = np.select([sigma_cal > 180, sigma_cal > 160], [1.6, 1.2], 1.0)
    assert validity_limit(binned_errors(sigma_cal, growing * sigma_cal, n_bins=10, n_resamples=0)) == 180.0


# --- cross-validation and the out-of-sample validity limit ---------------------------------------

N_STRUCTURES, N_ATOMS = 40, 30
TRUE_LAW = PowerLaw(2.0, 0.8)


def structures_data(
    seed: int, n_structures: int = N_STRUCTURES, spread: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """σ̂ log-uniform over [0.01, 1] for ``n_structures`` × 30 atoms, residuals ~ N(0, (m_s σ_true)²)
    with σ_true = 2 σ̂^0.8 and a per-structure factor m_s = exp(N(0, spread²)); and the structure of
    each atom."""
    rng = np.random.default_rng(seed)
    sigma_hat = 10.0 ** rng.uniform(-2.0, 0.0, (n_structures, N_ATOMS))
    factor = np.exp(rng.normal(0.0, spread, (n_structures, 1)))
    residuals = rng.normal(0.0, TRUE_LAW(sigma_hat) * factor)
    return sigma_hat.ravel(), residuals.ravel(), np.repeat(np.arange(n_structures), N_ATOMS)


def departing_data(
    seed: int, perturbed: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """40 structures × 30 atoms whose errors follow σ_true = 2 σ̂^0.8 up to the 85th percentile σ̂_L of
    σ̂ and grow faster above it, as σ_true (σ_true/L)², L = 2 σ̂_L^0.8 (over-confident); with
    ``perturbed`` (a range of σ̂ quantiles) the residuals there are multiplied by 1.6. Returns σ̂,
    residuals, structures and σ̂_L."""
    rng = np.random.default_rng(seed)
    sigma_hat = 10.0 ** rng.uniform(-2.0, 0.0, N_STRUCTURES * N_ATOMS)
    limit_hat = float(np.quantile(sigma_hat, 0.85))
    sigma_true = TRUE_LAW(sigma_hat)
    scale = sigma_true * np.maximum(sigma_true / TRUE_LAW(limit_hat), 1.0) ** 2
    if perturbed is not None:
        low, high = np.quantile(sigma_hat, perturbed)
        scale = np.where((sigma_hat >= low) & (sigma_hat < high), 1.6 * scale, scale)
    return sigma_hat, rng.normal(0.0, scale), np.repeat(np.arange(N_STRUCTURES), N_ATOMS), limit_hat


def bin_index(bins: list[CalibrationBin], sigma_cal: float) -> int:
    """Index of the first bin whose upper edge is at or above ``sigma_cal``."""
    return next(k for k, item in enumerate(bins) if item.sigma_cal_high >= sigma_cal)


def test_cross_validation_folds_over_structures():
    sigma_hat, residuals, groups = structures_data(seed=12, n_structures=6)
    labels = np.array(["s5", "s0", "s3", "s1", "s4", "s2"])[groups]  # any labels, in sorted order
    sigma_cal = cross_validated_sigma_cal(sigma_hat, residuals, labels)
    for name in np.unique(labels):  # 6 structures: leave one structure out
        held_out = labels == name
        expected = fit_power_law(sigma_hat[~held_out], residuals[~held_out])(sigma_hat[held_out])
        np.testing.assert_allclose(sigma_cal[held_out], expected)

    sigma_hat, residuals, groups = structures_data(seed=13, n_structures=25)
    sigma_cal = cross_validated_sigma_cal(sigma_hat, residuals, groups)
    held_out = np.isin(groups, [3, 13, 23])  # 10 folds, structures dealt round robin
    expected = fit_power_law(sigma_hat[~held_out], residuals[~held_out])(sigma_hat[held_out])
    np.testing.assert_allclose(sigma_cal[held_out], expected)

    assert cross_validated_sigma_cal(sigma_hat, residuals, np.zeros(groups.size)) is None  # one structure
    assert cross_validated_sigma_cal(sigma_hat[:16], residuals[:16], np.repeat([0, 1], 8)) is None  # 8 to fit on
    with pytest.raises(InputError) as info:
        cross_validated_sigma_cal(sigma_hat, residuals, groups[:-1])
    assert info.value.field == "groups"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_out_of_sample_limit_recovers_where_errors_depart(seed):
    # The limit is a σ_cal of the FITTED law, which the over-confident tail bends (a ≈ 2.9-3.4,
    # b ≈ 0.91-0.95 instead of 2 and 0.8), so the known departure σ̂_L is compared in its units,
    # L_cal = law(σ̂_L). Tolerance: the limit is the upper edge of the bin holding L_cal or of a
    # neighbouring bin (found: the bin holding L_cal, 1.21-1.28 L_cal over seeds 0-9). Below L_cal
    # the bent law is under-confident (bins 6-8 at 0.70-0.76), which the decreasing fit pools with
    # the over-confident top bin (about 1.5): the rule does not see it.
    sigma_hat, residuals, groups, limit_hat = departing_data(seed)
    calibration = calibrate_quantity("forces", sigma_hat, residuals, groups)
    out = calibration.diagnostics.out_of_sample
    assert (out.n_folds, out.n_structures) == (10, 40) and len(out.bins) == 10
    assert out.bins[-1].ratio > 1.25  # the tail is over-confident
    limit = calibration.diagnostics.validity_limit
    assert limit is not None
    assert abs(bin_index(out.bins, limit) - bin_index(out.bins, calibration.law(limit_hat))) <= 1


@pytest.mark.parametrize("perturbed", [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6)])
def test_one_noisy_bin_does_not_move_the_limit(perturbed):
    sigma_hat, residuals, groups, limit_hat = departing_data(seed=0)
    reference = calibrate_quantity("forces", sigma_hat, residuals, groups).diagnostics
    sigma_hat, residuals, groups, _ = departing_data(seed=0, perturbed=perturbed)
    calibration = calibrate_quantity("forces", sigma_hat, residuals, groups)
    diagnostics = calibration.diagnostics
    bins = diagnostics.out_of_sample.bins
    below = bins[: bin_index(bins, calibration.law(limit_hat))]
    assert max(item.ratio for item in below) > 1.25  # one bin below L_cal outside [0.8, 1.25] (1.32-1.44)
    # the same bins stay valid; the law itself moves with the data (a up 2-7 %), and so the
    # σ_cal of the limit does (found: up 3-7 %), in the tolerance of the unperturbed test
    valid = bin_index(bins, diagnostics.validity_limit)
    assert valid == bin_index(reference.out_of_sample.bins, reference.validity_limit)
    assert abs(valid - bin_index(bins, calibration.law(limit_hat))) <= 1


def test_no_limit_when_miscalibrated_from_the_start():
    rng = np.random.default_rng(14)
    sigma_hat = 10.0 ** rng.uniform(-2.0, 0.0, N_STRUCTURES * N_ATOMS)
    groups = np.repeat(np.arange(N_STRUCTURES), N_ATOMS)
    shrinking = rng.normal(0.0, 0.1 * sigma_hat**-0.5)  # errors fall as σ̂ grows: no power law with b > 0
    diagnostics = calibrate_quantity("forces", sigma_hat, shrinking, groups).diagnostics
    assert diagnostics.out_of_sample.bins[0].ratio_low > 1.25  # over-confident from the first bin on
    assert diagnostics.validity_limit is None


def test_no_limit_without_an_out_of_sample_judgement():
    sigma_hat, residuals, groups = structures_data(seed=15)
    assert calibrate_quantity("forces", sigma_hat, residuals, groups).diagnostics.validity_limit is not None
    one = calibrate_quantity("forces", sigma_hat, residuals, np.zeros(sigma_hat.size)).diagnostics
    assert one.out_of_sample is None and one.validity_limit is None  # the same atoms from one structure: fails closed
    two = calibrate_quantity("forces", sigma_hat, residuals, np.arange(sigma_hat.size) % 2).diagnostics
    assert two.out_of_sample.n_folds == 2 and two.validity_limit is None  # bins from < 3 structures


def test_rms_z_out_of_sample():
    # in sample the RMS of z is 1 by construction; out of sample, with errors that vary from
    # structure to structure (factor e^N(0, 0.3²)), it is not with 5 structures and tends to 1
    # with 200 (found for seeds 0-4: 1.03-1.17 with 5, 1.000-1.002 with 200).
    few = calibrate_quantity("forces", *structures_data(seed=0, n_structures=5, spread=0.3)).diagnostics
    many = calibrate_quantity("forces", *structures_data(seed=0, n_structures=200, spread=0.3)).diagnostics
    assert few.std_r_after == pytest.approx(1.0, abs=1e-9) and many.std_r_after == pytest.approx(1.0, abs=1e-9)
    assert few.out_of_sample.n_folds == 5 and many.out_of_sample.n_folds == 10
    assert few.out_of_sample.std_r > 1.02
    assert abs(many.out_of_sample.std_r - 1.0) < 0.01


# --- committee calibration -------------------------------------------------------------------


def test_per_atom_force_error_by_hand():
    reference = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    members = np.array(
        [
            [[1.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
            [[0.0, 2.0, 0.0], [1.0, 2.0, 5.0]],
        ]
    )
    # atom 0: |errors|² = 1 and 4 → sqrt(2.5); atom 1: 0 and 4 → sqrt(2)
    np.testing.assert_allclose(per_atom_force_error(members, reference), [np.sqrt(2.5), np.sqrt(2.0)])
    with pytest.raises(InputError):
        per_atom_force_error(members, reference[:1])


def synthetic_committee(n_structures: int = 12, n_atoms: int = 8, n_members: int = 6, stress: bool = True):
    """A committee prediction around reference labels, errors scaling with the committee spread."""
    rng = np.random.default_rng(10)
    references, ref_forces, ref_energies, ref_virials = [], [], [], []
    for _ in range(n_structures):
        cell = np.diag(rng.uniform(8.0, 10.0, 3))
        atoms = Atoms("H" * n_atoms, positions=rng.uniform(0.0, 8.0, (n_atoms, 3)), cell=cell, pbc=True)
        forces, energy = rng.normal(0.0, 1.0, (n_atoms, 3)), rng.normal(-10.0, 1.0)
        virial = rng.normal(0.0, 1.0, (3, 3))
        virial = virial + virial.T
        labels = {"energy": energy, "forces": forces}
        if stress:
            labels["stress"] = full_3x3_to_voigt_6_stress(-virial / atoms.get_volume())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        references.append(atoms)
        ref_forces.append(forces)
        ref_energies.append(energy)
        ref_virials.append(virial)
    scale_f = 10.0 ** rng.uniform(-2, 0, (n_structures * n_atoms, 1))
    forces = np.concatenate(ref_forces) + scale_f * rng.normal(0.0, 1.0, (n_members, n_structures * n_atoms, 3))
    scale_e = 10.0 ** rng.uniform(-2, 0, n_structures)
    energies = np.array(ref_energies) + scale_e * rng.normal(0.0, 1.0, (n_members, n_structures))
    noise = rng.normal(0.0, 0.1, (n_members, n_structures, 3, 3))
    virials = np.array(ref_virials) + noise + noise.transpose(0, 1, 3, 2)
    natoms = np.full(n_structures, n_atoms)
    return CommitteePrediction(energies, forces, natoms, virials), references


def test_calibrate_committee_and_round_trip(tmp_path):
    prediction, references = synthetic_committee()
    calibration = calibrate_committee(prediction, references, training=references[:3])
    assert calibration.members == tuple(range(6))
    assert (calibration.n_structures, calibration.n_atoms) == (12, 96)
    assert calibration.forces.unit == "eV/Å" and calibration.forces.diagnostics.n_samples == 96
    assert calibration.energies is not None and calibration.energies.diagnostics.n_samples == 12
    assert calibration.virials is not None and calibration.virials.diagnostics.n_samples == 72
    assert calibration.virials.diagnostics.summary.residual_rms < 0.2  # stress sign and volume handled
    assert calibration.force_validity_limit == calibration.forces.diagnostics.validity_limit
    out = calibration.forces.diagnostics.out_of_sample
    assert (out.n_folds, out.n_structures) == (10, 12) and sum(item.count for item in out.bins) == 96
    assert calibration.energies.diagnostics.out_of_sample.n_structures == 12
    assert calibration.packing_ranges == neighbour_distance_ranges(references[:3] + references)
    assert calibration.for_cago().packing_ranges == calibration.packing_ranges
    # the force fit uses σ̂_F_i and e_i exactly as documented
    reference_forces = np.concatenate([atoms.calc.results["forces"] for atoms in references])
    errors = per_atom_force_error(prediction.forces, reference_forces)
    expected = fit_power_law(force_sigma_hat(prediction.forces), errors)
    assert calibration.forces.law == expected

    path = calibration.save(tmp_path / "calibration.json")
    data = json.loads(path.read_text())
    assert data["forces"]["diagnostics"]["summary"]["n_samples"] == 96
    assert len(data["forces"]["diagnostics"]["bins"]) >= 1 and "ratio" in data["forces"]["diagnostics"]["bins"][0]
    first = data["forces"]["diagnostics"]["out_of_sample"]["bins"][0]
    assert {"ratio", "band_low", "band_high", "structures"} <= first.keys()
    assert data["force_validity_limit_eV_per_A"] == calibration.force_validity_limit
    assert data["training_neighbour_distance_ranges_A"] == {k: list(v) for k, v in calibration.packing_ranges.items()}
    assert CommitteeCalibration.load(path) == calibration


def test_calibrate_committee_members_subset():
    prediction, references = synthetic_committee()
    subset = calibrate_committee(prediction, references, members=[0, 2, 4])
    assert subset.members == (0, 2, 4)
    direct = calibrate_committee(prediction.members([0, 2, 4]), references)
    assert subset.forces.law == direct.forces.law
    assert subset.forces.law != calibrate_committee(prediction, references).forces.law
    with pytest.raises(InputError) as info:
        calibrate_committee(prediction, references, members=[0, 6])
    assert info.value.field == "members"


def test_calibrate_committee_optional_quantities():
    prediction, references = synthetic_committee(n_structures=5, stress=False)
    calibration = calibrate_committee(prediction, references)
    assert calibration.energies is None and calibration.virials is None
    assert calibration.forces.diagnostics.n_samples == 40
    with pytest.raises(InputError) as info:
        calibrate_committee(prediction, references[:4])
    assert info.value.field == "references"


def test_load_malformed_json_names_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError) as info:
        CommitteeCalibration.load(broken)
    assert info.value.file == str(broken)

    prediction, references = synthetic_committee()
    path = calibrate_committee(prediction, references).save(tmp_path / "calibration.json")
    data = json.loads(path.read_text())
    del data["forces"]["law"]["b"]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as info:
        CommitteeCalibration.load(path)
    assert info.value.file == str(path) and info.value.field == "forces.law.b"

    data["forces"]["law"]["b"] = "large"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="forces.law.b"):
        CommitteeCalibration.load(path)

    with pytest.raises(InputError) as info:
        CommitteeCalibration.load(tmp_path / "missing.json")
    assert "missing.json" in str(info.value)


def test_file_of_this_version_still_loads(tmp_path):
    """tests/data/calibration-v1.json: the subset (0, 2, 4) of a 6-member synthetic committee on
    12 boxes of 3 H2O, with contact distances from 5 training boxes, written by save() before
    load() used pydantic (commit 0a7fb97); loading and saving it again gives the same file, but
    for the keys added since (written as null)."""
    original = DATA / "calibration-v1.json"
    calibration = CommitteeCalibration.load(original)

    assert calibration.members == (0, 2, 4) and (calibration.n_structures, calibration.n_atoms) == (12, 108)
    assert calibration.forces.law == PowerLaw(1.1828266670489707, 1.0126555010336906)
    assert calibration.force_validity_limit == 2.0560145906917064
    assert calibration.contact_distances == {
        "H-H": 1.1963328059025253, "H-O": 0.7927520494161426, "O-O": 2.2338591725211026
    }  # fmt: skip
    assert len(calibration.force_test_sigma_cal) == 108 and calibration.force_test_sigma_cal[0] == 0.014855
    assert calibration.energies is not None and calibration.virials is not None
    # no out-of-sample block: the validity limit is the one the file holds (in sample, as judged then)
    assert calibration.forces.diagnostics.out_of_sample is None and calibration.packing_ranges is None
    assert calibration.for_cago().validity_limit == 2.0560145906917064
    again = json.loads(calibration.save(tmp_path / "again.json").read_text())
    assert without(again, OUT_OF_SAMPLE_KEYS) == json.loads(original.read_text())


#: Keys added with the out-of-sample judgement and the packing ranges (written as null for older files).
OUT_OF_SAMPLE_KEYS = {"band_low", "band_high", "out_of_sample", "training_neighbour_distance_ranges_A"}


def without(data: Any, keys: set[str]) -> Any:
    """``data`` (parsed JSON) with ``keys`` removed at every depth."""
    if isinstance(data, dict):
        return {key: without(value, keys) for key, value in data.items() if key not in keys}
    if isinstance(data, list):
        return [without(value, keys) for value in data]
    return data


def test_file_of_the_first_version_still_loads(tmp_path):
    """tests/data/calibration-v1-fffe0cb.json: written by the first release (commit fffe0cb),
    before bins had an uncertainty and the file had contact distances and test σ_cal."""
    original = DATA / "calibration-v1-fffe0cb.json"
    calibration = CommitteeCalibration.load(original)

    assert calibration.contact_distances is None and calibration.force_test_sigma_cal is None
    assert all(item.ratio_low is None and item.structures is None for item in calibration.forces.diagnostics.bins)
    later = {"ratio_low", "ratio_high", "structures", "training_shortest_distances_A", "force_test_sigma_cal_eV_per_A"}
    later |= OUT_OF_SAMPLE_KEYS
    again = json.loads(calibration.save(tmp_path / "again.json").read_text())
    assert without(again, later) == json.loads(original.read_text())


@pytest.mark.parametrize(
    "change, field, message",
    [
        (lambda d: d.update(format="cagoflow-dataset"), "format", "expected 'cagoflow.committee-calibration'"),
        (lambda d: d.update(version=2), "version", "expected 1, found 2"),
        (lambda d: d.update(members=[0, -2]), "members.1", "greater than or equal to 0"),
        (lambda d: d["energies"].update(quantity="forces"), "energies", "expected quantity 'energies' in eV"),
        (lambda d: d["forces"].update(unit="eV"), "forces", "expected quantity 'forces' in eV/Å"),
        (lambda d: d["forces"]["law"].update(a=0), "forces.law.a", "greater than 0"),
        (lambda d: d["virials"]["diagnostics"]["bins"][0].update(count=2.5), "virials.diagnostics.bins.0.count", "integer"),
        (lambda d: d["forces"]["diagnostics"].update(std_r_after=None), "forces.diagnostics.std_r_after", "number"),
        (lambda d: d.pop("virials"), "virials", "missing required key"),
        (lambda d: d.update(training_shortest_distances_A={"H-H": "1.0"}), "training_shortest_distances_A.H-H", "number"),
        (lambda d: d["forces"].update(sigma=1.0), "forces.sigma", "unknown key 'sigma'"),
    ],
)
def test_corrupt_file_names_file_and_field(tmp_path, change, field, message):
    data = json.loads((DATA / "calibration-v1.json").read_text())
    change(data)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        CommitteeCalibration.load(path)
    assert info.value.field == field and info.value.file == str(path)


# --- plots -----------------------------------------------------------------------------------


@pytest.mark.parametrize("magnitudes", [False, True])
def test_plots_are_written(tmp_path, magnitudes):
    sigma_hat, residuals = synthetic(2.0, 0.8, seed=11, n=3000)
    if magnitudes:
        residuals = np.abs(residuals)
    law = fit_power_law(sigma_hat, residuals)
    paths = plot_calibration(sigma_hat, residuals, law, tmp_path / "plots" / "forces")
    assert [path.name for path in paths] == ["forces_z_histogram.png", "forces_error_vs_sigma.png"]
    for path in paths:
        content = path.read_bytes()
        assert content[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(content) > 10_000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)  # no temp files
