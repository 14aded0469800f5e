"""The ``cagoflow`` command line: calibrate, cago, run, status, report, export, validate.

Every user error (bad file, bad field, impossible setting) ends as one paragraph on stderr and
exit code 2, never as a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, TypeVar

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


class OnceFilter(logging.Filter):
    """Lets each log message through the first time only and counts its repeats (the console
    stays readable when every member or structure says the same; the log file keeps all)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[tuple[str, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelname, record.getMessage())
        self.seen[key] += 1
        return self.seen[key] == 1

    def repeats(self) -> list[str]:
        """One line per message that came more than once: the message and how often."""
        return [f"{message} (×{count} in all)" for (_, message), count in self.seen.items() if count > 1]


#: The console's repeat filter (``cagoflow run`` prints its counts at the end).
ONCE = OnceFilter()


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show log messages.")) -> None:
    """Calibrated adversarial geometry optimisation for MLIP active learning."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if verbose else logging.WARNING)  # Parsl logs DEBUG into the same tree
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ONCE)
    logging.getLogger().addHandler(handler)


@app.command()
@reports_errors
def calibrate(
    committee: Path = typer.Option(..., "--committee", "-c", help="Committee file (YAML)."),
    structures: Path = typer.Option(..., "--structures", "-s", help="Labelled structures (extxyz, ...): the test set."),
    output: Path = typer.Option(Path("calibration"), "--output", "-o", help="Folder for the calibration and plots."),
    subset: Optional[str] = typer.Option(None, help="Also calibrate this member subset, e.g. 0,1,2 (the members CAGO uses)."),
    training: Optional[Path] = typer.Option(
        None, help="The committee's training structures: their shortest pair distances and packing go into the calibration for CAGO's guards."
    ),
) -> None:
    """Fit σ_cal = a·σ̂^b for forces, energies and virials; write JSON, plots and the validity range (judged out of sample).

    Where the structures include labelled CAGO structures (``cago_displacement`` in their info,
    as ``cagoflow cago`` writes them), also judge how far from its start a walk may go before the
    calibration stops holding (walks.json; the trust radius for ``cagoflow cago --trust-radius``).
    """
    from cagoflow.calibration import calibrate_committee, force_samples
    from cagoflow.calibration_plots import plot_calibration
    from cagoflow.io import read_structures
    from cagoflow.models import load_committee_spec

    spec = load_committee_spec(committee)
    model = spec.build()
    references = read_structures(structures, require_labels=True)
    _check_species(spec, references, structures)
    trained_on = None if training is None else read_structures(training)
    members = _members(subset, "--subset")
    if members is not None:
        _check_members(members, model.n_members, "--subset")
    _output_folder(output)
    with console.status(f"predicting {len(references)} structures with {model.n_members} members"):
        prediction = model.predict(references)
    for chosen in [None] + ([members] if members is not None else []):
        name = "calibration" if chosen is None else "calibration-subset"
        calibration = calibrate_committee(prediction, references, members=chosen, training=trained_on)
        path = calibration.save(output / f"{name}.json")
        sigma_hat, errors, groups = force_samples(prediction if chosen is None else prediction.members(chosen), references)
        plots = plot_calibration(sigma_hat, errors, calibration.forces.law, output / f"{name}-forces", groups=groups)
        _print_calibration(calibration, path, plots)
    _print_walks(prediction, references, output / "walks.json")


def _print_walks(prediction, references, path: Path) -> None:
    """Where along the labelled CAGO walks among ``references`` the committee's calibration holds
    (:func:`cagoflow.walk_validity.check_test_walks`): a table and ``path``; nothing without walks."""
    from cagoflow.io import atomic_write_json
    from cagoflow.walk_validity import WALKS_PER_BIN, check_test_walks

    check = check_test_walks(prediction, references)
    if check.walks == 0:
        return
    atomic_write_json(path, check.to_dict())
    if not check.judged:
        console.print(f"[yellow]{check.walks} labelled CAGO structure(s): too few to judge how far a walk may go (at least {WALKS_PER_BIN})[/]")
        return
    radius = "none: no displacement is shown to be safe" if check.radius is None else f"{check.radius:.3f} Å"
    table = Table(title=f"labelled CAGO walks ({check.walks}): RMSE/σ_cal out of sample by largest displacement from the start; trust radius {radius} → {escape(str(path))}")
    for column in ("displacement (Å)", "walks", "RMSE/σ_cal", "monotone band", "holds"):
        table.add_column(column)
    for item in check.bins:
        table.add_row(f"{item.low:.3f}–{item.high:.3f}", str(item.walks), f"{item.ratio:.2f}", f"{item.band_low:.2f}–{item.band_high:.2f}", "✓" if item.holds and check.radius is not None and item.high <= check.radius else "—")
    console.print(table)


def _print_calibration(calibration, path: Path, plots) -> None:
    from cagoflow.calibration import RECOMMENDED_TEST_STRUCTURES

    title = f"calibration of members {', '.join(map(str, calibration.members))} on {calibration.n_structures} structures"
    table = Table(title=f"{title} ({calibration.n_atoms} atoms) → {escape(str(path))}; in sample / out of sample")
    for column in ("quantity", "a", "b", "RMS z σ̂", "RMS z σ_cal", "miscal. area", "valid up to"):
        table.add_column(column)
    for quantity in (calibration.forces, calibration.energies, calibration.virials):
        if quantity is None:
            continue
        d, out = quantity.diagnostics, quantity.diagnostics.out_of_sample
        table.add_row(
            quantity.quantity,
            f"{quantity.law.a:.4g}",
            f"{quantity.law.b:.4g}",
            f"{d.std_r_before:.3f}",
            f"{d.std_r_after:.3f} / {'—' if out is None else f'{out.std_r:.3f}'}",
            f"{d.miscalibration_area_after:.3f} / {'—' if out is None else f'{out.miscalibration_area:.3f}'}",
            f"{_limit_text(d.in_sample_validity_limit)} / {_limit_text(d.validity_limit)} {quantity.unit}",
        )
    console.print(table)
    _print_reliability(calibration.forces)
    if calibration.n_structures < RECOMMENDED_TEST_STRUCTURES:
        console.print(
            f"[yellow]too few test structures to judge the calibration out of sample: {calibration.n_structures}; "
            f"at least {RECOMMENDED_TEST_STRUCTURES} recommended[/]"
        )
    if plots:
        console.print("plots: " + escape(", ".join(str(p) for p in plots)))


def _limit_text(limit: float | None) -> str:
    return "—" if limit is None else f"{limit:.3g}"


def _print_reliability(forces) -> None:
    """The out-of-sample reliability table of the forces: per bin of σ_cal, its structures, RMSE/σ_cal
    and the monotone band behind the validity limit."""
    out, limit = forces.diagnostics.out_of_sample, forces.diagnostics.validity_limit
    if out is None:
        return
    title = f"forces out of sample ({out.n_folds} folds of {out.n_structures} structures), valid up to {_limit_text(limit)} {forces.unit}"
    table = Table(title=title)
    for column in (f"σ_cal ({forces.unit})", "atoms", "structures", "RMSE/σ_cal", "monotone band", "valid"):
        table.add_column(column)
    for item in out.bins:
        table.add_row(
            f"{item.sigma_cal_low:.3g}–{item.sigma_cal_high:.3g}",
            str(item.count),
            str(item.structures),
            f"{item.ratio:.2f}",
            f"{item.band_low:.2f}–{item.band_high:.2f}",
            "✓" if limit is not None and item.sigma_cal_high <= limit else "—",
        )
    console.print(table)


@app.command()
@reports_errors
def cago(
    committee: Optional[Path] = typer.Option(None, "--committee", "-c", help="Committee file (YAML)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Calibration JSON of exactly the members used."),
    structures: Optional[Path] = typer.Option(None, "--structures", "-s", help="Starting structures."),
    output: Path = typer.Option(Path("cago"), "--output", "-o", help="Output folder (cago.extxyz, plots)."),
    settings_file: Optional[Path] = typer.Option(
        None, "--settings", help="YAML of CAGO settings (the keys of a campaign's cago block); options below override it."
    ),
    delta: Optional[float] = typer.Option(None, help="Target calibrated force error δ, eV/Å [default: 0.1]."),
    delta_relative: Optional[float] = typer.Option(
        None, help="δ as this factor × each structure's own calibrated error (instead of --delta)."
    ),
    members: Optional[str] = typer.Option(None, help="Run on this member subset, e.g. 0,1,2."),
    max_steps: Optional[int] = typer.Option(None, help="L-BFGS iterations at most [default: 200]."),
    max_step: Optional[float] = typer.Option(None, help="Largest move of any atom per iteration, Å [default: 0.1]."),
    tolerance: Optional[float] = typer.Option(None, help="Relative tolerance on δ [default: 0.05]."),
    l_bias: Optional[float] = typer.Option(None, help="Weight of the committee-mean force term |F̄_i|² [default: 0]."),
    guard_fraction: Optional[float] = typer.Option(
        None, help="Close-contact guard: no pair closer than this fraction of its species' shortest training distance [default: 0.85]."
    ),
    no_guard: bool = typer.Option(False, "--no-guard", help="Switch the close-contact guard off."),
    trust_radius: Optional[float] = typer.Option(
        None, help="Trust region: no atom farther than this from its start, Å [default: 3 × the starting frames' thermal displacement (RMS between consecutive frames / √2)]."
    ),
    no_trust_region: bool = typer.Option(False, "--no-trust-region", help="Switch the trust region off."),
    packing_margin: Optional[float] = typer.Option(
        None, help="Packing guard: mean nearest-neighbour distances at most this fraction outside the data's range [default: 0.03]."
    ),
    no_packing_guard: bool = typer.Option(False, "--no-packing-guard", help="Switch the packing guard off."),
    training: Optional[Path] = typer.Option(
        None, help="Training structures, for the guard's distances when the calibration holds none."
    ),
    fixed_cell: bool = typer.Option(False, "--fixed-cell", help="Keep the cell fixed."),
    gradient: Optional[str] = typer.Option(None, help="auto | finite_difference | exact [default: auto]."),
    refuse_above_validity: bool = typer.Option(False, help="Refuse a δ above the calibration's validity limit (default: clamp)."),
    demo: bool = typer.Option(False, "--demo", help="Run the self-contained demonstration on embedded defaults."),
) -> None:
    """Push structures until the calibrated force uncertainty reaches δ, all of them together (with progress)."""
    if demo:
        _run_demo(_output_folder(output))
        return
    from cagoflow.cago import CagoSettings, run_cago_batch
    from cagoflow.cago_plots import plot_cago_progress
    from cagoflow.calibration import CommitteeCalibration
    from cagoflow.inputs import load_settings
    from cagoflow.geometry import shortest_pair_distances
    from cagoflow.io import check_structures, read_structures, write_structures
    from cagoflow.models import load_committee_spec

    for value, option in ((committee, "--committee"), (calibration, "--calibration"), (structures, "--structures")):
        if value is None:
            raise InputError(f"missing option {option} (or use --demo)", field=option)
    if delta is not None and delta_relative is not None:
        raise InputError("give either --delta or --delta-relative", field="--delta-relative")
    overrides = {
        "delta": {"relative": delta_relative} if delta_relative is not None else delta,
        "max_steps": max_steps, "max_step": max_step, "tolerance": tolerance, "l_bias": l_bias, "gradient": gradient,
        "optimize_cell": False if fixed_cell else None, "above_validity": "refuse" if refuse_above_validity else None,
        "contact_guard": {"fraction": guard_fraction} if guard_fraction is not None else None,
        "trust_region": {"radius": trust_radius} if trust_radius is not None else None,
        "packing_guard": {"margin": packing_margin} if packing_margin is not None else None,
    }  # fmt: skip
    try:
        settings = load_settings(CagoSettings, settings_file, overrides)
    except InputError as exc:  # name the option a bad value came from
        field = (exc.field or "").split(".")[0]
        if overrides.get(field) is None:
            raise
        option = "--delta-relative" if field == "delta" and delta_relative is not None else f"--{field.replace('_', '-')}"
        option = {"contact_guard": "--guard-fraction", "trust_region": "--trust-radius", "packing_guard": "--packing-margin"}.get(field, option)
        raise InputError(exc.detail.split(": ", 1)[-1] if exc.detail.startswith("line") else exc.detail, field=option) from None
    switched_off = {"contact_guard": no_guard, "trust_region": no_trust_region, "packing_guard": no_packing_guard}
    settings = settings.model_copy(update={name: None for name, off in switched_off.items() if off})
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
    law = law_file.for_cago()
    if law.validity_limit is None:
        raise InputError(
            "the calibration has no validity limit: judged out of sample, no σ_cal range was found where its error "
            "estimate holds (too few test structures, or a power law that does not fit them), so no δ can be trusted; "
            "calibrate on more structures (at least 8 recommended) that reach the errors CAGO should go to",
            file=calibration, field="forces.diagnostics.validity_limit",
        )  # fmt: skip
    if training is not None:
        law = replace(law, contact_distances=shortest_pair_distances(read_structures(training)))
    elif law.contact_distances is None and settings.contact_guard is not None:
        errors.print(
            "[yellow]warning:[/] the calibration holds no training-set distances (calibrate with --training); "
            "the close-contact guard uses the starting structures' shortest pairs",
            highlight=False,
        )
    _output_folder(output)
    engine = model if len(chosen) == model.n_members else model.subset(chosen)
    with _progress() as progress:
        tasks = [progress.add_task(f"structure {k}", total=settings.max_steps, sigma="") for k in range(len(starts))]
        results = run_cago_batch(
            starts, engine, law, settings, progress=lambda k, step, sigma: _advance(progress, tasks[k], step, sigma)
        )
        for task, result in zip(tasks, results):
            progress.update(task, completed=settings.max_steps, sigma=result.reason)
    for warning in sorted({w for result in results for w in result.warnings}):
        errors.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    written = write_structures(output / "cago.extxyz", [result.atoms for result in results])
    plot = plot_cago_progress(results, output / "cago-progress.png")
    _print_results(results, None)
    flagged = sum(bool(result.flags) for result in results)
    if flagged:
        console.print(
            f"{flagged} structure(s) flagged: 'fast' reached δ in ≤ {settings.fast_steps} steps; 'contact', 'trust_region' "
            "and 'packing' name the limit a step touched — look at them before trusting their labels "
            "(filters.pre.drop_flagged in campaigns)"
        )
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
    table = Table(title="CAGO (σ_cal, δ: meV/Å; max move: Å from the start; closest pair: distance / training set's)")
    columns = ("#", "reason", "walk", "steps", "σ_cal start → end", "δ asked", "δ used", "max move", "closest pair", "flags")
    for column in columns:
        table.add_column(column)
    if hits is not None:
        table.add_column("true error")
        table.add_column("true / δ")
    for index, result in enumerate(results):
        ratio, pair = result.closest_contact
        row = [
            str(index), result.reason, result.direction, str(result.n_steps),
            f"{1000 * result.start_sigma_cal:.1f} → {1000 * result.sigma_cal_rms:.1f}", f"{1000 * result.requested_delta:.0f}",
            "—" if result.delta is None else f"{1000 * result.delta:.0f}", f"{result.max_displacement:.2f}",
            "—" if pair is None else f"{ratio:.2f} ({pair})", " ".join(result.flags) or "—",
        ]  # fmt: skip
        if hits is not None:
            hit = hits[index]
            row += ["—", "—"] if hit is None else [f"{1000 * hit.true_error:.1f}", f"{hit.ratio:.2f}"]
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
    force_unlock: bool = typer.Option(
        False, "--force-unlock", help="Take the work directory's lock from a run that is gone but looks alive."
    ),
) -> None:
    """Run a campaign, or continue it where it stopped: finished tasks are never recomputed.
    One run at a time holds a work directory; a second refuses (exit code 2)."""
    from cagoflow.campaign import load_campaign
    from cagoflow.executors.site import default_site, load_site
    from cagoflow.workflows.driver import run_campaign

    config = load_campaign(campaign)
    site_config = default_site() if site is None else load_site(site)
    _output_folder(workdir, "--workdir")
    console.print(
        f"[bold]{escape(config.name)}[/]: {config.iterations} iteration(s), {len(config.systems)} system(s), "
        f"{config.committee.size}-member {config.committee.backend} committee, site {escape(site_config.name)}, "
        f"work directory {escape(str(workdir))}"
    )
    with _stage_progress() as (progress, hook), _log_file(workdir / LOG_NAME):
        run_campaign(config, site_config, workdir, hook, force_unlock=force_unlock, warn=_warn)
    for line in ONCE.repeats():
        _warn(f"{line}; every one in {workdir / LOG_NAME}")
    _print_status(workdir)


#: The campaign's own log in its work directory: every warning of every run, with its time.
LOG_NAME = "cagoflow.log"


@contextlib.contextmanager
def _log_file(path: Path):
    """Warnings and errors of this run appended to ``path`` (not filtered for repeats); the file
    is made at the first warning, so a run that is refused leaves the directory untouched."""
    handler = logging.FileHandler(path, delay=True)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _warn(message: str) -> None:
    errors.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


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
def status(
    workdir: Path = typer.Argument(..., help="Campaign work directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures per iteration as JSON instead of tables."),
) -> None:
    """The state of a campaign — tasks per stage, then dataset, errors, stability, properties and CAGO
    per iteration — from its work directory alone."""
    if as_json:
        import json

        from cagoflow.workflows.status import campaign_figures

        typer.echo(json.dumps(campaign_figures(workdir), indent=2, ensure_ascii=False))
        return
    _print_status(workdir)


#: Failed tasks listed under the status tables (the first ones, in campaign order).
FAILURES_SHOWN = 20

#: Columns the status tables are laid out for; a narrower terminal wraps their cells.
STATUS_WIDTH = 100


def _print_status(workdir: Path) -> None:
    """Two tables (tasks per stage; figures per iteration and system), failed tasks, early stop."""
    from rich import box

    from cagoflow.workflows.status import (
        campaign_figures, failure_lines, finished, progress_table, resumed_trainings, science_table,
    )

    figures = campaign_figures(workdir)
    out = Console(width=min(console.width, STATUS_WIDTH) if console.is_terminal else STATUS_WIDTH, highlight=False)
    out.print(f"[bold]campaign in {escape(str(workdir))}[/] ({figures['iterations_asked']} iterations asked)")
    out.print(escape(figures["run"]["words"]))
    for title, (heads, rows, notes) in (("tasks", progress_table(figures)), ("figures", science_table(figures))):
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
        for index, head in enumerate(heads):
            table.add_column(escape(head), justify="left" if index == 0 else "right")
        for row in rows:
            table.add_row(*map(escape, row))
        out.print(table)
        for note in notes:
            out.print(escape(note), style="dim")
    resumed = resumed_trainings(figures)
    if resumed:
        out.print("[bold]resumed trainings[/] (from an interrupted run's checkpoint: consistent, not a replay):")
        for line in resumed:
            out.print(f"  {escape(line)}")
    failures = failure_lines(figures, message_chars=200)
    if failures:
        out.print(f"[bold]failed tasks[/] ({len(failures)}; a failed training is retried by the next `cagoflow run`):")
        for line in failures[:FAILURES_SHOWN]:
            out.print(f"  {escape(line)}")
        if len(failures) > FAILURES_SHOWN:
            out.print(f"  ... and {len(failures) - FAILURES_SHOWN} more (their record.json files say why)")
    if figures["stopped"]:
        stop = figures["stopped"]
        out.print(f"[bold]stopped early at iteration {stop.get('iteration')}:[/] {escape(str(stop.get('reason', '')))}")
    if finished(figures):
        out.print(f"[bold]the potential:[/] cagoflow export {escape(str(workdir))} -o potential")


@app.command()
@reports_errors
def report(
    workdir: Path = typer.Argument(..., help="Campaign work directory."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for the plots (default: WORKDIR/report)."),
) -> None:
    """A page to open in a browser (index.html: the status tables and every plot, self-contained)
    and the plots as PNG: against training-set size (held-out force error, stable members, density,
    diffusion, coordination), per iteration (CAGO hit and walks, calibration a and b, MD
    stability), per CAGO structure (true error against δ) and per calibration (reliability)."""
    from cagoflow.workflows.report import write_report
    from cagoflow.workflows.status import require_campaign

    require_campaign(workdir)
    folder = _output_folder(output or workdir / "report")
    written = write_report(workdir, folder)
    for path in written[:-1]:
        console.print(escape(str(path)))
    console.print(f"[bold]open in a browser:[/] {escape(str(written[-1]))}")


@app.command()
@reports_errors
def export(
    workdir: Path = typer.Argument(..., help="Campaign work directory."),
    output: Path = typer.Option(Path("potential"), "--output", "-o", help="Folder to write the potential into."),
    iteration: Optional[int] = typer.Option(
        None, help="Iteration whose committee to export [default: the one a stop block chose, else the last calibrated]."
    ),
    steps: Optional[int] = typer.Option(None, min=1, help="Steps of the production MD input, 0.5 fs each [default: 10 ps]."),
) -> None:
    """Take the potential home: the members' models, a committee file, the calibration, a LAMMPS
    input for production MD, an ASE snippet and a card of where it comes from and how good it is."""
    from cagoflow.workflows.export import PRODUCTION_STEPS, export_potential

    folder = _output_folder(output)
    result = export_potential(workdir, folder, iteration, steps or PRODUCTION_STEPS)
    console.print(f"the committee of iteration {result.iteration} ({result.card['members']} {result.card['backend']} "
                  f"members) is in {escape(str(folder))}:")  # fmt: skip
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            console.print(f"  {escape(str(path.relative_to(folder)))}")
    if result.card["lammps"]:
        console.print(f"production MD: cd {escape(str(folder))} && lmp -in in.lammps  ({escape(result.card['lammps'])})")
    console.print("in Python: cagoflow.models.load_committee('committee.yaml'); see use_in_ase.py and card.md")


@app.command()
@reports_errors
def validate(
    campaign: Optional[Path] = typer.Argument(None, help="Campaign YAML."),
    site: Optional[Path] = typer.Option(None, "--site", help="Site-config YAML."),
) -> None:
    """Check a campaign and/or a site-config without running or submitting anything."""
    from cagoflow.campaign import load_campaign
    from cagoflow.executors.site import load_site

    if campaign is None and site is None:
        raise InputError("nothing to validate: give a campaign YAML, --site SITE.yaml, or both")
    if campaign is not None:
        config = load_campaign(campaign)
        console.print(
            f"campaign [bold]{config.name}[/] is valid: {len(config.systems)} system(s), {config.iterations} iteration(s), "
            f"{config.committee.size}-member {config.committee.backend} committee, {config.cago.delta_text}"
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
