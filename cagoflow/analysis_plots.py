"""Figures of the MD analysis (as Figs. 4/5 of Cezar et al. 2025): RDF, MSD and a summary.

Figures are drawn with :class:`matplotlib.figure.Figure` directly (no pyplot, no global
backend state) and written atomically as PNG with :func:`cagoflow.io.write_figure`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cagoflow.analysis import (
    DiffusionFit,
    ModelErrors,
    RadialDistribution,
    StabilityReport,
    density,
    stability,
)
from cagoflow.io import write_figure

if TYPE_CHECKING:
    from cagoflow.engines.ase_md import MDResult

__all__ = [
    "msd_figure",
    "plot_msd",
    "plot_rdf",
    "plot_summary",
    "rdf_figure",
    "summary_figure",
]

RdfInput = RadialDistribution | Mapping[str, RadialDistribution]
MsdInput = DiffusionFit | Mapping[str, DiffusionFit]


def _labelled(items, default_label) -> dict[str, object]:
    """A single item or a mapping label → item, as a mapping."""
    if isinstance(items, Mapping):
        return dict(items)
    return {default_label(items): items}


def _draw_rdf(axes: Axes, rdfs: RdfInput) -> None:
    for label, item in _labelled(rdfs, lambda x: "–".join(x.pair)).items():
        try:
            r_min = item.first_minimum()
            label = f"{label} (n = {item.coordination_number(r_min):.2f} within {r_min:.2f} Å)"
        except ValueError:
            pass
        axes.plot(item.r_A, item.g, label=label)
    axes.axhline(1.0, color="0.6", lw=0.8, ls=":")
    axes.set_xlabel("r (Å)")
    axes.set_ylabel("g(r)")
    axes.legend(fontsize="small")


def _draw_msd(axes: Axes, fits: MsdInput) -> None:
    for label, fit in _labelled(fits, lambda x: "MSD").items():
        axes.plot(fit.lag_ps, fit.msd_A2, label=f"{label}: D = {fit.diffusion_A2_per_ps:.3g} Å²/ps")
        window = np.linspace(fit.fit_from_ps, fit.fit_to_ps, 50)
        axes.plot(window, fit.slope_A2_per_ps * window + fit.intercept_A2, color="k", ls="--", lw=1.0)
    axes.set_xlabel("lag time (ps)")
    axes.set_ylabel("MSD (Å²)")
    axes.legend(fontsize="small")


def rdf_figure(rdfs: RdfInput) -> Figure:
    """g(r) of one RDF or of several (mapping label → RDF), with coordination numbers."""
    figure = Figure(figsize=(6.0, 4.2))
    axes = figure.add_subplot()
    _draw_rdf(axes, rdfs)
    axes.set_title("Radial distribution function")
    return figure


def msd_figure(fits: MsdInput) -> Figure:
    """Mean squared displacement(s) with the linear fit used for D (dashed)."""
    figure = Figure(figsize=(6.0, 4.2))
    axes = figure.add_subplot()
    _draw_msd(axes, fits)
    axes.set_title("Mean squared displacement")
    return figure


def plot_rdf(rdfs: RdfInput, path: str | Path) -> Path:
    """Write :func:`rdf_figure` as PNG to ``path``."""
    return write_figure(rdf_figure(rdfs), path)


def plot_msd(fits: MsdInput, path: str | Path) -> Path:
    """Write :func:`msd_figure` as PNG to ``path``."""
    return write_figure(msd_figure(fits), path)


def summary_figure(
    results: Sequence["MDResult"] = (),
    *,
    rdfs: RdfInput | None = None,
    diffusion: MsdInput | None = None,
    errors: ModelErrors | None = None,
    title: str = "",
) -> Figure:
    """Four panels: density of every replica against time, RDF, MSD, and the numbers
    (stability over replicas, D, model errors). Missing inputs leave their panel empty."""
    figure = Figure(figsize=(11.0, 8.0))
    (ax_density, ax_rdf), (ax_msd, ax_text) = figure.subplots(2, 2)
    report: StabilityReport | None = stability(results) if len(results) else None

    for index, result in enumerate(results):
        periodic = [frame for frame in result.frames if frame.pbc.all()]
        if not periodic:
            continue
        times = [frame.info.get("md_time_fs", k) * 1e-3 for k, frame in enumerate(periodic)]
        marker = "" if result.stable else " (unstable)"
        ax_density.plot(times, density(periodic), label=f"replica {index}{marker}")
    ax_density.set_xlabel("time (ps)")
    ax_density.set_ylabel("density (g/cm³)")
    ax_density.set_title("Density")
    if ax_density.lines:
        ax_density.legend(fontsize="small")
    else:
        _empty(ax_density, "no periodic frames")

    if rdfs is not None:
        _draw_rdf(ax_rdf, rdfs)
    else:
        _empty(ax_rdf, "no RDF")
    ax_rdf.set_title("Radial distribution function")
    if diffusion is not None:
        _draw_msd(ax_msd, diffusion)
    else:
        _empty(ax_msd, "no MSD")
    ax_msd.set_title("Mean squared displacement")

    ax_text.axis("off")
    ax_text.text(0.0, 1.0, "\n".join(_summary_lines(report, diffusion, errors)), va="top", family="monospace")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_summary(path: str | Path, results: Sequence["MDResult"] = (), **kwargs) -> Path:
    """Write :func:`summary_figure` as PNG to ``path``."""
    return write_figure(summary_figure(results, **kwargs), path)


def _empty(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.5")
    axes.set_xticks([])
    axes.set_yticks([])


def _summary_lines(report: StabilityReport | None, diffusion: MsdInput | None, errors: ModelErrors | None) -> list[str]:
    lines = []
    if report is not None:
        verdict = "STABLE" if report.stable else "UNSTABLE"
        lines.append(f"MD: {verdict}, {report.n_stable}/{report.n_replicas} replicas stable")
        lines.extend(f"  - {reason}" for reason in report.reasons[:4])
    if diffusion is not None:
        for label, fit in _labelled(diffusion, lambda x: "D").items():
            lines.append(
                f"{label}: {fit.diffusion_A2_per_ps:.3g} Å²/ps = {fit.diffusion_cm2_per_s:.3g} cm²/s"
            )
    if errors is not None:
        lines.append(f"test set: {errors.n_structures} structures, {errors.n_atoms} atoms")
        lines.append(f"  force RMSE   {1e3 * errors.force_rmse:8.1f} meV/Å")
        lines.append(f"  energy RMSE  {1e3 * errors.energy_rmse_per_atom:8.2f} meV/atom")
        if errors.virial_rmse_per_atom is not None:
            lines.append(f"  virial RMSE  {1e3 * errors.virial_rmse_per_atom:8.2f} meV/atom")
    return lines or ["nothing to report"]
