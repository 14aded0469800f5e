"""Figures of an uncertainty calibration (as Fig. 2a/2b of Cezar et al. 2025).

Figures are drawn with :class:`matplotlib.figure.Figure` directly (no pyplot, no global
backend state) and written atomically as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cagoflow.calibration import PowerLaw, validated_samples, binned_errors, diagnose
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
) -> list[Path]:
    """Write ``<prefix>_z_histogram.png`` and ``<prefix>_error_vs_sigma.png``; return their paths.

    ``sigma_hat`` and ``residuals`` (same shape, in ``unit``) are the committee spreads and
    the errors ŷ − y_ref (or error magnitudes, e.g. per-atom force errors) of a test set.
    """
    sigma, resid = validated_samples(sigma_hat, residuals, quantity)
    prefix = str(path_prefix)
    return [
        write_figure(histogram_figure(sigma, resid, law, quantity), Path(f"{prefix}_z_histogram.png")),
        write_figure(error_figure(sigma, resid, law, quantity, unit, n_bins), Path(f"{prefix}_error_vs_sigma.png")),
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
    sigma_hat: np.ndarray, residuals: np.ndarray, law: PowerLaw, quantity: str, unit: str, n_bins: int = 10
) -> Figure:
    """Log-log |r| against σ̂ and σ_cal, binned RMSE, y = x and the validity range (shaded)."""
    sigma_cal = law(sigma_hat)
    diagnostics = diagnose(law, sigma_hat, residuals, n_bins)
    shown = _scatter_subset(sigma_hat.size)
    magnitude = np.abs(residuals)

    figure = Figure(figsize=(6.0, 5.0))
    axes = figure.add_subplot()
    for sigma, color, label in ((sigma_hat, "tab:gray", "σ̂ (uncalibrated)"), (sigma_cal, "tab:blue", "σ_cal")):
        axes.scatter(
            sigma[shown], magnitude[shown], s=2, alpha=0.25, color=color, label=f"|r| vs {label}", rasterized=True
        )
    # binning σ̂ itself (identity law) gives the uncalibrated RMSE curve; its "σ_cal" fields hold σ̂
    raw_bins = binned_errors(sigma_hat, residuals, n_bins=n_bins)
    curves = ((raw_bins, "s--", "tab:orange", "σ̂"), (diagnostics.bins, "o-", "tab:red", "σ_cal"))
    for bins, style, color, label in curves:
        rms, rmse = [b.sigma_cal_rms for b in bins], [b.rmse for b in bins]
        axes.plot(rms, rmse, style, color=color, label=f"binned RMSE vs RMS {label}")
    low = min(sigma_hat.min(), sigma_cal.min())
    span = np.array([low, max(sigma_hat.max(), sigma_cal.max(), magnitude.max())])
    axes.plot(span, span, color="black", lw=1, label="y = x")
    if diagnostics.validity_limit is not None:
        limit = diagnostics.validity_limit
        label = f"validity range (σ_cal ≤ {limit:.3g} {unit})"
        axes.axvspan(sigma_cal.min(), limit, color="tab:green", alpha=0.12, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(f"committee uncertainty σ̂ or σ_cal ({unit})")
    axes.set_ylabel(f"error |r| ({unit})")
    before, after = diagnostics.std_r_before, diagnostics.std_r_after
    axes.set_title(f"{quantity}: error vs uncertainty (RMS of z {before:.2f} → {after:.2f})")
    axes.legend(fontsize=8, loc="lower right")
    return figure


def _scatter_subset(n: int) -> np.ndarray:
    """Indices of at most :data:`MAX_SCATTER_POINTS` samples (fixed seed, reproducible)."""
    if n <= MAX_SCATTER_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_SCATTER_POINTS, replace=False))
