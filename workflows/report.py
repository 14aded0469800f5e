"""Learning-curve plots of a campaign, from its records alone."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from cagoflow.io import write_figure
from cagoflow.workflows.status import IterationStatus, campaign_status


def write_report(workdir: Path, output: Path) -> list[Path]:
    """Write the campaign's plots into ``output``; return their paths."""
    iterations = [it for it in campaign_status(workdir) if it.iteration >= 0]
    return [
        _learning_curve(iterations, output / "learning-curve.png"),
        _hit(iterations, output / "cago-hit.png"),
        _calibration(iterations, output / "calibration.png"),
        _stability(iterations, output / "md-stability.png"),
    ]


def _axes(title: str, xlabel: str, ylabel: str):
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return figure, axes


def _learning_curve(iterations: list[IterationStatus], path: Path) -> Path:
    """Test force RMSE (meV/Å) of each iteration's committee against its training-set size."""
    figure, axes = _axes("learning curve", "structures in the dataset when training", "test force RMSE (meV/Å)")
    points = []
    for it in iterations:
        split = it.stages.get("split")
        size = split.records[0].summary.get("dataset") if split and split.records else None
        if size is not None and it.test_force_rmse is not None:
            points.append((size, 1000 * it.test_force_rmse, it.iteration))
    if points:
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        for size, rmse, number in points:
            axes.annotate(str(number), (size, rmse), textcoords="offset points", xytext=(4, 4))
    return write_figure(figure, path)


def _hit(iterations: list[IterationStatus], path: Path) -> Path:
    """Mean true error / δ of each iteration's CAGO structures (1 is a perfect hit)."""
    figure, axes = _axes("CAGO hit: true error of the adversarial structures / δ", "iteration", "true error / δ")
    points = [(it.iteration, it.hit_ratio) for it in iterations if it.hit_ratio is not None]
    if points:
        axes.plot(*zip(*points), marker="o")
    axes.axhline(1.0, color="black", linestyle="--", linewidth=1)
    return write_figure(figure, path)


def _calibration(iterations: list[IterationStatus], path: Path) -> Path:
    """Calibration parameters a and b of σ_cal = a·σ̂^b per iteration."""
    figure, axes = _axes("force calibration σ_cal = a·σ̂^b", "iteration", "parameter")
    rows = []
    for it in iterations:
        calibrate = it.stages.get("calibrate")
        if calibrate and calibrate.records:
            summary = calibrate.records[0].summary
            rows.append((it.iteration, summary["a"], summary["b"]))
    if rows:
        axes.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label="a")
        axes.plot([r[0] for r in rows], [r[2] for r in rows], marker="s", label="b")
        axes.legend()
    return write_figure(figure, path)


def _stability(iterations: list[IterationStatus], path: Path) -> Path:
    """Fraction of stable MD replicas per iteration."""
    figure, axes = _axes("committee MD stability", "iteration", "stable replicas (fraction)")
    rows = []
    for it in iterations:
        md = it.stages.get("md")
        if md and md.records:
            rows.append((it.iteration, sum(bool(r.summary.get("stable")) for r in md.records) / len(md.records)))
    if rows:
        axes.bar([r[0] for r in rows], [r[1] for r in rows])
    axes.set_ylim(0, 1.05)
    return write_figure(figure, path)
