"""The ``cagoflow`` command line: calibrate, cago, validate (run, status, report to come).

Every user error (bad file, bad field, impossible setting) ends as one paragraph on stderr and
exit code 2, never as a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cagoflow.errors import CagoflowError, InputError

app = typer.Typer(
    name="cagoflow",
    help="Active learning of machine-learning interatomic potentials with CAGO, as a Parsl workflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

#: Exit code of user errors (bad input, failed engine); 1 is left to bugs.
EXIT_INPUT_ERROR = 2

F = TypeVar("F", bound=Callable)


def reports_errors(command: F) -> F:
    """Turn :class:`CagoflowError` into a one-paragraph message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CagoflowError as exc:
            errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INPUT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _members(text: Optional[str], option: str) -> Optional[tuple[int, ...]]:
    """Parse "0,1,2" into member indices."""
    if text is None:
        return None
    try:
        members = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"expected comma-separated member indices such as 0,1,2, got {text!r}", field=option) from None
    if len(members) < 2 or len(set(members)) != len(members):
        raise InputError(f"expected at least two distinct members, got {text!r}", field=option)
    return members


def _check_members(members: tuple[int, ...], n_members: int, option: str) -> None:
    if any(not 0 <= m < n_members for m in members):
        raise InputError(f"the committee has members 0 to {n_members - 1}, got {members}", field=option)


def _output_folder(output: Path, option: str = "--output") -> Path:
    """Create the output folder up front: a file in its place or no permission is a user error."""
    if output.exists() and not output.is_dir():
        raise InputError("expected an output folder, found a file", file=output, field=option)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", file=output, field=option) from None
    return output


