"""What a campaign's work directory says about it: no Parsl, no scheduler, only the records.

A task directory with a record is done or failed; one without a record is running (or was
interrupted: the next ``cagoflow run`` redoes it); :func:`run_state` says whether a run holds
the directory. :func:`campaign_figures` gathers what a
chemist looks at, per iteration and system, as one JSON-ready dict; ``cagoflow status`` (its
tables: :func:`progress_table`, :func:`science_table`), ``cagoflow status --json`` and
``cagoflow report`` all read that dict, so they cannot disagree.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any, Callable, Mapping, Sequence, get_args

from cagoflow.errors import InputError
from cagoflow.io import read_json
from cagoflow.records import RECORD_NAME, TaskRecord, read_record
from cagoflow.summaries import (
    CagoSummary, CalibrationSummary, Direction, MDSummary, MergeSummary, PostfilterSummary, SampleSummary, SplitSummary, SummaryModel,
)
from cagoflow.stages import STAGE_BY_NAME, STAGE_ORDER, task_system

#: Written by the campaign when a convergence criterion stopped it early: {"iteration", "reason"}.
STOPPED_NAME = "stopped.json"

#: The ways a CAGO walk can go (see :attr:`cagoflow.cago.CagoResult.direction`).
DIRECTIONS = get_args(Direction)

#: Units of the numbers in :func:`campaign_figures` (held-out figures: the evaluate summary's keys).
UNITS = {
    "force_rmse": "eV/Å", "member_force_rmse": "eV/Å", "energy_rmse_per_atom": "eV/atom",
    "member_energy_rmse_per_atom": "eV/atom", "virial_rmse_per_atom": "eV/atom", "member_virial_rmse_per_atom": "eV/atom",
    "density_mean": "g/cm³", "density_std": "g/cm³", "diffusion_mean": "Å²/ps", "diffusion_std": "Å²/ps",
    "test_force_rmse": "eV/Å", "validity_limit": "eV/Å", "true_error_mean": "eV/Å", "hit_ratio_mean": "true error / δ",
    "training_set": "structures", "test_set": "structures", "dataset_after_merge": "structures", "added": "structures",
}  # fmt: skip


@dataclass
class StageStatus:
    """Tasks of one stage in one iteration by state, and the records of the finished ones."""

    done: int = 0
    failed: int = 0
    running: int = 0
    records: list[TaskRecord] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        if self.failed and not self.done:
            return "failed"
        return "done" if self.done else "—"


@dataclass
class IterationStatus:
    """One iteration: its stages, and the figures a chemist looks at first."""

    iteration: int
    stages: dict[str, StageStatus] = field(default_factory=dict)

    def _model(self, stage: str, model: type[SummaryModel]) -> SummaryModel | None:
        """The summary of a one-task stage (split, calibrate, merge) as its model (None before it finished)."""
        records = [r for r in self.stages.get(stage, StageStatus()).records if r.status == "done"]
        return model.model_validate(records[0].summary) if records else None

    @property
    def merge(self) -> MergeSummary | None:
        """The merge record's summary (None before the merge finished)."""
        return self._model("merge", MergeSummary)

    @property
    def split(self) -> SplitSummary | None:
        """The split record's summary (None before the split finished)."""
        return self._model("split", SplitSummary)

    def _records(self, stage: str, system: str | None = None) -> list[TaskRecord]:
        """Records of a stage, of one system's tasks or of all."""
        records = self.stages.get(stage, StageStatus()).records
        return [r for r in records if system is None or task_system(r.task) == system]

    @property
    def dataset_size(self) -> int | None:
        """Structures in the training set after this iteration's merge."""
        return None if self.merge is None else self.merge.dataset

    @property
    def training_set(self) -> int | None:
        """Structures the members of this iteration's committee drew their training resamples
        from: the split's dataset less its test split, on which no member trains."""
        return None if self.split is None else self.split.dataset - self.test_set

    @property
    def test_set(self) -> int:
        """Structures in this iteration's test split (the calibration's; never trained on)."""
        return 0 if self.split is None else self.split.test

    @property
    def added(self) -> int | None:
        return None if self.merge is None else self.merge.added

    @property
    def test_force_rmse(self) -> float | None:
        """Force RMSE of the committee mean on the 10 % test split, eV/Å."""
        calibration = self._model("calibrate", CalibrationSummary)
        return None if calibration is None else calibration.test_force_rmse

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The calibrate record's summary: a, b, validity limit (eV/Å), test-split RMSE, members."""
        calibration = self._model("calibrate", CalibrationSummary)
        return None if calibration is None else calibration.dump()

    @property
    def hit_ratio(self) -> float | None:
        """Mean true error / δ of this iteration's CAGO structures that reached δ (from their
        reference labels; the merge record also holds the median and the unreached count)."""
        return None if self.merge is None else self.merge.hit_ratio_mean

    @property
    def true_error_mean(self) -> float | None:
        """Mean true force error of this iteration's labelled CAGO structures, eV/Å."""
        return None if self.merge is None else self.merge.true_error_mean

    def evaluation(self, system: str) -> dict[str, Any] | None:
        """Held-out errors, stability and properties of the committee for one system (see UNITS)."""
        records = [r for r in self._records("evaluate") if r.task == f"summary-{system}" and r.status == "done"]
        return dict(records[0].summary) if records else None

    def cago_outcome(self, system: str | None = None) -> dict[str, Any] | None:
        """CAGO structures pushed (they had a δ), reached δ, flagged (any flag), counts per flag,
        walk directions (up, down, unmoved; unpushed starts count as unmoved), what happened to
        the unpushed ones (sampled, dropped) and why (no_room, no_limit, no_trust), starts redrawn,
        the largest displacement of a pushed walk from its start (Å), and the trust radius (Å)
        with where it came from (the sample stage's figures)."""
        walks = [CagoSummary.model_validate(r.summary) for r in self._records("cago", system) if not r.summary.get("skipped")]
        walks = [walk for walk in walks if walk.optimised]
        if not walks:
            return None
        pushed = [walk for walk in walks if walk.action == "pushed"]
        unpushed = [walk for walk in walks if walk.action != "pushed"]
        samples = [r for r in self._records("sample") if r.status == "done" and system in (None, r.task)]
        sample = SampleSummary.model_validate(samples[0].summary) if len(samples) == 1 else None
        return {
            "optimised": len(pushed),
            "reached": sum(walk.reason == "reached" for walk in pushed),
            "flagged": sum(bool(walk.flags) for walk in pushed),
            "flags": dict(Counter(flag for walk in pushed for flag in walk.flags)),
            "directions": {d: sum(walk.direction == d for walk in walks) for d in DIRECTIONS},
            "unpushed": dict(Counter(f"{walk.reason}: {walk.action}" for walk in unpushed)),
            "redrawn": sum(walk.start == "redrawn" for walk in walks),
            "max_displacement": max((walk.max_displacement or 0.0 for walk in pushed), default=None),
            "trust_radius": None if sample is None else sample.trust_radius,
            "trust_source": None if sample is None else sample.trust_source,
        }

    def cago_structures(self, system: str) -> list[dict[str, Any]]:
        """Each labelled, pushed CAGO structure of one system: its task, δ, its σ_cal where the
        walk stopped and its true force error (eV/Å, from the post-filter), where its walk went,
        why it stopped, its flags."""
        errors: dict[str, float] = {}
        for record in self.stages.get("postfilter", StageStatus()).records:
            if record.task == system and record.status == "done":
                errors.update(PostfilterSummary.model_validate(record.summary).true_error_by_task)
        structures = []
        for record in self._records("cago", system):
            if record.task in errors and not record.summary.get("skipped"):
                walk = CagoSummary.model_validate(record.summary)
                if walk.action == "pushed" and walk.delta:
                    structures.append({"task": record.task, "delta": walk.delta, "sigma_cal": walk.sigma_cal_rms,
                                       "true_error": errors[record.task], "direction": walk.direction,
                                       "reason": walk.reason, "flags": list(walk.flags)})  # fmt: skip
        return structures

    @property
    def cago_reached(self) -> str | None:
        """"k/n": CAGO structures of this iteration whose σ_cal reached δ, of those optimised."""
        outcome = self.cago_outcome()
        return None if outcome is None else f"{outcome['reached']}/{outcome['optimised']}"

    @property
    def resumed_training(self) -> dict[str, int]:
        """Members whose training continued from an interrupted run's checkpoint: task → step."""
        return {r.task: int(r.summary["resumed_from_step"]) for r in self._records("train")
                if r.summary.get("resumed_from_step") is not None}  # fmt: skip

    @property
    def members_trained(self) -> str | None:
        train = self.stages.get("train")
        return None if train is None else f"{train.done}/{train.done + train.failed + train.running}"

    def md_replicas(self, system: str | None = None) -> dict[str, int] | None:
        """Committee-MD replicas (of one system or all) that stayed stable, of those run."""
        records = self._records("md", system)
        stable = sum(MDSummary.model_validate(r.summary).stable for r in records if r.status == "done")
        return {"stable": stable, "replicas": len(records)} if records else None

    @property
    def md_stable(self) -> str | None:
        replicas = self.md_replicas()
        return None if replicas is None else f"{replicas['stable']}/{replicas['replicas']}"


