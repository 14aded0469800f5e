"""Figures of CAGO runs: how the calibrated uncertainty approached the target δ."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from cagoflow.cago import CagoResult
from cagoflow.io import write_figure


def plot_cago_progress(results: Sequence[CagoResult], path: str | Path) -> Path:
    """RMS over atoms of σ_cal,F_i (meV/Å) against the L-BFGS step, one line per structure."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for index, result in enumerate(results):
        axes.plot([1000 * s for s in result.sigma_history], marker=".", label=f"structure {index} ({result.direction}, {result.reason})")
    for delta in sorted({result.delta for result in results if result.delta is not None}):
        axes.axhline(1000 * delta, color="black", linestyle="--", linewidth=1)
        axes.annotate(f"δ = {1000 * delta:.0f} meV/Å", (0, 1000 * delta), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("L-BFGS step")
    axes.set_ylabel("RMS calibrated force uncertainty σ_cal (meV/Å)")
    axes.set_title("CAGO: calibrated uncertainty towards the target δ")
    if len(results) <= 10:
        axes.legend(fontsize="small")
    return write_figure(figure, Path(path))
