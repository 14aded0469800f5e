"""Plots of a campaign, from its records alone (the figures of :func:`campaign_figures`).

Against the training-set size — structures in the dataset when the committee was trained —
like Cezar et al. Fig. 4 b–f: held-out force RMSE, stable members, density, self-diffusion and
coordination, per system, with error bars across members. Per iteration: the CAGO hit, the
share of CAGO walks that went up, down or did not move, the calibration a and b, and committee-MD stability. A plot without a single point is not written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cagoflow.io import write_figure
from cagoflow.workflows.status import DIRECTIONS, campaign_figures, member_spread

#: x-axis label of the plots against the training-set size.
TRAINING_SET = "structures in the training set when the committee was trained"


@dataclass(frozen=True)
class Series:
    """One curve: x, y and (optionally) symmetric error bars, in the units of its plot."""

    label: str
    x: list[float]
    y: list[float]
    error: list[float] | None = None
    linestyle: str = "-"


@dataclass(frozen=True)
class Plot:
    """A plot's file name, title, axis labels (with units) and curves."""

    name: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    reference: float | None = None  # a horizontal line (the hit's true error = δ)
    fraction: bool = False  # y from 0 to 1


def write_report(workdir: Path, output: Path) -> list[Path]:
    """Write the campaign's plots (PNG) into ``output``; return their paths."""
    return [_draw(plot, output / f"{plot.name}.png") for plot in report_plots(campaign_figures(workdir))]


def report_plots(figures: Mapping[str, Any]) -> list[Plot]:
    """The plots of a campaign with at least one point, from :func:`campaign_figures`."""
    plots = [
        Plot("learning-curve", "force error on the held-out benchmark set", TRAINING_SET, "force RMSE (meV/Å)",
             _force_series(figures)),
        Plot("stable-members", "members whose MD stayed stable", TRAINING_SET, "stable members (fraction)",
             _against_training_set(figures, _stable_fraction), fraction=True),
        Plot("density", "density (mean ± std over the stable members)", TRAINING_SET, "density (g/cm³)",
             _against_training_set(figures, _property("density"))),
        Plot("diffusion", "self-diffusion (mean ± std over the stable members)", TRAINING_SET, "D (Å²/ps)",
             _against_training_set(figures, _property("diffusion"))),
        Plot("coordination", "coordination number (mean ± std over the stable members)", TRAINING_SET,
             "coordination number (atoms)", _against_training_set(figures, _property("coordination"))),
        Plot("cago-hit", "CAGO hit: true error of the adversarial structures / δ", "iteration", "true error / δ (ratio)",
             _per_iteration(figures, "hit", lambda it: it["hit_ratio_mean"]), reference=1.0),
        Plot("cago-walks", "CAGO walks: where σ_cal went from the start", "iteration", "CAGO structures (fraction)",
             [series for d in DIRECTIONS for series in _per_iteration(figures, d, _walk_share(d))], fraction=True),
        Plot("calibration", "force calibration σ_cal = a·σ̂^b", "iteration", "a ((eV/Å)^(1−b)) and b (dimensionless)",
             _per_iteration(figures, "a", _calibration("a")) + _per_iteration(figures, "b", _calibration("b"))),
        Plot("md-stability", "committee-MD stability", "iteration", "stable replicas (fraction)",
             _per_iteration(figures, "replicas", _stable_replicas), fraction=True),
    ]  # fmt: skip
    return [plot for plot in plots if any(s.x for s in plot.series)]


def _draw(plot: Plot, path: Path) -> Path:
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.set_title(plot.title)
    axes.set_xlabel(plot.xlabel)
    axes.set_ylabel(plot.ylabel)
    for series in plot.series:
        axes.errorbar(series.x, series.y, yerr=series.error, marker="o", capsize=3, linestyle=series.linestyle,
                      label=series.label)  # fmt: skip
    if plot.reference is not None:
        axes.axhline(plot.reference, color="black", linestyle="--", linewidth=1, label="true error = δ")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations and structures are counted
    if plot.fraction:
        axes.set_ylim(0, 1.05)
    if len(plot.series) > 1 or plot.reference is not None:
        axes.legend()
    return write_figure(figure, path)


#: (y, error) of one system in one iteration from its figures, or None where there is none.
Point = Callable[[Mapping[str, Any]], tuple[float, float | None] | None]