def _check_species(spec, structures, file: Path) -> None:
    """Refuse structures with elements the committee has no parameters for (where it lists its species)."""
    known = getattr(spec, "species", None)
    if known is None:
        return
    for index, atoms in enumerate(structures):
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(known))
        if unknown:
            raise InputError(
                f"structure {index} holds {', '.join(unknown)}, but the committee knows only {', '.join(known)}",
                file=file,
            )


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show log messages.")) -> None:
    """Calibrated adversarial geometry optimisation for MLIP active learning."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if verbose else logging.WARNING)  # Parsl logs DEBUG into the same tree
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)


@app.command()
@reports_errors
def calibrate(
    committee: Path = typer.Option(..., "--committee", "-c", help="Committee file (YAML)."),
    structures: Path = typer.Option(..., "--structures", "-s", help="Labelled structures (extxyz, ...): the test set."),
    output: Path = typer.Option(Path("calibration"), "--output", "-o", help="Folder for the calibration and plots."),
    subset: Optional[str] = typer.Option(None, help="Also calibrate this member subset, e.g. 0,1,2 (the members CAGO uses)."),
) -> None:
    """Fit σ_cal = a·σ̂^b for forces, energies and virials; write JSON, plots and the validity range."""
    from cagoflow.calibration import calibrate_committee, per_atom_force_error
    from cagoflow.calibration_plots import plot_calibration
    from cagoflow.committee import force_sigma_hat
    from cagoflow.io import read_structures
    from cagoflow.models import load_committee_spec

    spec = load_committee_spec(committee)
    model = spec.build()
    references = read_structures(structures, require_labels=True)
    _check_species(spec, references, structures)
    members = _members(subset, "--subset")
    if members is not None:
        _check_members(members, model.n_members, "--subset")
    _output_folder(output)
    with console.status(f"predicting {len(references)} structures with {model.n_members} members"):
        prediction = model.predict(references)
    reference_forces = np.concatenate([atoms.get_forces() for atoms in references])
    for chosen in [None] + ([members] if members is not None else []):
        name = "calibration" if chosen is None else "calibration-subset"
        calibration = calibrate_committee(prediction, references, members=chosen)
        path = calibration.save(output / f"{name}.json")
        forces = prediction.forces if chosen is None else prediction.members(chosen).forces
        plots = plot_calibration(
            force_sigma_hat(forces), per_atom_force_error(forces, reference_forces), calibration.forces.law, output / f"{name}-forces"
        )
        _print_calibration(calibration, path, plots)


def _print_calibration(calibration, path: Path, plots) -> None:
    table = Table(title=f"calibration of members {', '.join(map(str, calibration.members))} → {escape(str(path))}")
    for column in ("quantity", "a", "b", "RMS z before", "RMS z after", "miscal. area", "valid up to"):
        table.add_column(column)
    for quantity in (calibration.forces, calibration.energies, calibration.virials):
        if quantity is None:
            continue
        d = quantity.diagnostics
        limit = "—" if d.validity_limit is None else f"{d.validity_limit:.3g} {quantity.unit}"
        table.add_row(
            quantity.quantity,
            f"{quantity.law.a:.4g}",
            f"{quantity.law.b:.4g}",
            f"{d.std_r_before:.3f}",
            f"{d.std_r_after:.3f}",
            f"{d.miscalibration_area_before:.3f} → {d.miscalibration_area_after:.3f}",
            limit,
        )
    console.print(table)
    if plots:
        console.print("plots: " + escape(", ".join(str(p) for p in plots)))


@app.command()
@reports_errors
def cago(
    committee: Optional[Path] = typer.Option(None, "--committee", "-c", help="Committee file (YAML)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Calibration JSON of exactly the members used."),
    structures: Optional[Path] = typer.Option(None, "--structures", "-s", help="Starting structures."),
    output: Path = typer.Option(Path("cago"), "--output", "-o", help="Output folder (cago.extxyz, plots)."),
    delta: float = typer.Option(0.1, help="Target calibrated force error δ, eV/Å."),
    members: Optional[str] = typer.Option(None, help="Run on this member subset, e.g. 0,1,2."),
    max_steps: int = typer.Option(200, help="L-BFGS iterations at most."),
    tolerance: float = typer.Option(0.05, help="Relative tolerance on δ."),
    l_bias: float = typer.Option(0.0, help="Weight of the committee-mean force term |F̄_i|²."),
    min_distance: Optional[float] = typer.Option(None, help="Close-contact guard, Å."),
    fixed_cell: bool = typer.Option(False, "--fixed-cell", help="Keep the cell fixed."),
    gradient: str = typer.Option("auto", help="auto | finite_difference | exact."),
    refuse_above_validity: bool = typer.Option(False, help="Refuse a δ above the calibration's validity limit (default: clamp)."),
    demo: bool = typer.Option(False, "--demo", help="Run the self-contained demonstration on embedded defaults."),
) -> None:
    """Push structures until the calibrated force uncertainty reaches δ (with progress)."""
    if demo:
        _run_demo(_output_folder(output))
        return
    from cagoflow.cago import CagoSettings, run_cago
    from cagoflow.cago_plots import plot_cago_progress
    from cagoflow.calibration import CommitteeCalibration
    from cagoflow.io import check_structures, read_structures, write_structures
    from cagoflow.models import load_committee_spec

    for value, option in ((committee, "--committee"), (calibration, "--calibration"), (structures, "--structures")):
        if value is None:
            raise InputError(f"missing option {option} (or use --demo)", field=option)
    if gradient not in ("auto", "finite_difference", "exact"):
        raise InputError(f"expected auto, finite_difference or exact, got {gradient!r}", field="--gradient")
    settings = CagoSettings(
        delta=delta,
        tolerance=tolerance,
        l_bias=l_bias,
        max_steps=max_steps,
        optimize_cell=not fixed_cell,
        min_distance=min_distance,
        gradient=gradient,  # type: ignore[arg-type]
        above_validity="refuse" if refuse_above_validity else "clamp",
    )
    spec = load_committee_spec(committee)
    model = spec.build()
    law_file = CommitteeCalibration.load(calibration)
    chosen = _members(members, "--members") or tuple(range(model.n_members))
    _check_members(chosen, model.n_members, "--members")
    if tuple(law_file.members) != chosen:
        raise InputError(
            f"the calibration was fitted for members {list(law_file.members)} but CAGO would use {list(chosen)}; "
            "a subset's spread needs its own calibration (cagoflow calibrate --subset ...)",
            file=calibration,
            field="members",
        )
    starts = read_structures(structures)
    check_structures(starts, file=structures)
    _check_species(spec, starts, structures)
    _output_folder(output)
    engine = model if len(chosen) == model.n_members else model.subset(chosen)
    results = []
    with _progress() as progress:
        for index, atoms in enumerate(starts):
            task = progress.add_task(f"structure {index}", total=settings.max_steps, sigma="")
            report = functools.partial(_advance, progress, task)
            results.append(
                run_cago(atoms, engine, law_file.forces.law, settings, validity_limit=law_file.force_validity_limit, progress=report)
            )
            progress.update(task, completed=settings.max_steps, sigma=f"{results[-1].reason}")
    for warning in sorted({w for result in results for w in result.warnings}):
        errors.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    written = write_structures(output / "cago.extxyz", [result.atoms for result in results])
    plot = plot_cago_progress(results, output / "cago-progress.png")
    _print_results(results, None)
    console.print(escape(f"structures: {written}\nplot: {plot}"))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[sigma]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _advance(progress: Progress, task, step: int, sigma: float) -> None:
    progress.update(task, completed=step, sigma=f"σ_cal {1000 * sigma:.1f} meV/Å")


def _print_results(results, hits) -> None:
    table = Table(title="CAGO")
    for column in ("structure", "reason", "steps", "σ_cal RMS (meV/Å)", "δ (meV/Å)"):
        table.add_column(column)
    if hits is not None:
        table.add_column("true error (meV/Å)")
        table.add_column("true / δ")
    for index, result in enumerate(results):
        row = [str(index), result.reason, str(result.n_steps), f"{1000 * result.sigma_cal_rms:.1f}", f"{1000 * result.delta:.0f}"]
        if hits is not None:
            row += [f"{1000 * hits[index].true_error:.1f}", f"{hits[index].ratio:.2f}"]
        table.add_row(*row)
    console.print(table)


def _run_demo(output: Path) -> None:
    from cagoflow.demo import DemoSettings, run_demo

    settings = DemoSettings()
    console.print(
        f"[bold]cagoflow demo[/]: {settings.n_molecules} H2O, analytic committee of {settings.members} "
        f"(CAGO on members {list(settings.subset)}), δ = {1000 * settings.delta:.0f} meV/Å"
    )
    with _progress() as progress:
        tasks = [
            progress.add_task(f"structure {k}", total=settings.max_steps, sigma="")
            for k in range(settings.n_cago)
        ]
        result = run_demo(output, settings, progress=lambda i, step, sigma: _advance(progress, tasks[i], step, sigma))
    _print_calibration(result.subset_calibration, output / "calibration-subset.json", [])
    _print_results(result.results, result.hits)
    console.print("files: " + escape(", ".join(str(p) for p in result.files)))


@app.command()
@reports_errors
def run(
    campaign: Path = typer.Argument(..., help="Campaign YAML."),
    site: Optional[Path] = typer.Option(None, "--site", help="Site-config YAML (default: local threads)."),
    workdir: Path = typer.Option(Path("runs/campaign"), "--workdir", "-w", help="Campaign work directory (continued if it exists)."),
) -> None:
    """Run a campaign, or continue it where it stopped: finished tasks are never recomputed."""
    from cagoflow.config import default_site, load_campaign, load_site
    from cagoflow.workflows.campaign import run_campaign

    config = load_campaign(campaign)
    site_config = default_site() if site is None else load_site(site)
    _output_folder(workdir, "--workdir")
    console.print(
        f"[bold]{escape(config.name)}[/]: {config.iterations} iteration(s), {len(config.systems)} system(s), "
        f"{config.committee.size}-member {config.committee.backend} committee, site {escape(site_config.name)}, "
        f"work directory {escape(str(workdir))}"
    )
    with _stage_progress() as (progress, hook):
        run_campaign(config, site_config, workdir, hook)
    _print_status(workdir)


@contextlib.contextmanager
def _stage_progress():
    """A progress bar per stage, advanced as tasks finish (from Parsl's callback threads)."""
    progress = Progress(
        TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(), console=console,
    )  # fmt: skip
    bars: dict[str, int] = {}
    lock = threading.Lock()

    def hook(stage: str, event: str) -> None:
        with lock:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=0, failed="")
            task = bars[stage]
            if event == "submitted":
                progress.update(task, total=progress.tasks[task].total + 1)
            else:
                progress.advance(task)
                if event == "failed":
                    failed = progress.tasks[task].fields["failed"]
                    count = int(failed.split()[0]) + 1 if failed else 1
                    progress.update(task, failed=f"{count} failed")
                if not console.is_terminal:  # a batch job's log: one line per finished task
                    state = progress.tasks[task]
                    console.print(f"{stage}: {state.completed:.0f}/{state.total:.0f} {state.fields['failed']}".rstrip())

    with progress:
        yield progress, hook


