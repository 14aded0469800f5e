"""Exploration: committee MD (in-process, or prepare → LAMMPS → collect) and the choice of CAGO's starts.

Plain task bodies (files in, files out), registered with their stage; :func:`cagoflow.apps.make_apps`
makes each a Parsl app.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from cagoflow.apps.commands import check_started, program_seconds, shell_command
from cagoflow.apps.tasks import (
    Outcome, TaskSpec, output, prepare_directory, read, run_task, seed_for, stage_task, structure_system, successful_models, trained_committee, write, yaml_text,
)
from cagoflow.campaign import CampaignConfig
from cagoflow.executors.site import SiteConfig
from cagoflow.records import TaskRecord, finished
from cagoflow.summaries import MDSummary, SampleSummary
from cagoflow.stages import cago_slot, md_task


@dataclass(frozen=True)
class MDPlan:
    """One committee-MD task: where it lives, what it is keyed by, its settings and stability checks."""

    spec: TaskSpec
    inputs: list[Path]
    settings: dict
    start: Path
    options: dict

    def start_structure(self) -> Atoms:
        return read(self.start)[0]

    @property
    def committee_file(self) -> Path:
        """The committee file a LAMMPS run of this task reads (:mod:`cagoflow.models`)."""
        return self.spec.directory / "committee.yaml"


def plan_md(workdir: str, iteration: int, config: CampaignConfig, system: str, replica: int, members: Sequence[TaskRecord]) -> MDPlan:
    """The MD task of one replica from the system's first starting structure (either engine)."""
    root = Path(workdir)
    spec = TaskSpec(root, "md", iteration, md_task(system, replica))
    stage = config.md_stage(iteration)
    start = config.systems[system].structures
    options = dict(seed=seed_for(config, "md", iteration, system, replica) % 2**31, **config.md.check_arguments())
    settings = {"stage": stage.model_dump(mode="json"), "md": config.md.model_dump(mode="json"), "seed": config.seed}
    return MDPlan(spec, [start, *successful_models(members, root)], settings, start, options)


def md_outcome(result, system: str, directory: Path, seconds: float = 0.0) -> Outcome:
    """The frames of an MD result (either engine), labelled with their system."""
    for atoms in result.frames:
        atoms.info.update(system=system)
    frames = write(directory / "frames.extxyz", result.frames) if result.frames else None
    summary = MDSummary(stable=result.stable, reason=result.reason, frames=len(result.frames), steps=result.steps_done)
    return Outcome(outputs={} if frames is None else {"frames": frames}, summary=summary.dump(), program_seconds=seconds)


@stage_task("md")
def _md(workdir: str, iteration: int, config: CampaignConfig, system: str, replica: int, members: Sequence[TaskRecord]) -> TaskRecord:
    """Committee MD of one replica in this process (the ASE engine)."""
    from cagoflow.engines.ase_md import run_md

    plan = plan_md(workdir, iteration, config, system, replica, members)
    stage = config.md_stage(iteration)

    def body(directory: Path) -> Outcome:
        committee = trained_committee(config, members, Path(workdir))
        return md_outcome(run_md(plan.start_structure(), committee, stage, **plan.options), system, directory)

    return run_task(plan.spec, plan.inputs, plan.settings, body)


#: Folder of a LAMMPS task's run (inputs, log, dump), inside the task directory.
LAMMPS_RUN = "lammps"


def lammps_md(plan: MDPlan, config: CampaignConfig, iteration: int, mode: str):
    """The LAMMPS template of an MD task whose mode ("native" or "external") is known."""
    from cagoflow.engines.lammps import LammpsMD

    return LammpsMD(config.md_stage(iteration), plan.committee_file, mode=mode, **plan.options)