def require_campaign(workdir: Path) -> None:
    """Refuse a folder that is not a campaign's work directory (no ``campaign.json``)."""
    if not (workdir / "campaign.json").exists():
        raise InputError("not a campaign work directory (no campaign.json)", file=workdir)


def campaign_status(workdir: Path) -> list[IterationStatus]:
    """Status of every iteration found in ``workdir`` (``iter-init`` is iteration −1)."""
    require_campaign(workdir)
    iterations: dict[int, IterationStatus] = {}
    for iteration_dir in sorted(workdir.glob("iter-*")):
        number = -1 if iteration_dir.name == "iter-init" else int(iteration_dir.name.split("-")[1])
        status = iterations.setdefault(number, IterationStatus(number))
        for stage_dir in sorted(p for p in iteration_dir.iterdir() if p.is_dir()):
            stage = status.stages.setdefault(stage_dir.name, StageStatus())
            for task_dir in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                record = read_record(task_dir) if (task_dir / RECORD_NAME).exists() else None
                if record is None:
                    stage.running += 1
                elif record.summary.get("skipped"):
                    continue
                else:
                    stage.records.append(record)
                    if record.status == "done":
                        stage.done += 1
                    else:
                        stage.failed += 1
    return [iterations[k] for k in sorted(iterations)]