def _against_training_set(figures: Mapping[str, Any], point: Point, label: str = "", linestyle: str = "-") -> list[Series]:
    """One series per system: ``point(system figures)`` against the training-set size."""
    series = []
    for system in figures["systems"]:
        rows = [
            (it["training_set"], value)
            for it in figures["iterations"]
            if it["training_set"] is not None and system in it["systems"]
            and (value := point(it["systems"][system])) is not None
        ]  # fmt: skip
        errors = [value[1] for _, value in rows]
        error = [e or 0.0 for e in errors] if any(e is not None for e in errors) else None
        name = ", ".join(filter(None, [system if len(figures["systems"]) > 1 else "", label])) or system
        series.append(Series(name, [x for x, _ in rows], [value[0] for _, value in rows], error, linestyle))
    return series


def _evaluation(system: Mapping[str, Any]) -> Mapping[str, Any]:
    return system.get("evaluation") or {}


def _committee_force(system: Mapping[str, Any]) -> tuple[float, None] | None:
    """Held-out force RMSE of the committee mean, meV/Å."""
    rmse = _evaluation(system).get("force_rmse")
    return None if rmse is None else (1000 * rmse, None)


def _member_force(system: Mapping[str, Any]) -> tuple[float, float] | None:
    """Held-out force RMSE of the members, mean ± std, meV/Å."""
    members = member_spread(_evaluation(system).get("member_force_rmse"))
    return None if members is None else (1000 * members[0], 1000 * members[1])


def _force_series(figures: Mapping[str, Any]) -> list[Series]:
    """Held-out committee-mean and member force RMSE; the test-split RMSE where there is no held-out one."""
    held_out = _against_training_set(figures, _committee_force, "committee mean") + _against_training_set(
        figures, _member_force, "members (mean ± std)", "--"
    )
    if any(s.x for s in held_out):
        return held_out
    rows = [(it["training_set"], (it["calibration"] or {}).get("test_force_rmse")) for it in figures["iterations"]]
    rows = [(x, 1000 * y) for x, y in rows if x is not None and y is not None]
    return [Series("committee mean, 10 % test split", [x for x, _ in rows], [y for _, y in rows])]


def _stable_fraction(system: Mapping[str, Any]) -> tuple[float, None] | None:
    evaluation = _evaluation(system)
    return None if not evaluation.get("members") else (evaluation["stable_members"] / evaluation["members"], None)


def _property(key: str) -> Point:
    """(mean, std) of an MD property over the stable members (None when no member was stable)."""

    def point(system: Mapping[str, Any]) -> tuple[float, float | None] | None:
        mean = _evaluation(system).get(f"{key}_mean")
        return None if mean is None else (mean, _evaluation(system).get(f"{key}_std"))

    return point


def _calibration(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    """The calibration parameter ``key`` ("a" or "b") of an iteration."""
    return lambda iteration: (iteration["calibration"] or {}).get(key)


def _walk_share(direction: str) -> Callable[[Mapping[str, Any]], float | None]:
    """Fraction of an iteration's CAGO structures (all systems) whose walk went ``direction``."""

    def share(iteration: Mapping[str, Any]) -> float | None:
        walks = [s["cago"]["directions"] for s in iteration["systems"].values() if (s.get("cago") or {}).get("directions")]
        total = sum(sum(w.values()) for w in walks)
        return sum(w[direction] for w in walks) / total if total else None

    return share


def _stable_replicas(iteration: Mapping[str, Any]) -> float | None:
    """Fraction of this iteration's committee-MD replicas (all systems) that stayed stable."""
    md = [s["md"] for s in iteration["systems"].values() if s.get("md")]
    replicas = sum(m["replicas"] for m in md)
    return sum(m["stable"] for m in md) / replicas if replicas else None


def _per_iteration(figures: Mapping[str, Any], label: str, value: Callable[[Mapping[str, Any]], float | None]) -> list[Series]:
    """``value(iteration figures)`` against the iteration number (the initial labelling left out)."""
    rows = [(it["iteration"], value(it)) for it in figures["iterations"] if it["iteration"] >= 0]
    rows = [(x, y) for x, y in rows if y is not None]
    return [Series(label, [x for x, _ in rows], [y for _, y in rows])]