@stage_task("md")
def _prepare_md(
    workdir: str, iteration: int, config: CampaignConfig, site: SiteConfig, system: str, replica: int, members: Sequence[TaskRecord]
) -> dict:
    """Write a LAMMPS run (committee file, data file, input); return the shell command that runs
    it as the site starts LAMMPS (``true`` when the task is done). Its mode is chosen here, from
    the pair styles of the site's LAMMPS: the backend's own pair style where it has one, else
    ``fix external`` into the committee (a Python driver)."""
    from cagoflow.apps.commands import site_program
    from cagoflow.engines.lammps import SCREEN_FILE, lammps_template
    from cagoflow.io import atomic_write_text
    from cagoflow.records import task_key

    root = Path(workdir)
    plan = plan_md(workdir, iteration, config, system, replica, members)
    key = task_key(plan.inputs, plan.settings)
    if finished(plan.spec.directory, key, root) is not None:
        return {"key": key, "command": "true", "mode": "none"}
    prepare_directory(plan.spec.directory)
    models = [str(path) for path in successful_models(members, root)]
    atomic_write_text(plan.committee_file, yaml_text({"backend": config.committee.backend, "models": models}))
    template = lammps_template(
        plan.committee_file, config.md_stage(iteration), command=site_program(site, "md", "lmp"),
        **plan.options,
    )  # fmt: skip
    directory = plan.spec.directory / LAMMPS_RUN
    template.write_input(directory, plan.start_structure())
    command = shell_command(directory, [template.argv()], site, "md", SCREEN_FILE)
    return {"key": key, "command": command, "mode": template.mode}


@stage_task("md")
def _collect_md(
    workdir: str, iteration: int, config: CampaignConfig, system: str, replica: int, prepared: dict, ran: int,
    members: Sequence[TaskRecord],
) -> TaskRecord:  # fmt: skip
    """Read the frames LAMMPS left (or why it stopped) and record them."""
    plan = plan_md(workdir, iteration, config, system, replica, members)

    def body(directory: Path) -> Outcome:
        run = directory / LAMMPS_RUN
        code = check_started(run)
        result = lammps_md(plan, config, iteration, prepared["mode"]).read_result(run, plan.start_structure())
        if code != 0 and result.stable:
            result = replace(result, stable=False, reason=f"LAMMPS exited with code {code}")
        return md_outcome(result, system, directory, program_seconds(run))

    return run_task(plan.spec, plan.inputs, plan.settings, body)


