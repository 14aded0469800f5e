"""Figures of an uncertainty calibration (as Fig. 2a/2b of Cezar et al. 2025).

Figures are drawn with :class:`matplotlib.figure.Figure` directly (no pyplot, no global
backend state) and written atomically as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cagoflow.calibration import (
    VALID_RATIO,
    CalibrationBin,
    CalibrationDiagnostics,
    PowerLaw,
    binned_errors,
    diagnose,
    validated_samples,
)
from cagoflow.io import write_figure

#: At most this many samples are drawn in scatter plots (a fixed-seed random subset).
MAX_SCATTER_POINTS = 20000


def plot_calibration(
    sigma_hat: Any,
    residuals: Any,
    law: PowerLaw,
    path_prefix: str | Path,
    *,
    quantity: str = "forces",
    unit: str = "eV/Å",
    n_bins: int = 10,
    groups: Any = None,
) -> list[Path]:
    """Write ``<prefix>_z_histogram.png`` and ``<prefix>_error_vs_sigma.png``; return their paths.

    ``sigma_hat`` and ``residuals`` (same shape, in ``unit``) are the committee spreads and
    the errors ŷ − y_ref (or error magnitudes, e.g. per-atom force errors) of a test set;
    ``groups`` the structure of each sample (None: every sample its own), for the
    cross-validation and bootstrap behind the out-of-sample reliability diagram.
    """
    sigma, resid = validated_samples(sigma_hat, residuals, quantity)
    diagnostics = diagnose(law, sigma, resid, n_bins, quantity=quantity, groups=groups)
    prefix = str(path_prefix)
    error = error_figure(sigma, resid, law, diagnostics, quantity, unit, n_bins)
    return [
        write_figure(histogram_figure(sigma, resid, law, quantity), Path(f"{prefix}_z_histogram.png")),
        write_figure(error, Path(f"{prefix}_error_vs_sigma.png")),
    ]


def histogram_figure(sigma_hat: np.ndarray, residuals: np.ndarray, law: PowerLaw, quantity: str) -> Figure:
    """Histogram of z = r/σ̂ and z = r/σ_cal against the standard normal density.

    Signed residuals are compared with N(0, 1); non-negative residuals (error magnitudes)
    as |z| with the half-normal density of |N(0, 1)|.
    """
    magnitudes = bool(np.all(residuals >= 0))
    before, after = residuals / sigma_hat, residuals / law(sigma_hat)
    upper = 5.0
    lower = 0.0 if magnitudes else -upper
    edges = np.linspace(lower, upper, 61)
    grid = np.linspace(lower, upper, 400)
    density = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi) * (2.0 if magnitudes else 1.0)

    figure = Figure(figsize=(6.0, 4.2))
    axes = figure.add_subplot()
    symbol = "|z|" if magnitudes else "z"
    r = "|r|" if magnitudes else "r"
    for values, sigma in ((before, "σ̂ (uncalibrated)"), (after, "σ_cal (calibrated)")):
        label = f"{symbol} = {r}/{sigma}"
        axes.hist(np.clip(values, lower, upper), bins=edges, density=True, alpha=0.45, label=label)
    normal = "|N(0, 1)|" if magnitudes else "N(0, 1)"
    axes.plot(grid, density, color="black", lw=1.5, label=f"{normal} density")
    clipped = f"{upper:g}" if magnitudes else f"±{upper:g}"
    axes.set_xlabel(f"{symbol} (dimensionless; values beyond {clipped} clipped)")
    axes.set_ylabel("probability density")
    axes.set_title(f"{quantity}: normalised errors, σ_cal = {law.a:.3g}·σ̂^{law.b:.3f}")
    axes.legend(fontsize=8)
    return figure


def error_figure(
    sigma_hat: np.ndarray,
    residuals: np.ndarray,
    law: PowerLaw,
    diagnostics: CalibrationDiagnostics,
    quantity: str,
    unit: str,
    n_bins: int = 10,
) -> Figure:
    """Top: log-log |r| against σ̂ and σ_cal, binned RMSE, y = x and the validity range (shaded).
    Bottom: the reliability diagram, RMSE/σ_cal per bin out of sample with its monotone band,
    the in-sample bins for comparison and the valid range of the ratio."""
    sigma_cal = law(sigma_hat)
    shown = _scatter_subset(sigma_hat.size)
    magnitude = np.abs(residuals)
    limit = diagnostics.validity_limit

    figure = Figure(figsize=(6.0, 8.5))
    axes, reliability = figure.subplots(2, 1, height_ratios=(5, 3))
    for sigma, color, label in ((sigma_hat, "tab:gray", "σ̂ (uncalibrated)"), (sigma_cal, "tab:blue", "σ_cal")):
        axes.scatter(
            sigma[shown], magnitude[shown], s=2, alpha=0.25, color=color, label=f"|r| vs {label}", rasterized=True
        )
    # binning σ̂ itself (identity law) gives the uncalibrated RMSE curve; its "σ_cal" fields hold σ̂
    raw_bins = binned_errors(sigma_hat, residuals, n_bins=n_bins, n_resamples=0)
    curves = [(raw_bins, "s--", "tab:orange", "σ̂"), (diagnostics.bins, "o-", "tab:red", "σ_cal in sample")]
    if diagnostics.out_of_sample is not None:
        curves.append((diagnostics.out_of_sample.bins, "D-", "tab:purple", "σ_cal out of sample"))
    for bins, style, color, label in curves:
        rms, rmse = [b.sigma_cal_rms for b in bins], [b.rmse for b in bins]
        axes.plot(rms, rmse, style, color=color, label=f"binned RMSE vs RMS {label}")
    low = min(sigma_hat.min(), sigma_cal.min())
    span = np.array([low, max(sigma_hat.max(), sigma_cal.max(), magnitude.max())])
    axes.plot(span, span, color="black", lw=1, label="y = x")
    if limit is not None:
        label = f"validity range, out of sample (σ_cal ≤ {limit:.3g} {unit})"
        axes.axvspan(sigma_cal.min(), limit, color="tab:green", alpha=0.12, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(f"committee uncertainty σ̂ or σ_cal ({unit})")
    axes.set_ylabel(f"error |r| ({unit})")
    axes.set_title(f"{quantity}: error vs uncertainty (RMS of z {_rms_z_text(diagnostics)})", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    reliability_diagram(reliability, diagnostics, unit)
    figure.tight_layout()
    return figure


def _rms_z_text(diagnostics: CalibrationDiagnostics) -> str:
    """"before → in sample / out of sample" of the RMS of z."""
    out = diagnostics.out_of_sample
    judged = "" if out is None else f" / {out.std_r:.2f} out of sample"
    return f"{diagnostics.std_r_before:.2f} → {diagnostics.std_r_after:.2f} in sample{judged}"


def reliability_diagram(axes: Any, diagnostics: CalibrationDiagnostics, unit: str) -> None:
    """RMSE/σ_cal against RMS σ_cal per bin: out of sample with the monotone band (16th percentile
    of the decreasing to 84th percentile of the increasing isotonic fits), in sample as open marks."""
    axes.axhspan(*VALID_RATIO, color="tab:green", alpha=0.12, label=f"valid ratio {VALID_RATIO[0]}-{VALID_RATIO[1]}")
    axes.axhline(1.0, color="black", lw=1)
    axes.plot(*_ratios(diagnostics.bins), "o", mfc="none", color="tab:red", label="in sample")
    out = diagnostics.out_of_sample
    if out is None:
        axes.set_title("not judged out of sample (too few structures)", fontsize=9)
    else:
        rms, ratio = _ratios(out.bins)
        band = [(b.band_low, b.band_high) for b in out.bins]
        axes.fill_between(rms, *np.array(band, dtype=float).T, color="tab:purple", alpha=0.25, label="monotone band")
        label = f"out of sample ({out.n_folds} folds of {out.n_structures} structures)"
        axes.plot(rms, ratio, "D-", color="tab:purple", label=label)
    if diagnostics.validity_limit is not None:
        axes.axvline(diagnostics.validity_limit, color="tab:green", ls="--", label="validity limit")
    axes.set_xscale("log")
    axes.set_xlabel(f"RMS σ_cal of the bin ({unit})")
    axes.set_ylabel("RMSE / RMS σ_cal")
    axes.legend(fontsize=7)


def _ratios(bins: list[CalibrationBin]) -> tuple[list[float], list[float]]:
    """RMS σ_cal and RMSE/σ_cal of each bin."""
    return [b.sigma_cal_rms for b in bins], [b.ratio for b in bins]


def _scatter_subset(n: int) -> np.ndarray:
    """Indices of at most :data:`MAX_SCATTER_POINTS` samples (fixed seed, reproducible)."""
    if n <= MAX_SCATTER_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_SCATTER_POINTS, replace=False))