@app.command()
@reports_errors
def status(workdir: Path = typer.Argument(..., help="Campaign work directory.")) -> None:
    """The state of a campaign, per iteration and stage, from its work directory alone."""
    _print_status(workdir)


#: Failed tasks listed under the status table (the first ones, in campaign order).
FAILURES_SHOWN = 20


def _print_status(workdir: Path) -> None:
    from cagoflow.workflows.status import STAGE_ORDER, campaign_iterations, campaign_status, counts, failed_tasks

    iterations = campaign_status(workdir)
    stages = [name for name in STAGE_ORDER if any(name in it.stages for it in iterations)]
    table = Table(title=f"campaign in {escape(str(workdir))} ({campaign_iterations(workdir)} iterations asked)")
    table.add_column("iteration")
    for name in stages:
        table.add_column(name, justify="right")
    for column in ("MD stable", "dataset", "added", "test force RMSE", "CAGO reached δ", "CAGO hit (true/δ)"):
        table.add_column(column, justify="right")
    for it in iterations:
        cells = [counts(it.stages[name]) if name in it.stages else "" for name in stages]
        rmse = "—" if it.test_force_rmse is None else f"{1000 * it.test_force_rmse:.0f} meV/Å"
        hit = "—" if it.hit_ratio is None else f"{it.hit_ratio:.2f}"
        added = "—" if it.added is None else str(it.added)
        table.add_row(
            "initial" if it.iteration < 0 else str(it.iteration), *cells, it.md_stable or "—",
            str(it.dataset_size or "—"), added, rmse, it.cago_reached or "—", hit,
        )  # fmt: skip
    wide = Console(width=max(console.width, 40 + 14 * len(stages)))
    wide.print(table)
    wide.print("stage cells: tasks done (+failed, +running); skipped tasks are not counted")
    failures = failed_tasks(iterations)
    if failures:
        wide.print(f"[bold]failed tasks[/] ({len(failures)}; a failed training is retried by the next `cagoflow run`):")
        for iteration, record in failures[:FAILURES_SHOWN]:
            message = " ".join(str(record.summary.get("message") or record.summary.get("reason") or "").split())
            where = "initial" if iteration < 0 else f"iteration {iteration}"
            wide.print(f"  {where} {record.stage} {escape(record.task)}: {escape(message[:200]) or 'no message'}")
        if len(failures) > FAILURES_SHOWN:
            wide.print(f"  ... and {len(failures) - FAILURES_SHOWN} more (their record.json files say why)")