@stage_task("sample")
def _sample(
    workdir: str, iteration: int, config: CampaignConfig, system: str, split: TaskRecord, calibration: TaskRecord,
    md: Sequence[TaskRecord], members: Sequence[TaskRecord],
) -> TaskRecord:  # fmt: skip
    """Pick the structures CAGO starts from: training-set structures or MD frames of the system
    (``md``: the system's MD tasks of this iteration, none when CAGO starts from the training set).

    With ``cago.no_room: redraw``, a pick that CAGO would not push (a relative δ, factor × its
    σ_cal under the calibration of the member subset its CAGO slot uses, above that
    calibration's validity limit; or no limit at all) is replaced by the next candidate that
    leaves room (each start's ``info["start"]`` says drawn, redrawn or no_room). The trust radius of the CAGO walks is derived here from
    the MD frames, narrowed by the labelled CAGO structures of the test split where they judge it
    (:meth:`cagoflow.cago.TrustRegion.narrowed`; ``trust_radius`` Å and ``trust_source`` in the summary).
    """
    from cagoflow.geometry import thermal_displacement
    from cagoflow.hashing import structure_hash
    from cagoflow.sampling import max_uncertainty_frames, random_frames, starts_with_room, structure_force_uncertainty
    from cagoflow.walk_validity import WalkCheck

    root = Path(workdir)
    spec = TaskSpec(root, "sample", iteration, system)
    source = config.cago_source(iteration)
    if source.source == "training":
        inputs = [output(split, f"train-{m}", root) for m in range(config.committee.size)]
    else:
        inputs = [output(r, "frames", root) for r in md if "frames" in r.outputs]
    redraw = source.optimize and config.cago.no_room == "redraw"
    needs_committee = redraw or config.sampling.strategy == "max_uncertainty"
    laws = [output(calibration, name, root) for name in sorted(calibration.outputs) if name.startswith("subset")] if redraw else []
    models = successful_models(members, root) if needs_committee else []
    count = config.n_samples(iteration)
    trusted = config.cago.trust_region is not None and source.optimize
    walk_files = [output(calibration, "walks", root)] if trusted and "walks" in calibration.outputs else []
    settings = {"source": source.model_dump(mode="json"), "strategy": config.sampling.strategy,
                "uncertainty": config.sampling.uncertainty, "n": count, "redraw": redraw,
                "cago": config.cago.model_dump(mode="json", include={"delta", "trust_region"})}  # fmt: skip

    def body(directory: Path) -> Outcome:
        candidates, seen, runs = [], set(), []
        for path in inputs:
            frames = [atoms for atoms in read(path) if structure_system(atoms) in (system, None)]
            runs.append(thermal_displacement(frames))
            for atoms in frames:
                key = structure_hash(atoms)
                if key not in seen:
                    seen.add(key)
                    candidates.append(atoms)
        if not candidates:
            return Outcome(status="failed", summary={"message": f"no {source.source} structures of system {system}"})
        committee = trained_committee(config, members, root) if needs_committee else None
        if config.sampling.strategy == "max_uncertainty":
            uncertainty = structure_force_uncertainty(committee.predict(candidates), config.sampling.uncertainty)
            order = max_uncertainty_frames(uncertainty, len(candidates))
            picks, alternates = order[:count], order[count:]
        else:
            picks = random_frames(len(candidates), count, seed_for(config, "sample", iteration, system))
            rest = [c for c in range(len(candidates)) if c not in set(picks)]
            shuffled = np.random.default_rng(seed_for(config, "redraw", iteration, system)).permutation(len(rest))
            alternates = [rest[i] for i in shuffled]
        room = room_test(config, root, calibration, committee, candidates, system) if redraw else (lambda slot, c: True)
        choices = starts_with_room(picks, alternates, room)
        starts = []
        for choice in choices:
            atoms = candidates[choice.candidate].copy()
            atoms.calc = None
            atoms.info = {"system": system, "parent": structure_hash(candidates[choice.candidate]),
                          "source": source.source, "start": choice.how}  # fmt: skip
            starts.append(atoms)
        displacements = [d for d in runs if d]
        thermal = float(np.mean(displacements)) if displacements else None
        radius, radius_source = None, None
        if trusted:
            walks = WalkCheck.from_dict(json.loads(walk_files[0].read_text())) if walk_files else None
            radius, radius_source = config.cago.trust_region.narrowed(config.cago.trust_region.radius_for(thermal, len(candidates)), walks)
        summary = SampleSummary(
            count=len(starts),
            redrawn=sum(c.how == "redrawn" for c in choices),
            without_room=sum(c.how == "no_room" for c in choices),
            thermal_displacement=thermal,
            trust_radius=radius,
            trust_source=radius_source,
        )
        return Outcome(outputs={"starts": write(directory / "starts.extxyz", starts)}, summary=summary.dump())

    subsets = [output(calibration, "subsets", root)] if redraw else []
    return run_task(spec, [*inputs, *laws, *subsets, *models, *walk_files], settings, body)


def room_test(
    config: CampaignConfig, root: Path, calibration: TaskRecord, committee, candidates: Sequence[Atoms], system: str
) -> Callable[[int, int], bool]:
    """``has_room(slot, candidate)``: whether CAGO slot ``slot`` of ``system`` would push the
    candidate (:func:`cagoflow.cago.choose_delta` under the calibration of the member subset
    that slot uses; one prediction per subset, made when first asked)."""
    from cagoflow.cago import choose_delta
    from cagoflow.calibration import CommitteeCalibration
    from cagoflow.committee import force_sigma_hat

    subsets = json.loads(output(calibration, "subsets", root).read_text())
    known: dict[int, tuple[float | None, list[float]]] = {}

    def limit_and_sigma(index: int) -> tuple[float | None, list[float]]:
        if index not in known:
            calibrated = CommitteeCalibration.load(output(calibration, f"subset-{index}", root)).for_cago()
            prediction = committee.subset(subsets["subsets"][index]).predict(list(candidates))
            sigma = [float(np.sqrt(np.mean(calibrated.law(force_sigma_hat(prediction.structure_forces(c))) ** 2)))
                     for c in range(len(candidates))]  # fmt: skip
            known[index] = (calibrated.validity_limit, sigma)
        return known[index]

    def has_room(slot: int, candidate: int) -> bool:
        limit, sigma = limit_and_sigma(subsets["tasks"][cago_slot(system, slot)])
        return choose_delta(sigma[candidate], config.cago, limit).used is not None

    return has_room
