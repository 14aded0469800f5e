"""Reference calculations (in-process, or prepare → program → collect) and the filter after them.

Plain task bodies (files in, files out), registered with their stage; :func:`cagoflow.apps.make_apps`
makes each a Parsl app.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ase import Atoms

from cagoflow.apps.commands import check_started, program_seconds, shell_command
from cagoflow.apps.tasks import (
    Outcome, TaskSpec, flatten, output, prepare_directory, read, run_task, stage_task, successful_models, trained_committee, write,
)
from cagoflow.campaign import CampaignConfig
from cagoflow.executors.site import SiteConfig
from cagoflow.records import TaskRecord, finished
from cagoflow.summaries import PostfilterSummary, PrefilterSummary


@dataclass(frozen=True)
class ReferencePlan:
    """One reference task: where it lives, which structure it labels (None: skipped), its settings."""

    spec: TaskSpec
    source: Path | None
    index: int
    settings: dict

    @property
    def inputs(self) -> list[Path]:
        return [] if self.source is None else [self.source]


def plan_reference(
    workdir: str, iteration: int, config: CampaignConfig, system: str, task: str, structures: TaskRecord, index: int,
    gate: TaskRecord | None,
) -> ReferencePlan:  # fmt: skip
    """The structure a reference task labels: skipped when CAGO made none or the pre-filter dropped it.

    ``structures`` is one record (its ``structures`` file holds many, ``index`` picks one) or
    a CAGO task's records (``index`` picks the record, whose file holds one structure).
    """
    root = Path(workdir)
    if isinstance(structures, (list, tuple)):
        structures, index = structures[index], 0
    spec = TaskSpec(root, "reference", iteration, task)
    role = "structure" if "structure" in structures.outputs else "structures"
    kept = gate is None or structures.task in PrefilterSummary.model_validate(gate.summary).kept
    if role not in structures.outputs or not kept:
        return ReferencePlan(spec, None, index, {"skipped": True})
    settings = {"index": index, "reference": config.reference.model_dump(mode="json"),
                "system": config.systems[system].model_dump(mode="json", include={"charge", "multiplicity"})}  # fmt: skip
    return ReferencePlan(spec, output(structures, role, root), index, settings)


def finish_reference(result, atoms: Atoms, directory: Path) -> Outcome:
    """Write the labelled structure (the hits of CAGO structures are measured in the post-filter)."""
    labelled = result.labelled()
    labelled.info.update({k: v for k, v in atoms.info.items() if k not in labelled.info})
    summary = {"status": result.status.value, "message": result.message, "seconds": result.wall_time}
    return Outcome(outputs={"labelled": write(directory / "labelled.extxyz", [labelled])}, summary=summary)


def _skipped(directory: Path) -> Outcome:
    return Outcome(summary={"skipped": True})


@stage_task("reference")
def _reference(
    workdir: str, iteration: int, config: CampaignConfig, system: str, task: str, structures: TaskRecord, index: int,
    gate: TaskRecord | None,
) -> TaskRecord:  # fmt: skip
    """Label one structure with an in-process engine (tblite, an ASE calculator).

    A failed or unconverged calculation is a result (recorded with its reason), not an error.
    """
    from cagoflow.engines import make_reference
    from cagoflow.engines.reference import ReferenceResult, ReferenceStatus

    plan = plan_reference(workdir, iteration, config, system, task, structures, index, gate)
    if plan.source is None:
        return run_task(plan.spec, [], plan.settings, _skipped)

    def body(directory: Path) -> Outcome:
        atoms = read(plan.source)[plan.index]
        if iteration < 0 and config.systems[system].labelled:  # labels given with the starting structures
            result = ReferenceResult(atoms, ReferenceStatus.CONVERGED, "given")
        else:
            result = make_reference(config.reference, config.systems[system]).compute(atoms)
        return finish_reference(result, atoms, directory)

    return run_task(plan.spec, plan.inputs, plan.settings, body)


@stage_task("reference")
def _prepare_reference(
    workdir: str, iteration: int, config: CampaignConfig, site: SiteConfig, system: str, task: str,
    structures: TaskRecord, index: int, gate: TaskRecord | None,
) -> dict:  # fmt: skip
    """Write an external engine's input (CP2K, pw.x); return the shell command (``true``: nothing to run)."""
    from cagoflow.engines import REFERENCE_PROGRAMS, make_file_reference
    from cagoflow.records import task_key

    plan = plan_reference(workdir, iteration, config, system, task, structures, index, gate)
    if plan.source is None or finished(plan.spec.directory, task_key(plan.inputs, plan.settings), Path(workdir)):
        return {"command": "true"}
    engine = make_file_reference(config.reference, config.systems[system])
    prepare_directory(plan.spec.directory)
    try:
        engine.write_input(read(plan.source)[plan.index], plan.spec.directory)
    except ValueError as exc:  # a structure the engine cannot describe: a failed calculation, recorded
        (plan.spec.directory / "engine.log").write_text(f"no input written: {exc}\n")
        (plan.spec.directory / "exit-status").write_text("1\n")
        return {"command": "true"}
    program = [[REFERENCE_PROGRAMS[config.reference.engine].program, *engine.arguments(plan.spec.directory)]]
    return {"command": shell_command(plan.spec.directory, program, site, "reference", "engine.log")}