def campaign_settings(workdir: Path) -> dict[str, Any]:
    """The copy of the campaign's settings in the work directory."""
    return json.loads((workdir / "campaign.json").read_text())


def stopped(workdir: Path) -> dict[str, Any] | None:
    """{"iteration", "reason"} when a convergence criterion stopped the campaign early, else None."""
    path = workdir / STOPPED_NAME
    return read_json(path) if path.exists() else None


def ordered_stages(iterations: list[IterationStatus]) -> list[str]:
    """Stages found in the work directory, in campaign order (unknown ones last, by name)."""
    found = {name for it in iterations for name in it.stages}
    return [name for name in STAGE_ORDER if name in found] + sorted(found - set(STAGE_ORDER))


def failed_tasks(iterations: list[IterationStatus]) -> list[tuple[int, TaskRecord]]:
    """(iteration, record) of every failed task, in the order the campaign runs them."""
    stages = ordered_stages(iterations)
    return [
        (it.iteration, record)
        for it in iterations
        for name in stages
        for record in it.stages.get(name, StageStatus()).records
        if record.status != "done"
    ]


def member_spread(values: Sequence[float | None] | None) -> tuple[float, float] | None:
    """Mean and standard deviation over the committee members of a per-member figure."""
    known = [x for x in values or [] if x is not None]
    return (fmean(known), pstdev(known)) if known else None


def failure_message(record: TaskRecord) -> str:
    """A failed task's message (or reason) on one line."""
    return " ".join(str(record.summary.get("message") or record.summary.get("reason") or "").split())


def campaign_figures(workdir: Path) -> dict[str, Any]:
    """Everything ``cagoflow status`` shows, per iteration and system, as JSON-ready values.

    Units: ``UNITS`` (also under the key "units"); a figure without its record is None.
    """
    iterations = campaign_status(workdir)
    settings = campaign_settings(workdir)
    systems = sorted(settings["systems"])
    failures = failed_tasks(iterations)
    return {
        "workdir": str(workdir),
        "iterations_asked": int(settings["iterations"]),
        "systems": systems,
        "units": UNITS,
        "stages": ordered_stages(iterations),
        "iterations": [_iteration_figures(it, systems, [r for i, r in failures if i == it.iteration]) for it in iterations],
        "stopped": stopped(workdir),
        "run": run_state(workdir),
    }


