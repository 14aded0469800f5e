"""Calibration of committee uncertainties with a power law (Cezar et al. 2025).

The committee spread σ̂ of a quantity is mapped to a calibrated uncertainty

    σ_cal = a · σ̂^b,

with a, b minimising the Gaussian negative log-likelihood of the residuals r = ŷ − y_ref
over a test set,

    NLL(a, b) = Σ_x [ ln 2π + ln (a σ̂_x^b)² + r_x² / (a σ̂_x^b)² ].

For fixed b the optimal a is closed form, a² = mean(r² / σ̂^(2b)), so the fit is a bounded
1-D search over b (coarse grid, then bounded Brent refinement around the best grid point).

Judged on the points it was fitted on, a law looks better than it is (the RMS of z = r/σ_cal
is 1 by construction), so the calibration is also judged OUT OF SAMPLE: cross-validation over
structures (:func:`cross_validated_sigma_cal`: the law fitted without a fold of structures and
applied to it) gives every sample an out-of-sample σ_cal. The RMS of z, the miscalibration
area, the reliability bins and the validity limit are computed from it
(:class:`OutOfSample`); the in-sample figures are kept for comparison.

The validity limit (:func:`validity_limit`) is the largest σ_cal up to which the out-of-sample
error ratio RMSE/σ_cal stays inside [0.8, 1.25], judged on a monotone (isotonic) fit of the
binned ratios with a bootstrap band over structures, so that one noisy bin cannot move it and
a calibration that cannot be judged has no limit (None: callers refuse δ).

Units: σ̂, σ_cal and residuals share the unit of the quantity (eV/Å for forces, eV for
energies and virials). The dimensionless ratio r/σ is called z below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from ase import Atoms
from pydantic import ConfigDict, Field, model_validator, with_config
from scipy.optimize import isotonic_regression, minimize_scalar
from scipy.special import logsumexp, ndtri

from cagoflow.committee import CommitteePrediction, force_sigma_hat, member_std, virial_from_stress
from cagoflow.errors import InputError
from cagoflow.geometry import neighbour_distance_ranges, shortest_pair_distances
from cagoflow.inputs import Count, FieldError, Finite, InputModel, Positive, validate_input
from cagoflow.io import atomic_write_json, read_json, structure_labels

#: σ̂ values below this floor (in the quantity's unit) are raised to it before taking logs.
SIGMA_FLOOR = 1e-12
#: Fewest samples a power-law fit accepts.
MIN_SAMPLES = 10
#: Fewest samples a reliability bin should hold (fewer, larger bins are used where needed).
MIN_BIN_COUNT = 20
#: Fewest distinct structures a bin needs before the validity limit judges it.
MIN_BIN_STRUCTURES = 3
#: Bootstrap resamples (of structures) behind each bin's uncertainty and the monotone band.
BOOTSTRAP_RESAMPLES = 200
#: Range of RMSE/σ_cal (dimensionless) inside which a calibration counts as valid.
VALID_RATIO = (0.8, 1.25)
#: Folds of the cross-validation over structures (leave one structure out with fewer structures).
CV_FOLDS = 10
#: Fewest test structures with which an out-of-sample judgement is recommended.
RECOMMENDED_TEST_STRUCTURES = 8
#: Search interval of the exponent b.
B_BOUNDS = (0.05, 4.0)
#: Number of grid points of the coarse search over b.
_B_GRID_POINTS = 80
#: Number of confidence levels p used for the miscalibration area.
_AREA_GRID_POINTS = 1000
#: Identifies the JSON files written by :meth:`CommitteeCalibration.save`.
FILE_FORMAT: Final = "cagoflow.committee-calibration"
FILE_VERSION: Final = 1
#: Units of the calibrated quantities.
UNITS = {"forces": "eV/Å", "energies": "eV", "virials": "eV"}
#: The 6 unique components (row, column) of a symmetric 3×3 virial, in Voigt order.
_VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


# --- the power law ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """σ_cal = a · σ̂^b (σ̂ and σ_cal in the quantity's unit; a in unit^(1−b), b dimensionless)."""

    a: Positive
    b: Positive

    def __post_init__(self) -> None:
        for name in ("a", "b"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"power-law parameter {name} must be a positive finite number, got {value!r}")

    def __call__(self, sigma_hat: Any) -> Any:
        """Calibrated uncertainty of committee spreads ``sigma_hat`` (NumPy arrays or torch tensors)."""
        return self.a * sigma_hat**self.b

    def inverse(self, sigma_cal: Any) -> Any:
        """Committee spread σ̂ = (σ_cal / a)^(1/b) that calibrates to ``sigma_cal``."""
        return (sigma_cal / self.a) ** (1.0 / self.b)


def _field(quantity: str | None, name: str) -> str:
    return name if quantity is None else f"{quantity}.{name}"


def validated_samples(
    sigma_hat: Any, residuals: Any, quantity: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float arrays (σ̂ floored at :data:`SIGMA_FLOOR`, residuals); refuses bad input.

    Raises :class:`InputError` (field ``<quantity>.sigma_hat`` or ``<quantity>.residuals``)
    for different shapes, fewer than :data:`MIN_SAMPLES` samples, NaN/inf, negative σ̂ or
    residuals that are all zero.
    """
    sigma = np.asarray(sigma_hat, dtype=float)
    resid = np.asarray(residuals, dtype=float)
    if sigma.shape != resid.shape:
        raise InputError(
            f"sigma_hat has shape {sigma.shape} but residuals have shape {resid.shape} (equal shapes expected)",
            field=_field(quantity, "residuals"),
        )
    sigma, resid = sigma.ravel(), resid.ravel()
    if sigma.size < MIN_SAMPLES:
        raise InputError(
            f"{sigma.size} samples given, a calibration needs at least {MIN_SAMPLES}",
            field=_field(quantity, "sigma_hat"),
        )
    for name, values in (("sigma_hat", sigma), ("residuals", resid)):
        if not np.all(np.isfinite(values)):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            raise InputError(f"{bad} of {values.size} values are NaN or infinite", field=_field(quantity, name))
    if np.any(sigma < 0):
        raise InputError("committee spreads must not be negative", field=_field(quantity, "sigma_hat"))
    if not np.any(resid != 0):
        raise InputError("all residuals are zero, nothing to calibrate against", field=_field(quantity, "residuals"))
    return np.maximum(sigma, SIGMA_FLOOR), resid


def _log_a2(b: float, log_sigma: np.ndarray, log_r2: np.ndarray) -> float:
    """ln a² of the closed-form optimal a for exponent b: a² = mean(r² / σ̂^(2b))."""
    return float(logsumexp(log_r2 - 2.0 * b * log_sigma) - math.log(log_r2.size))


def _profile_nll(b: float, log_sigma: np.ndarray, log_r2: np.ndarray) -> float:
    """Mean NLL per sample at exponent b with the optimal a (ln 2π + ln a² + 2b⟨ln σ̂⟩ + 1)."""
    return math.log(2 * math.pi) + _log_a2(b, log_sigma, log_r2) + 2.0 * b * float(log_sigma.mean()) + 1.0


def negative_log_likelihood(law: PowerLaw, sigma_hat: Any, residuals: Any) -> float:
    """Mean Gaussian NLL per sample, ⟨ln 2π + ln σ_cal² + r²/σ_cal²⟩, of ``law`` on the data."""
    sigma, resid = validated_samples(sigma_hat, residuals)
    sigma_cal = law(sigma)
    return float(np.mean(math.log(2 * math.pi) + np.log(sigma_cal**2) + resid**2 / sigma_cal**2))


def fit_power_law(sigma_hat: Any, residuals: Any, *, quantity: str | None = None) -> PowerLaw:
    """Fit σ_cal = a·σ̂^b by maximum likelihood (arrays of equal shape, flattened).

    ``quantity`` only names the data in error messages. Raises :class:`InputError` for
    arrays of different shape, fewer than :data:`MIN_SAMPLES` samples, NaN/inf values,
    negative σ̂ or residuals that are all zero. b is searched in :data:`B_BOUNDS`.
    """
    sigma, resid = validated_samples(sigma_hat, residuals, quantity)
    log_sigma = np.log(sigma)
    with np.errstate(divide="ignore"):
        log_r2 = np.log(resid**2)  # exact zeros give -inf, which logsumexp handles
    grid = np.linspace(*B_BOUNDS, _B_GRID_POINTS)
    values = [_profile_nll(b, log_sigma, log_r2) for b in grid]
    best = int(np.argmin(values))
    lower, upper = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    result = minimize_scalar(
        _profile_nll, bounds=(lower, upper), args=(log_sigma, log_r2), method="bounded", options={"xatol": 1e-7}
    )
    b = float(result.x) if result.fun <= values[best] else float(grid[best])
    return PowerLaw(a=math.exp(0.5 * _log_a2(b, log_sigma, log_r2)), b=b)


# --- diagnostics -----------------------------------------------------------------------------


@with_config(ConfigDict(extra="ignore"))  # the file also holds the derived ratio
@dataclass(frozen=True)
class CalibrationBin:
    """One bin of samples with similar σ_cal (σ_cal and rmse in the quantity's unit).

    Attributes:
        sigma_cal_low, sigma_cal_high: smallest and largest σ_cal of the bin's samples.
        sigma_cal_rms: RMS of σ_cal over the bin.
        rmse: RMS of the residuals over the bin.
        count: number of samples in the bin.
        ratio_low, ratio_high: the 68 % interval (16th to 84th percentile) of rmse/σ_cal over
            bootstrap resamples of the STRUCTURES the samples belong to (atoms of one structure
            are not independent); None where not computed.
        structures: distinct structures with samples in the bin (None: not recorded).
        band_low, band_high: the monotone band of rmse/σ_cal (dimensionless): 16th percentile
            of the DECREASING and 84th percentile of the INCREASING isotonic fits of the bin
            ratios against bin order, over the data and its bootstrap resamples (see
            :func:`validity_limit`); None where not computed (files of earlier releases).
    """

    sigma_cal_low: Finite
    sigma_cal_high: Finite
    sigma_cal_rms: Finite
    rmse: Finite
    count: Count
    ratio_low: Finite | None = None
    ratio_high: Finite | None = None
    structures: Count | None = None
    band_low: Finite | None = None
    band_high: Finite | None = None

    @property
    def ratio(self) -> float:
        """Observed over predicted error, rmse / sigma_cal_rms (1 when calibrated)."""
        return self.rmse / self.sigma_cal_rms if self.sigma_cal_rms > 0 else math.inf


@dataclass(frozen=True)
class DataSummary:
    """What a calibration was fitted on (σ̂ and residuals in the quantity's unit)."""

    n_samples: Count
    sigma_hat_min: Finite
    sigma_hat_max: Finite
    sigma_hat_rms: Finite
    residual_min: Finite
    residual_max: Finite
    residual_rms: Finite


@dataclass(frozen=True)
class OutOfSample:
    """The calibration judged out of sample, by cross-validation over structures
    (:func:`cross_validated_sigma_cal`): every figure uses the σ_cal of a law fitted without
    the sample's fold of structures.

    Attributes:
        n_folds: folds of the cross-validation (one per structure with ≤ :data:`CV_FOLDS`).
        n_structures: distinct structures of the samples.
        std_r: RMS of z = r/σ_cal (dimensionless; 1 when calibrated).
        miscalibration_area: as :attr:`CalibrationDiagnostics.miscalibration_area_after`.
        bins: equal-count bins of the out-of-sample σ_cal, with the monotone band
            (:func:`binned_errors`), from which :func:`validity_limit` is judged.
    """

    n_folds: Count
    n_structures: Count
    std_r: Finite
    miscalibration_area: Finite
    bins: list[CalibrationBin]


@dataclass(frozen=True)
class CalibrationDiagnostics:
    """How well a power law calibrates a data set, in sample and out of sample.

    Attributes:
        n_samples: number of samples.
        std_r_before: RMS of z = r/σ̂, sqrt(mean(r²/σ̂²)) (uncalibrated; 1 when calibrated).
            The RMS about zero is used instead of the standard deviation about the mean,
            because a calibrated σ must cover a bias too (and force errors are magnitudes).
        std_r_after: the same with σ_cal, IN SAMPLE (1 by construction for the fitted law).
        miscalibration_area_before, miscalibration_area_after: mean over confidence levels
            p ∈ (0, 1) of |observed(p) − p|, observed(p) = fraction of samples with
            |z| ≤ Φ⁻¹((1 + p)/2); uncalibrated and IN SAMPLE. 0 for Gaussian z ~ N(0, 1).
            Note that for per-atom force errors, which are magnitudes of 3-vectors, |z| is
            not half-normal even when the RMS is calibrated, so the area stays above 0 there.
        bins: equal-count bins of the IN-SAMPLE σ_cal, see :func:`binned_errors`.
        validity_limit: largest σ_cal up to which the calibration holds OUT OF SAMPLE, see
            :func:`validity_limit` (unit of the quantity; eV/Å for forces); None when it holds
            nowhere that was judged or cannot be judged out of sample (fails closed). Files of
            earlier releases hold the in-sample limit of their time here.
        summary: ranges and RMS of the data (None when not recorded).
        out_of_sample: the out-of-sample figures (None: no out-of-sample estimate, or a file
            of an earlier release).
    """

    n_samples: Count
    std_r_before: Finite
    std_r_after: Finite
    miscalibration_area_before: Finite
    miscalibration_area_after: Finite
    bins: list[CalibrationBin]
    validity_limit: Finite | None
    summary: DataSummary | None = None
    out_of_sample: OutOfSample | None = None

    @property
    def in_sample_validity_limit(self) -> float | None:
        """:func:`validity_limit` of the in-sample bins (for comparison only; None for bins
        without a monotone band)."""
        return validity_limit(self.bins)


def rms_z(sigma: np.ndarray, residuals: np.ndarray) -> float:
    """sqrt(mean(r²/σ²)), dimensionless."""
    return float(np.sqrt(np.mean((residuals / sigma) ** 2)))


def miscalibration_area(z: np.ndarray, n_levels: int = _AREA_GRID_POINTS) -> float:
    """Mean over confidence levels p of |fraction of |z| within Φ⁻¹((1+p)/2) − p| (dimensionless)."""
    levels = (np.arange(n_levels) + 0.5) / n_levels
    limits = ndtri((1.0 + levels) / 2.0)
    magnitudes = np.sort(np.abs(np.asarray(z, dtype=float).ravel()))
    observed = np.searchsorted(magnitudes, limits, side="right") / magnitudes.size
    return float(np.mean(np.abs(observed - levels)))


def structure_index(groups: Any, n_samples: int) -> np.ndarray:
    """Structure of each sample as 0, 1, ... in sorted order of the labels ``groups`` (None:
    every sample its own structure)."""
    if groups is None:
        return np.arange(n_samples)
    labels = np.asarray(groups).ravel()
    if labels.size != n_samples:
        raise InputError(f"{labels.size} structure labels for {n_samples} samples", field="groups")
    return np.unique(labels, return_inverse=True)[1].ravel()


def cross_validated_sigma_cal(
    sigma_hat: Any, residuals: Any, groups: Any = None, n_folds: int = CV_FOLDS
) -> np.ndarray | None:
    """Out-of-sample σ_cal of every sample (unit of the quantity), or None when there is none.

    The structures (``groups``: the structure of each sample; None: every sample its own) are
    dealt in sorted order of their labels, round robin, into min(structures, ``n_folds``)
    folds, so few structures give leave-one-structure-out. For each fold the power law is
    fitted (:func:`fit_power_law`) on the other folds and applied to the fold's σ̂. None with
    fewer than two structures or a training part of fewer than :data:`MIN_SAMPLES` samples.
    """
    sigma, resid = validated_samples(sigma_hat, residuals)
    fold = structure_index(groups, sigma.size) % n_folds
    folds = np.unique(fold)
    if folds.size < 2:
        return None
    sigma_cal = np.empty_like(sigma)
    for k in folds:
        held_out = fold == k
        if np.count_nonzero(~held_out) < MIN_SAMPLES:
            return None
        sigma_cal[held_out] = fit_power_law(sigma[~held_out], resid[~held_out])(sigma[held_out])
    return sigma_cal


def binned_errors(
    sigma_cal: Any,
    residuals: Any,
    n_bins: int = 10,
    min_count: int = MIN_BIN_COUNT,
    groups: Any = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> list[CalibrationBin]:
    """Sort samples by σ_cal and split them into bins of equal count (quantiles of σ_cal).

    The number of bins is lowered so that each bin holds at least ``min_count`` samples
    where possible (always at least one bin). Bins are ordered from small to large σ_cal.
    ``groups`` names the structure of each sample (None: every sample its own). Each bin gets
    the 68 % interval of its rmse/σ_cal over ``n_resamples`` bootstrap resamples of the
    structures and the monotone band of the isotonic fits (see :class:`CalibrationBin`;
    seeded: the same data give the same interval and band).
    """
    sigma = np.asarray(sigma_cal, dtype=float).ravel()
    resid = np.asarray(residuals, dtype=float).ravel()
    if sigma.shape != resid.shape or sigma.size == 0:
        raise InputError(
            f"sigma_cal ({sigma.size} values) and residuals ({resid.size}) must be equally long and non-empty",
            field="residuals",
        )
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}", field="n_bins")
    owner = structure_index(groups, sigma.size)
    n_bins = max(1, min(n_bins, sigma.size // max(min_count, 1)))
    chunks = np.array_split(np.argsort(sigma, kind="stable"), n_bins)
    ratios, weights = bootstrap_ratios(sigma, resid, owner, chunks, n_resamples)
    band_low, band_high = monotone_band(ratios, weights)
    bins = []
    for j, chunk in enumerate(chunks):
        s, r = sigma[chunk], resid[chunk]
        low, high = _interval(ratios[1:, j])
        bins.append(
            CalibrationBin(
                sigma_cal_low=float(s.min()),
                sigma_cal_high=float(s.max()),
                sigma_cal_rms=float(np.sqrt(np.mean(s**2))),
                rmse=float(np.sqrt(np.mean(r**2))),
                count=int(chunk.size),
                ratio_low=low,
                ratio_high=high,
                structures=int(np.unique(owner[chunk]).size),
                band_low=float(band_low[j]),
                band_high=float(band_high[j]),
            )
        )
    return bins


def bootstrap_ratios(
    sigma: np.ndarray, resid: np.ndarray, owner: np.ndarray, chunks: Sequence[np.ndarray], n_resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    """rmse/σ_cal_rms and weight (samples counted with their multiplicity) of every bin, as
    arrays (1 + n_resamples, bins): row 0 the data, then bootstrap resamples of the structures
    ``owner`` (seeded). A resample that leaves a bin empty gives it weight 0 and ratio NaN."""
    rng = np.random.default_rng(0)
    n_groups = int(owner.max()) + 1
    resampled = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=max(n_resamples, 0))
    multiplicity = np.vstack([np.ones(n_groups), resampled])
    ratios = np.full((multiplicity.shape[0], len(chunks)), np.nan)
    weights = np.zeros_like(ratios)
    for j, chunk in enumerate(chunks):
        w = multiplicity[:, owner[chunk]]  # (rows, samples of the bin)
        weights[:, j] = w.sum(1)
        used = weights[:, j] > 0
        rmse = np.sqrt((w[used] * resid[chunk] ** 2).sum(1) / weights[used, j])
        spread = np.sqrt((w[used] * sigma[chunk] ** 2).sum(1) / weights[used, j])
        ratios[used, j] = rmse / np.maximum(spread, SIGMA_FLOOR)
    return ratios, weights


def _interval(ratios: np.ndarray) -> tuple[float | None, float | None]:
    """16th and 84th percentile of the finite ``ratios`` (None, None without any)."""
    finite = ratios[np.isfinite(ratios)]
    if finite.size == 0:
        return None, None
    return float(np.percentile(finite, 16)), float(np.percentile(finite, 84))


def _isotonic(ratios: np.ndarray, weights: np.ndarray, increasing: bool) -> np.ndarray:
    """Weighted isotonic regression of one row of bin ratios against bin order (NaN for bins of
    weight 0, which are left out of the fit)."""
    fitted = np.full(ratios.shape, np.nan)
    used = weights > 0
    fitted[used] = isotonic_regression(ratios[used], weights=weights[used], increasing=increasing).x
    return fitted


def monotone_band(ratios: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The monotone band of bin ratios RMSE/σ_cal (dimensionless), per bin.

    ``ratios`` and ``weights`` are (rows, bins), bins ordered by σ_cal, rows the data and its
    bootstrap resamples. Each row is fitted by an increasing and by a decreasing isotonic
    regression (weights: the bins' weights). Returns the 16th percentile of the decreasing
    fits (a lower edge that sees growing under-confidence, ratio < 0.8) and the 84th
    percentile of the increasing fits (an upper edge that sees growing over-confidence,
    ratio > 1.25); a single outlying bin is pooled with its neighbours by both fits.
    """
    increasing = np.array([_isotonic(r, w, True) for r, w in zip(ratios, weights)])
    decreasing = np.array([_isotonic(r, w, False) for r, w in zip(ratios, weights)])
    return np.nanpercentile(decreasing, 16, axis=0), np.nanpercentile(increasing, 84, axis=0)


def validity_limit(
    bins: Sequence[CalibrationBin],
    low: float = VALID_RATIO[0],
    high: float = VALID_RATIO[1],
    min_count: int = MIN_BIN_COUNT,
    min_structures: int = MIN_BIN_STRUCTURES,
) -> float | None:
    """Largest σ_cal up to which the calibration holds (unit of the quantity, eV/Å for
    forces), or None.

    ``bins`` are ordered from small to large σ_cal, as :func:`binned_errors` gives them. A bin
    is valid when both edges of its monotone band lie inside [``low``, ``high``] (``band_low``
    ≥ ``low``: the decreasing fits see no growing under-confidence; ``band_high`` ≤ ``high``:
    the increasing fits see no growing over-confidence; and neither edge lies wholly beyond
    the other side, which catches a mis-calibration that shrinks as σ_cal grows) and it holds
    at least ``min_count`` samples from at least ``min_structures`` structures. The walk goes from small σ_cal upward and stops at the first
    bin that is invalid, too thin or without a band; the limit is the upper σ_cal edge of the
    last valid bin before it, None when the first bin is not valid (fails closed).
    """
    limit = None
    for current in bins:
        judged = current.band_low is not None and current.band_high is not None
        enough = current.count >= min_count and (current.structures or 0) >= min_structures
        if not (judged and enough and all(low <= edge <= high for edge in (current.band_low, current.band_high))):
            break
        limit = current.sigma_cal_high
    return limit


def summarize_data(sigma_hat: np.ndarray, residuals: np.ndarray) -> DataSummary:
    """Counts, ranges and RMS of σ̂ and of the residuals."""
    return DataSummary(
        n_samples=int(sigma_hat.size),
        sigma_hat_min=float(sigma_hat.min()),
        sigma_hat_max=float(sigma_hat.max()),
        sigma_hat_rms=float(np.sqrt(np.mean(sigma_hat**2))),
        residual_min=float(residuals.min()),
        residual_max=float(residuals.max()),
        residual_rms=float(np.sqrt(np.mean(residuals**2))),
    )


def judge_out_of_sample(sigma_hat: Any, residuals: Any, n_bins: int = 10, groups: Any = None) -> OutOfSample | None:
    """The out-of-sample figures of the power-law fit on (σ̂, residual) pairs (``groups``: the
    structure of each sample), or None when :func:`cross_validated_sigma_cal` has none."""
    sigma, resid = validated_samples(sigma_hat, residuals)
    sigma_cal = cross_validated_sigma_cal(sigma, resid, groups)
    if sigma_cal is None:
        return None
    n_structures = int(structure_index(groups, sigma.size).max()) + 1
    return OutOfSample(
        n_folds=min(n_structures, CV_FOLDS),
        n_structures=n_structures,
        std_r=rms_z(sigma_cal, resid),
        miscalibration_area=miscalibration_area(resid / sigma_cal),
        bins=binned_errors(sigma_cal, resid, n_bins=n_bins, groups=groups),
    )


def diagnose(
    law: PowerLaw, sigma_hat: Any, residuals: Any, n_bins: int = 10, *, quantity: str | None = None, groups: Any = None
) -> CalibrationDiagnostics:
    """Calibration quality of ``law`` on (σ̂, residual) pairs, before and after calibration
    (``groups``: the structure of each sample, for the bootstrap and the folds).

    The in-sample figures judge ``law`` itself; the out-of-sample figures and the validity
    limit judge the fit that produced it, refitted by :func:`cross_validated_sigma_cal`.
    """
    sigma, resid = validated_samples(sigma_hat, residuals, quantity)
    sigma_cal = law(sigma)
    out_of_sample = judge_out_of_sample(sigma, resid, n_bins, groups)
    return CalibrationDiagnostics(
        n_samples=int(sigma.size),
        std_r_before=rms_z(sigma, resid),
        std_r_after=rms_z(sigma_cal, resid),
        miscalibration_area_before=miscalibration_area(resid / sigma),
        miscalibration_area_after=miscalibration_area(resid / sigma_cal),
        bins=binned_errors(sigma_cal, resid, n_bins=n_bins, groups=groups),
        validity_limit=None if out_of_sample is None else validity_limit(out_of_sample.bins),
        summary=summarize_data(sigma, resid),
        out_of_sample=out_of_sample,
    )


# --- committee calibration -------------------------------------------------------------------


@dataclass(frozen=True)
class QuantityCalibration:
    """Power law and diagnostics of one quantity ("forces", "energies" or "virials")."""

    quantity: str
    law: PowerLaw
    diagnostics: CalibrationDiagnostics
    unit: str


def calibrate_quantity(
    quantity: str, sigma_hat: Any, residuals: Any, groups: Any = None, n_bins: int = 10
) -> QuantityCalibration:
    """Fit and diagnose the power law of one quantity (unit from :data:`UNITS`; ``groups``:
    the structure of each sample)."""
    law = fit_power_law(sigma_hat, residuals, quantity=quantity)
    diagnostics = diagnose(law, sigma_hat, residuals, n_bins, quantity=quantity, groups=groups)
    return QuantityCalibration(quantity, law, diagnostics, UNITS[quantity])


@dataclass(frozen=True)
class CommitteeCalibration:
    """Calibration of a committee (or of a subset of its members).

    Attributes:
        forces: per-atom force calibration (σ̂_F_i of eq. 9 against e_i), eV/Å.
        energies: total-energy calibration per structure, eV; None with fewer than 10 structures.
        virials: calibration of the 6 unique virial components, eV; None without stress labels.
        members: indices of the committee members the calibration holds for.
        n_structures: number of reference structures.
        n_atoms: number of atoms over all reference structures.
        contact_distances: shortest distance (Å) of each species pair (``"H-O"``) in the
            training set the committee was trained on: CAGO's close-contact guard (None: not given).
        force_test_sigma_cal: σ_cal (eV/Å) of every test atom, ascending, to count the test
            points above a δ (None: not recorded).
        packing_ranges: per species pair (``"H-O"``), the smallest and largest mean
            nearest-neighbour distance (Å) over the training and test structures
            (:func:`cagoflow.geometry.neighbour_distance_ranges`): CAGO's packing guard
            (None: not recorded).
    """

    forces: QuantityCalibration
    energies: QuantityCalibration | None
    virials: QuantityCalibration | None
    members: tuple[int, ...]
    n_structures: int
    n_atoms: int
    contact_distances: dict[str, float] | None = None
    force_test_sigma_cal: tuple[float, ...] | None = field(default=None, repr=False)
    packing_ranges: dict[str, tuple[float, float]] | None = None

    @property
    def force_validity_limit(self) -> float | None:
        """Largest calibrated force uncertainty σ_cal,F (eV/Å) up to which the calibration holds,
        judged out of sample (None: nowhere judged; files of earlier releases: their limit)."""
        return self.forces.diagnostics.validity_limit

    def for_cago(self):
        """What CAGO needs of this calibration (:class:`cagoflow.cago.CagoCalibration`)."""
        from cagoflow.cago import CagoCalibration

        return CagoCalibration(
            self.forces.law,
            self.force_validity_limit,
            self.contact_distances,
            self.force_test_sigma_cal,
            packing_ranges=self.packing_ranges,
        )

    def save(self, path: str | Path) -> Path:
        """Write the calibration as indented JSON, atomically."""
        return atomic_write_json(path, _calibration_to_dict(self))

    @classmethod
    def load(cls, path: str | Path) -> "CommitteeCalibration":
        """Read a file written by :meth:`save` (any version-1 file, see :class:`CalibrationJson`);
        a malformed file raises one :class:`InputError` naming the file and the field."""
        path = Path(path)
        data = read_json(path)
        return validate_input(CalibrationJson, data, file=path, text="", context={}).value()


def per_atom_force_error(member_forces: Any, reference_forces: Any) -> np.ndarray:
    """Per-atom error e_i = sqrt((1/M) Σ_m |F_i^m − F_i^ref|²), eV/Å (eq. 1 of the paper).

    ``member_forces``: (M, A, 3), ``reference_forces``: (A, 3) → (A,).
    """
    forces = np.asarray(member_forces, dtype=float)
    reference = np.asarray(reference_forces, dtype=float)
    if forces.ndim != 3 or forces.shape[2] != 3 or reference.shape != forces.shape[1:]:
        raise InputError(
            f"member forces of shape {forces.shape} do not match reference forces of shape "
            f"{reference.shape} (expected (M, A, 3) and (A, 3))",
            field="forces",
        )
    return np.sqrt(((forces - reference) ** 2).sum(-1).mean(0))


def calibrate_committee(
    prediction: CommitteePrediction,
    references: Sequence[Atoms],
    members: Sequence[int] | None = None,
    training: Sequence[Atoms] | None = None,
) -> CommitteeCalibration:
    """Calibrate forces, energies and virials of a committee against labelled structures.

    ``references[k]`` carries the reference labels of structure k of ``prediction`` in
    ``atoms.calc.results`` (``energy`` eV, ``forces`` eV/Å, optional ``stress`` eV/Å³).
    With ``members``, only those committee members are used (and recorded). With
    ``training`` (the structures the committee was trained on), the shortest distance of every
    species pair in them is stored for CAGO's close-contact guard. The range of each species
    pair's mean nearest-neighbour distance over the training (where given) and reference
    structures is stored for CAGO's packing guard.

    - forces (required): per atom, σ̂ = σ̂_F_i (eq. 9), residual = :func:`per_atom_force_error`.
    - energies: per structure, σ̂ = committee std of the TOTAL energy, residual = committee
      mean − reference total energy (eV); fitted when at least 10 structures have energies.
    - virials: per structure and unique component (xx, yy, zz, yz, xz, xy), σ̂ = committee
      std, residual = mean − (−V·stress_ref) in eV; fitted when the committee predicts
      virials and at least 10 components of periodic structures with stress are available.
    """
    member_list = tuple(range(prediction.n_members)) if members is None else tuple(int(m) for m in members)
    if members is not None:
        _check_members(member_list, prediction.n_members)
        prediction = prediction.members(member_list)
    if prediction.n_members < 2:
        raise InputError("a calibration needs a committee of at least two members", field="members")
    _check_references(prediction, references)
    labels = [structure_labels(atoms) for atoms in references]
    sigma_hat, errors, groups = force_samples(prediction, references)
    forces = calibrate_quantity("forces", sigma_hat, errors, groups)
    return CommitteeCalibration(
        forces=forces,
        energies=_energy_calibration(prediction, labels),
        virials=_virial_calibration(prediction, references, labels),
        members=member_list,
        n_structures=prediction.n_structures,
        n_atoms=int(np.sum(prediction.natoms)),
        contact_distances=None if training is None else shortest_pair_distances(training),
        force_test_sigma_cal=tuple(float(f"{value:.5g}") for value in np.sort(forces.law(sigma_hat))),
        packing_ranges=neighbour_distance_ranges([*(training or ()), *references]),
    )


def _check_members(members: tuple[int, ...], n_members: int) -> None:
    if len(set(members)) != len(members) or any(not 0 <= m < n_members for m in members):
        raise InputError(
            f"members {list(members)} must be distinct indices in [0, {n_members})", field="members"
        )


def _check_references(prediction: CommitteePrediction, references: Sequence[Atoms]) -> None:
    if len(references) != prediction.n_structures:
        raise InputError(
            f"{len(references)} reference structures for a prediction of {prediction.n_structures}",
            field="references",
        )
    for k, atoms in enumerate(references):
        if len(atoms) != int(prediction.natoms[k]):
            raise InputError(
                f"reference structure {k} has {len(atoms)} atoms, the prediction {int(prediction.natoms[k])}",
                field=f"references[{k}]",
            )
        if "forces" not in structure_labels(atoms):
            raise InputError(f"reference structure {k} has no reference forces", field=f"references[{k}].forces")


def force_samples(
    prediction: CommitteePrediction, references: Sequence[Atoms]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per atom of the reference structures: σ̂_F_i (eq. 9, eV/Å), the error e_i
    (:func:`per_atom_force_error`, eV/Å) and the index of the atom's structure."""
    reference = np.concatenate(
        [np.asarray(structure_labels(atoms)["forces"], dtype=float).reshape(-1, 3) for atoms in references]
    )
    groups = np.repeat(np.arange(prediction.n_structures), prediction.natoms)
    return force_sigma_hat(prediction.forces), per_atom_force_error(prediction.forces, reference), groups


def _energy_calibration(
    prediction: CommitteePrediction, labels: list[dict[str, Any]]
) -> QuantityCalibration | None:
    keep = [k for k, label in enumerate(labels) if "energy" in label]
    if len(keep) < MIN_SAMPLES:
        return None
    reference = np.array([float(labels[k]["energy"]) for k in keep])
    energies = prediction.energies[:, keep]
    return calibrate_quantity("energies", member_std(energies), energies.mean(0) - reference, groups=np.array(keep))


def _virial_calibration(
    prediction: CommitteePrediction, references: Sequence[Atoms], labels: list[dict[str, Any]]
) -> QuantityCalibration | None:
    if prediction.virials is None:
        return None
    rows, cols = np.array(_VOIGT_PAIRS).T
    sigmas, residuals, groups = [], [], []
    for k, (atoms, label) in enumerate(zip(references, labels)):
        predicted = prediction.virials[:, k][:, rows, cols]  # (M, 6)
        if "stress" not in label or atoms.cell.rank != 3 or not np.all(np.isfinite(predicted)):
            continue
        reference = virial_from_stress(np.asarray(label["stress"], dtype=float), atoms.get_volume())[rows, cols]
        sigmas.append(member_std(predicted))
        residuals.append(predicted.mean(0) - reference)
        groups.append(np.full(len(rows), k))
    if sum(len(s) for s in sigmas) < MIN_SAMPLES:
        return None
    return calibrate_quantity("virials", np.concatenate(sigmas), np.concatenate(residuals), groups=np.concatenate(groups))


# --- JSON ------------------------------------------------------------------------------------
#
# The file written by :meth:`CommitteeCalibration.save` is described by the pydantic models
# below, whose entries are the result classes above (power law, diagnostics, bins, summary, their
# fields annotated with the strict numbers of :mod:`cagoflow.inputs`); :meth:`CommitteeCalibration.load` validates a
# file against them, so any problem is one
# InputError naming the file and the field. Keys with a default may be missing: files of earlier
# releases lack the bins' interval, structures and monotone band, the out-of-sample block, the
# contact distances, the test σ_cal and the packing ranges.
# ``ratio`` and ``force_validity_limit_eV_per_A`` are derived: written for readers, not read back.

#: How σ_cal follows from σ̂, as written into every quantity's entry.
FORMULA: Final = "sigma_cal = a * sigma_hat ** b"


class QuantityJson(InputModel):
    """:class:`QuantityCalibration` in the file."""

    quantity: Literal["forces", "energies", "virials"]
    unit: str
    formula: Literal[FORMULA]
    law: PowerLaw
    diagnostics: CalibrationDiagnostics

    def value(self) -> QuantityCalibration:
        """The quantity's calibration as cagoflow holds it."""
        return QuantityCalibration(self.quantity, self.law, self.diagnostics, self.unit)


class CalibrationJson(InputModel):
    """The file of a :class:`CommitteeCalibration`."""

    format: Literal[FILE_FORMAT] = Field(..., description="identifies a committee calibration file")
    version: Literal[FILE_VERSION] = Field(..., description="version of this file format")
    members: list[Count]
    n_structures: Count
    n_atoms: Count
    force_validity_limit_eV_per_A: Finite | None = Field(None, description="forces.diagnostics.validity_limit (derived)")
    forces: QuantityJson
    energies: QuantityJson | None
    virials: QuantityJson | None
    training_shortest_distances_A: dict[str, Finite] | None = None
    force_test_sigma_cal_eV_per_A: list[Finite] | None = None
    training_neighbour_distance_ranges_A: dict[str, tuple[Finite, Finite]] | None = None

    @model_validator(mode="after")
    def _named_quantities(self) -> "CalibrationJson":
        for key, unit in UNITS.items():
            entry = getattr(self, key)
            if entry is not None and (entry.quantity, entry.unit) != (key, unit):
                raise FieldError(f"expected quantity {key!r} in {unit}, found {entry.quantity!r} in {entry.unit!r}", key)
        return self

    def value(self) -> CommitteeCalibration:
        """The calibration as cagoflow holds it."""
        return CommitteeCalibration(
            forces=self.forces.value(),
            energies=None if self.energies is None else self.energies.value(),
            virials=None if self.virials is None else self.virials.value(),
            members=tuple(self.members),
            n_structures=self.n_structures,
            n_atoms=self.n_atoms,
            contact_distances=self.training_shortest_distances_A,
            force_test_sigma_cal=None
            if self.force_test_sigma_cal_eV_per_A is None
            else tuple(self.force_test_sigma_cal_eV_per_A),
            packing_ranges=self.training_neighbour_distance_ranges_A,
        )


def _quantity_to_dict(calibration: QuantityCalibration | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    diagnostics = asdict(calibration.diagnostics)
    diagnostics["bins"] = _bins_to_list(calibration.diagnostics.bins)
    if calibration.diagnostics.out_of_sample is not None:
        diagnostics["out_of_sample"]["bins"] = _bins_to_list(calibration.diagnostics.out_of_sample.bins)
    return {
        "quantity": calibration.quantity,
        "unit": calibration.unit,
        "formula": FORMULA,
        "law": asdict(calibration.law),
        "diagnostics": diagnostics,
    }


def _bins_to_list(bins: list[CalibrationBin]) -> list[dict[str, Any]]:
    return [dict(asdict(item), ratio=item.ratio) for item in bins]


def _calibration_to_dict(calibration: CommitteeCalibration) -> dict[str, Any]:
    return {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "members": list(calibration.members),
        "n_structures": calibration.n_structures,
        "n_atoms": calibration.n_atoms,
        "force_validity_limit_eV_per_A": calibration.force_validity_limit,
        "forces": _quantity_to_dict(calibration.forces),
        "energies": _quantity_to_dict(calibration.energies),
        "virials": _quantity_to_dict(calibration.virials),
        "training_shortest_distances_A": calibration.contact_distances,
        "force_test_sigma_cal_eV_per_A": None
        if calibration.force_test_sigma_cal is None
        else list(calibration.force_test_sigma_cal),
        "training_neighbour_distance_ranges_A": None
        if calibration.packing_ranges is None
        else {name: list(bounds) for name, bounds in calibration.packing_ranges.items()},
    }