@app.command()
@reports_errors
def report(
    workdir: Path = typer.Argument(..., help="Campaign work directory."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the plots (default: WORKDIR/report)."),
) -> None:
    """Learning-curve plots: dataset size vs test force error, calibration, stability, CAGO hit."""
    from cagoflow.workflows.report import write_report
    from cagoflow.workflows.status import require_campaign

    require_campaign(workdir)
    folder = _output_folder(output or workdir / "report")
    for path in write_report(workdir, folder):
        console.print(escape(str(path)))


@app.command()
@reports_errors
def validate(
    campaign: Optional[Path] = typer.Argument(None, help="Campaign YAML."),
    site: Optional[Path] = typer.Option(None, "--site", help="Site-config YAML."),
) -> None:
    """Check a campaign and/or a site-config without running or submitting anything."""
    from cagoflow.config import load_campaign, load_site

    if campaign is None and site is None:
        raise InputError("nothing to validate: give a campaign YAML, --site SITE.yaml, or both")
    if campaign is not None:
        config = load_campaign(campaign)
        console.print(
            f"campaign [bold]{config.name}[/] is valid: {len(config.systems)} system(s), {config.iterations} iteration(s), "
            f"{config.committee.size}-member {config.committee.backend} committee, δ = {1000 * config.cago.delta:.0f} meV/Å"
        )
    if site is not None:
        site_config = load_site(site)
        console.print(f"site [bold]{site_config.name}[/] is valid: executors {', '.join(site_config.executors)}")
        for stage, label in site_config.stage_executors.items():
            executor = site_config.executors[label]
            partition = f", partition {executor.provider.partition}" if executor.provider and executor.provider.partition else ""
            python = site_config.python_executor_for(stage)
            extra = f" (its Python parts on '{python}')" if python != label else ""
            console.print(f"  {stage:<10} → {label} ({executor.kind}{partition}){extra}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