def finished(figures: Mapping[str, Any]) -> bool:
    """Whether the campaign of :func:`campaign_figures` is over: stopped early, or its last asked
    iteration has a calibrated committee and no task running, and no run holds it."""
    if figures["run"]["held"]:
        return False
    if figures["stopped"]:
        return True
    last = figures["iterations"][-1] if figures["iterations"] else None
    return bool(last and last["iteration"] == figures["iterations_asked"] - 1 and last["calibration"]
                and not any(stage["running"] for stage in last["stages"].values()))  # fmt: skip


def run_state(workdir: Path) -> dict[str, Any]:
    """Whether a ``cagoflow run`` holds the work directory (:mod:`cagoflow.workflows.lock`):
    ``held``, the holder's ``state`` (alive, dead, stale), ``host``, ``pid``, ``started`` (Unix s),
    ``heartbeat_age`` (s) and the same in ``words``."""
    from cagoflow.workflows.lock import read_lock

    holder = read_lock(Path(workdir))
    if holder is None:
        return {"held": False, "words": "no run holds this work directory"}
    state = holder.state()
    now = time.time()
    words = {
        "alive": f"a run holds this work directory: {holder.describe(now)}",
        "dead": f"a run that is gone left its lock ({holder.describe(now)}); the next run takes it over",
        "stale": f"a run whose heartbeat stopped left its lock ({holder.describe(now)}); the next run takes it over",
    }[state]
    return {"held": state == "alive", "state": state, "host": holder.host, "pid": holder.pid, "started": holder.started,
            "heartbeat_age": now - holder.heartbeat, "words": words}  # fmt: skip


def _iteration_figures(it: IterationStatus, systems: list[str], failures: list[TaskRecord]) -> dict[str, Any]:
    """One iteration's entry of :func:`campaign_figures`."""
    per_system = {
        system: {"evaluation": it.evaluation(system), "cago": it.cago_outcome(system), "md": it.md_replicas(system),
                 "cago_structures": it.cago_structures(system)}
        for system in systems
    }
    return {
        "iteration": it.iteration,
        "stages": {name: {"done": s.done, "failed": s.failed, "running": s.running}
                   for name in ordered_stages([it]) for s in [it.stages[name]]},  # fmt: skip
        "training_set": it.training_set,
        "test_set": it.test_set,
        "added": it.added,
        "dataset_after_merge": it.dataset_size,
        "calibration": it.calibration,
        "hit_ratio_mean": it.hit_ratio,
        "hit_ratio_median": (None if it.merge is None else it.merge.hit_ratio_median),
        "hits_unreached": (None if it.merge is None else it.merge.unreached),
        "true_error_mean": it.true_error_mean,
        "failed": [{"stage": r.stage, "task": r.task, "message": failure_message(r)} for r in failures],
        "resumed_training": it.resumed_training,
        "systems": per_system if it.iteration >= 0 else {},
    }


# --- the status tables, as text cells (the CLI draws them) ------------------------------------------

#: A table as plain text: column heads (may hold line breaks), rows of cells, and notes on its columns.
TextTable = tuple[list[str], list[list[str]], list[str]]

EMPTY = "—"


def counts(tasks: Mapping[str, int] | None) -> str:
    """"3", "3 +1 failed", "2 +1 running": done, failed, running tasks of a stage ("" if none)."""
    if not tasks:
        return ""
    done, failed, running = tasks["done"], tasks["failed"], tasks["running"]
    text = str(done) if done or not (failed or running) else ""
    if failed:
        text += f" +{failed} failed"
    if running:
        text += f" +{running} running"
    return text.strip()


def iteration_words(iteration: int) -> str:
    """"initial" or "iteration N", for sentences."""
    return "initial" if iteration < 0 else f"iteration {iteration}"


def failure_lines(figures: Mapping[str, Any], message_chars: int | None = None) -> list[str]:
    """"iteration 0 train member-01: <why>": every failed task in campaign order, its message
    cut at ``message_chars`` (None: whole)."""
    return [f"{iteration_words(it['iteration'])} {t['stage']} {t['task']}: {t['message'][:message_chars] or 'no message'}"
            for it in figures["iterations"] for t in it["failed"]]  # fmt: skip


def resumed_trainings(figures: Mapping[str, Any]) -> list[str]:
    """"iteration 1 member-02 from step 150": the trainings that continued from a checkpoint."""
    return [f"{iteration_words(it['iteration'])} {task} from step {step}"
            for it in figures["iterations"] for task, step in it.get("resumed_training", {}).items()]  # fmt: skip


