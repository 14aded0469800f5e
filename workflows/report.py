"""Plots of a campaign, from its records alone (the figures of :func:`campaign_figures`).

Against the training-set size — structures in the dataset when the committee was trained —
like Cezar et al. Fig. 4 b–f: held-out force RMSE, stable members, density, self-diffusion and
coordination, per system, with error bars across members. Per iteration: the CAGO hit, the
share of CAGO walks that went up, down or did not move, the calibration a and b, and
committee-MD stability. Per CAGO structure: its true error against δ, by walk direction and
flags. Per calibrated committee: its reliability diagram. A plot without a single point is not
written; ``index.html`` shows them all beside the status tables (:mod:`.report_page`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cagoflow.io import write_figure
from cagoflow.workflows.status import DIRECTIONS, campaign_figures, campaign_settings, member_spread

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


@dataclass(frozen=True)
class Image:
    """A written plot: its file, its title, the section of the report page it belongs to."""

    path: Path
    title: str
    section: str


#: The sections of the report page, in order.
SECTIONS = ("learning curves", "per iteration", "CAGO structures", "calibration per iteration")


def write_report(workdir: Path, output: Path) -> list[Path]:
    """Write the campaign's plots (PNG) and the page that shows them with the status tables
    (``index.html``) into ``output``; return their paths, the page last."""
    from cagoflow.workflows.report_page import write_report_page

    figures = campaign_figures(workdir)
    images = [
        Image(_draw(plot, output / f"{plot.name}.png"), plot.title, "learning curves" if plot.xlabel == TRAINING_SET else "per iteration")
        for plot in report_plots(figures)
    ]  # fmt: skip
    if any(structures for it in figures["iterations"] for structures in _cago_structures(it)):
        images.append(Image(_draw_cago_structures(figures, output / "cago-structures.png"), CAGO_STRUCTURES, "CAGO structures"))
    for iteration, calibration in calibrations(workdir):
        path = _draw_reliability(calibration, output / f"calibration-iter-{iteration:03d}.png")
        images.append(Image(path, f"iteration {iteration}: force calibration, reliability", "calibration per iteration"))
    page = write_report_page(figures, images, output / "index.html", campaign_settings(workdir)["name"])
    return [image.path for image in images] + [page]


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


# --- per structure and per calibration ------------------------------------------------------------

#: Title of the per-structure CAGO plot.
CAGO_STRUCTURES = "CAGO structures: true force error against δ"

#: Colours of the walk directions.
DIRECTION_COLOURS = {"up": "tab:blue", "down": "tab:red", "unmoved": "tab:gray"}


def _cago_structures(iteration: Mapping[str, Any]) -> list[list[Mapping[str, Any]]]:
    return [system.get("cago_structures") or [] for system in iteration["systems"].values()]


def _draw_cago_structures(figures: Mapping[str, Any], path: Path) -> Path:
    """Every labelled, pushed CAGO structure: true error against δ (meV/Å), coloured by where
    its walk went; open marks did not reach δ, crosses were flagged; the line true error = δ
    and the band 0.8–1.25 × δ."""
    points = [s for it in figures["iterations"] for system in _cago_structures(it) for s in system]
    figure = Figure(figsize=(6, 5))
    axes = figure.add_subplot()
    axes.set_title(CAGO_STRUCTURES)
    top = 1000 * max(max(p["delta"], p["true_error"]) for p in points) * 1.1
    axes.plot([0, top], [0, top], color="black", linewidth=1, label="true error = δ")
    axes.fill_between([0, top], [0, 0.8 * top], [0, 1.25 * top], color="tab:green", alpha=0.12, label="0.8–1.25 × δ")
    for direction, colour in DIRECTION_COLOURS.items():
        for reached, flagged in ((True, False), (False, False), (True, True), (False, True)):
            chosen = [p for p in points if p["direction"] == direction and (p["reason"] == "reached") == reached
                      and bool(p["flags"]) == flagged]  # fmt: skip
            if not chosen:
                continue
            label = f"{direction}{'' if reached else ', not reached'}{', flagged' if flagged else ''} ({len(chosen)})"
            x, y = [1000 * p["delta"] for p in chosen], [1000 * p["true_error"] for p in chosen]
            if flagged:
                axes.scatter(x, y, marker="x", color=colour, label=label)
            else:
                axes.scatter(x, y, marker="o", facecolors=colour if reached else "none", edgecolors=colour, label=label)
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_xlabel("δ, the calibrated force error asked (meV/Å)")
    axes.set_ylabel("true force error against the reference (meV/Å)")
    axes.legend(fontsize=7)
    return write_figure(figure, path)


def calibrations(workdir: Path) -> list[tuple[int, Any]]:
    """(iteration, :class:`~cagoflow.calibration.CommitteeCalibration`) of every calibrated committee."""
    from cagoflow.calibration import CommitteeCalibration
    from cagoflow.records import all_records

    records = sorted((r for r in all_records(workdir) if r.stage == "calibrate" and r.status == "done" and "calibration" in r.outputs),
                     key=lambda r: r.iteration)  # fmt: skip
    return [(r.iteration, CommitteeCalibration.load(Path(workdir) / r.outputs["calibration"])) for r in records]


def _draw_reliability(calibration: Any, path: Path) -> Path:
    """The force calibration's reliability diagram (out of sample with its band, in sample)."""
    from cagoflow.calibration_plots import reliability_diagram

    figure = Figure(figsize=(6, 3.5))
    reliability_diagram(figure.add_subplot(), calibration.forces.diagnostics, "eV/Å")
    return write_figure(figure, path)