@stage_task("reference")
def _collect_reference(
    workdir: str, iteration: int, config: CampaignConfig, system: str, task: str, structures: TaskRecord, index: int,
    gate: TaskRecord | None, prepared: dict, ran: int,
) -> TaskRecord:  # fmt: skip
    """Parse the external engine's output into a labelled structure or a failure record."""
    from cagoflow.engines import make_file_reference

    plan = plan_reference(workdir, iteration, config, system, task, structures, index, gate)
    if plan.source is None:
        return run_task(plan.spec, [], plan.settings, _skipped)

    def body(directory: Path) -> Outcome:
        atoms = read(plan.source)[plan.index]
        engine = make_file_reference(config.reference, config.systems[system])
        result = engine.read_result(atoms, directory, check_started(directory))
        return replace(finish_reference(result, atoms, directory), program_seconds=program_seconds(directory))

    return run_task(plan.spec, plan.inputs, plan.settings, body)


@stage_task("postfilter")
def _postfilter(
    workdir: str, iteration: int, config: CampaignConfig, system: str, references: Sequence[TaskRecord],
    members: Sequence[TaskRecord] = (), cago: Sequence[Sequence[TaskRecord]] = (),
) -> TaskRecord:  # fmt: skip
    """Drop labelled structures whose reference failed or has huge forces (reasons recorded);
    measure the hit of every converged CAGO reference against the δ and member subset its CAGO
    record names (one committee load, one prediction per member subset).

    ``references``: the system's reference tasks; ``members`` and ``cago`` (the records of each
    CAGO task): those of the iteration (none before iteration 0).
    """
    from cagoflow.cago import labelled_hits
    from cagoflow.filters import post_filter

    root = Path(workdir)
    spec = TaskSpec(root, "postfilter", iteration, system)
    walks = {r.task: r.summary for r in flatten(cago) if "subset" in r.summary}
    labelled = [r for r in references if "labelled" in r.outputs]
    files = [output(r, "labelled", root) for r in labelled]
    settings = config.filters.post.model_dump(mode="json")
    targets = {task: {"subset": walks[task]["subset"], "delta": walks[task].get("delta"), "reason": walks[task].get("reason")}
               for task in sorted(walks)}  # fmt: skip

    def body(directory: Path) -> Outcome:
        structures = [read(path)[0] for path in files]
        measured = [(atoms, targets[r.task], r.task) for atoms, r in zip(structures, labelled)
                    if r.summary.get("status") == "converged" and r.task in walks]  # fmt: skip
        if measured and members:
            committee = trained_committee(config, members, root)
            subsets = [tuple(summary["subset"]) for _, summary, _ in measured]
            deltas = [summary.get("delta") for _, summary, _ in measured]
            for (atoms, _, _), figures in zip(measured, labelled_hits(committee, [a for a, _, _ in measured], subsets, deltas)):
                atoms.info.update(figures)
        result = post_filter(structures, config.filters.post)
        kept = result.select(structures)
        reached = [atoms.info for atoms, target, _ in measured if target.get("reason") == "reached"]
        unreached = [atoms.info for atoms, target, _ in measured if target.get("reason") != "reached"]
        summary = PostfilterSummary(
            attempted=sum(not r.summary.get("skipped") for r in references),
            kept=len(kept),
            rejected={labelled[r.index].task: r.reason for r in result.rejected},
            hit_ratios=[info["hit_ratio"] for info in reached if "hit_ratio" in info],
            unreached_hit_ratios=[info["hit_ratio"] for info in unreached if "hit_ratio" in info],
            true_errors=[info["true_error"] for info in reached + unreached if "true_error" in info],
            true_error_by_task={task: atoms.info["true_error"] for atoms, _, task in measured if "true_error" in atoms.info},
        )
        return Outcome(outputs={"kept": write(directory / "kept.extxyz", kept)} if kept else {}, summary=summary.dump())

    inputs = files + successful_models(members, root)
    return run_task(spec, inputs, {**settings, "cago": targets}, body)