def iteration_label(iteration: int) -> str:
    return "init" if iteration < 0 else str(iteration)


def progress_table(figures: Mapping[str, Any]) -> TextTable:
    """Tasks done (+failed, +running) per iteration and stage."""
    stages = figures["stages"]
    heads = ["iter", *(STAGE_BY_NAME[name].column if name in STAGE_BY_NAME else name for name in stages)]
    rows = [[iteration_label(f["iteration"]), *(counts(f["stages"].get(name)) for name in stages)] for f in figures["iterations"]]
    short = ", ".join(f"{STAGE_BY_NAME[name].head} = {name}" for name in stages if name in STAGE_BY_NAME and STAGE_BY_NAME[name].head)
    return heads, rows, [f"tasks done (+failed, +running), skipped ones not counted; {short}"]


@dataclass(frozen=True)
class Column:
    """A column of the science table: its head (with units), how a cell is made, what it means.

    ``cell(iteration, system)`` gets the iteration's figures and, for per-system columns, the
    system's (None for the initial labelling); ``instead_of`` names a column it stands in for
    when that one is empty (an older work directory).
    """

    head: str
    cell: Callable[[Mapping[str, Any], Mapping[str, Any] | None], str]
    per_system: bool = False
    note: str = ""
    instead_of: str | None = None


#: The MD properties of the evaluation: key → (label, unit, format of the mean).
PROPERTIES = {"density": ("density", "g/cm³", "{:.3f}"), "diffusion": ("D", "Å²/ps", "{:.3g}"),
              "coordination": ("coord.", "", "{:.2f}")}  # fmt: skip


def mean_std(mean: float | None, std: float | None, form: str, scale: float = 1.0) -> str:
    """"0.997±0.005", "0.997" (no std), "—" (no mean); the std with as many decimals as the mean
    ("1.05±0.06", not "1.05±0.0591")."""
    if mean is None:
        return EMPTY
    text = form.format(scale * mean)
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
    return text + ("" if std is None else f"±{scale * std:.{decimals}f}")


def _dataset(iteration: Mapping[str, Any], _: Mapping[str, Any] | None) -> str:
    """"8/2 +4": structures the members trained on / in the test split, + those the iteration added."""
    parts = [] if iteration["training_set"] is None else [f"{iteration['training_set']}/{iteration['test_set']}"]
    if iteration["added"] is not None:
        parts.append(f"+{iteration['added']}")
    return " ".join(parts) or EMPTY


def _evaluation(system: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (system or {}).get("evaluation") or {}


def _held_out_force(_: Mapping[str, Any], system: Mapping[str, Any] | None) -> str:
    """"120 (140±8)": committee-mean force RMSE (members' mean±std), meV/Å."""
    evaluation = _evaluation(system)
    if evaluation.get("force_rmse") is None:
        return EMPTY
    members = member_spread(evaluation.get("member_force_rmse"))
    spread = "" if members is None else f" ({mean_std(*members, '{:.0f}', 1000)})"
    return mean_std(evaluation["force_rmse"], None, "{:.0f}", 1000) + spread


def _test_split_force(iteration: Mapping[str, Any], _: Mapping[str, Any] | None) -> str:
    return mean_std((iteration["calibration"] or {}).get("test_force_rmse"), None, "{:.0f}", 1000)


def _property(key: str, form: str) -> Callable[[Mapping[str, Any], Mapping[str, Any] | None], str]:
    """Cell of an MD property of the evaluate summary: mean±std over the stable members."""

    def cell(_: Mapping[str, Any], system: Mapping[str, Any] | None) -> str:
        evaluation = _evaluation(system)
        return mean_std(evaluation.get(f"{key}_mean"), evaluation.get(f"{key}_std"), form)

    return cell


def _stable_members(_: Mapping[str, Any], system: Mapping[str, Any] | None) -> str:
    evaluation = _evaluation(system)
    return EMPTY if evaluation.get("members") is None else f"{evaluation['stable_members']}/{evaluation['members']}"


def _md_replicas(_: Mapping[str, Any], system: Mapping[str, Any] | None) -> str:
    md = (system or {}).get("md")
    return EMPTY if md is None else f"{md['stable']}/{md['replicas']}"


def _cago(_: Mapping[str, Any], system: Mapping[str, Any] | None) -> str:
    """"3/4 (1)" over "2/1/1" over "0.09/0.11 w": reached δ, of those pushed (flagged); walks
    up/down/unmoved; the largest displacement of a walk / the trust radius (Å; w: from the
    labelled walks, w!: they trust none)."""
    cago = (system or {}).get("cago")
    if cago is None:
        return EMPTY
    text = f"{cago['reached']}/{cago['optimised']}" + (f" ({cago['flagged']})" if cago["flagged"] else "")
    if "directions" in cago:
        text += "\n" + "/".join(str(cago["directions"][d]) for d in DIRECTIONS)
    if cago.get("trust_radius") is not None:
        moved = EMPTY if cago.get("max_displacement") is None else f"{cago['max_displacement']:.2g}"
        source = {"walks": " w", "walks: none holds": " w!"}.get(cago.get("trust_source") or "", "")
        text += f"\n{moved}/{cago['trust_radius']:.2g}{source}"
    return text


def _hit(iteration: Mapping[str, Any], _: Mapping[str, Any] | None) -> str:
    return mean_std(iteration["hit_ratio_mean"], None, "{:.2f}")


#: The science table's columns, left to right (empty columns are left out).
SCIENCE_COLUMNS = (
    Column("train\n/test\n+added", _dataset,
           note="train/test +added: structures the members trained on (their resamples' pool) / in the test "
                "split (calibration, never trained on), + those the iteration added"),
    Column("F RMSE\nmeV/Å", _held_out_force, per_system=True,
           note="F RMSE: force RMSE of the committee mean on the held-out benchmark set (members: mean±std)"),
    Column("F RMSE\ntest split\nmeV/Å", _test_split_force, instead_of="F RMSE\nmeV/Å",
           note="F RMSE test split: force RMSE of the committee mean on the 10 % test split (drifts as the data grow)"),
    Column("stable", _stable_members, per_system=True, note="stable: members whose MD stayed stable, of all members"),
    Column("MD\nstable", _md_replicas, per_system=True, instead_of="stable",
           note="MD stable: committee-MD replicas that stayed stable"),
    *[Column("\n".join(filter(None, (label, unit))), _property(key, form), per_system=True,
             note="density, D (self-diffusion), coord. (coordination number): mean±std over the stable members"
             if key == "density" else "") for key, (label, unit, form) in PROPERTIES.items()],
    Column("CAGO δ\n(flagged)\n↑/↓/=\nmoved/\ntrust Å", _cago, per_system=True,
           note="CAGO δ: structures whose σ_cal reached δ, of those pushed (flagged: e.g. fast, contact); below it ↑/↓/=: "
           "walks whose σ_cal went up, down, or that did not move (unpushed: no room below the validity limit, no limit, "
           "or no trust); below it moved/trust: the largest displacement of an atom from its start over the walks / the "
           "trust radius, Å (w: narrowed by the labelled walks of the test split; w!: they trust no displacement, nothing pushed)"),
    Column("hit", _hit, note="hit: mean true error / δ of the labelled CAGO structures that reached δ"),
)  # fmt: skip


def science_table(figures: Mapping[str, Any]) -> TextTable:
    """Per iteration (and system, when there are several): dataset, errors, stability, properties,
    CAGO; columns without a figure are left out, and stand-ins (test split, MD replicas) show only
    where the column they stand in for is empty."""
    several = len(figures["systems"]) > 1
    labels: list[str] = []
    cells: dict[str, list[str]] = {column.head: [] for column in SCIENCE_COLUMNS}
    for it in figures["iterations"]:
        systems = list(it["systems"].items()) or [("", None)]
        for index, (name, system) in enumerate(systems):
            labels.append(" ".join(filter(None, [iteration_label(it["iteration"]), name if several else ""])))
            for column in SCIENCE_COLUMNS:
                shown = column.per_system or index == 0
                cells[column.head].append(column.cell(it, system) if shown else "")
    filled = {head for head, column_cells in cells.items() if any(c not in ("", EMPTY) for c in column_cells)}
    columns = [c for c in SCIENCE_COLUMNS if c.head in filled and c.instead_of not in filled]
    heads = ["iter system" if several else "iter", *(c.head for c in columns)]
    rows = [[label, *(cells[c.head][k] for c in columns)] for k, label in enumerate(labels)]
    return heads, rows, [c.note for c in columns if c.note]
