"""The stage tasks of one active-learning iteration, as plain functions (files in, files out).

Each function is a thin shell: it reads its input files, calls the science in ``cagoflow``,
writes its outputs into its own task directory and returns a small :class:`TaskRecord`.
:mod:`cagoflow.apps` wraps them as Parsl apps (``f = python_app(_f, executors=[...])``);
they are unit-testable without Parsl. Arguments are paths, the campaign settings (a few KB)
and upstream records — never arrays or lists of structures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms

from cagoflow.apps.commands import check_started, program_seconds, shell_command
from cagoflow.apps.tasks import Outcome, StageFailed, TaskSpec, output, prepare_directory, record_outcome, run_task
from cagoflow.campaign import CampaignConfig
from cagoflow.executors.site import SiteConfig
from cagoflow.records import TaskRecord, finished
from cagoflow.stages import STAGE_BY_NAME

DATASET = "dataset"

#: Every task body by app name (its name without the leading '_'): (stage, function). Filled by
#: :func:`stage_task`; :func:`cagoflow.apps.make_apps` makes one Parsl app of each.
TASKS: dict[str, tuple[str, Callable[..., Any]]] = {}


def stage_task(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a task body as an app of ``stage`` (a name of :data:`cagoflow.stages.STAGE_ORDER`)."""
    if stage not in STAGE_BY_NAME:
        raise ValueError(f"unknown stage '{stage}'")

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        TASKS[function.__name__.removeprefix("_")] = (stage, function)
        return function

    return register


def seed_for(config: CampaignConfig, *labels: int | str) -> int:
    """A seed derived from the campaign seed and labels (iteration, system, task)."""
    from cagoflow.hashing import settings_hash

    return int(settings_hash([config.seed, *labels])[:8], 16)


def successful_models(members: Sequence[TaskRecord], workdir: Path) -> list[Path]:
    return [output(record, "model", workdir) for record in members if record.status == "done"]


def load_committee(config: CampaignConfig, members: Sequence[TaskRecord], workdir: Path):
    from cagoflow.backends import get_backend

    return get_backend(config.committee.backend).load(successful_models(members, workdir))


def system_of(atoms: Atoms) -> str | None:
    """The system a structure belongs to: from its dataset provenance, or its own ``info``."""
    from cagoflow.dataset import PROVENANCE_KEY

    provenance = atoms.info.get(PROVENANCE_KEY) or {}
    return (provenance.get("extra") or {}).get("system") or atoms.info.get("system")


def yaml_text(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def read(path: Path) -> list[Atoms]:
    from cagoflow.io import read_structures

    return read_structures(path)


def write(path: Path, structures: Sequence[Atoms]) -> Path:
    from cagoflow.io import write_structures

    return write_structures(path, structures)


# --- initial structures -----------------------------------------------------------------------


@stage_task("initial")
def _initial(workdir: str, config: CampaignConfig, system: str) -> TaskRecord:
    """The starting structures of a system plus rattled copies, to be labelled before iteration 0."""
    spec = TaskSpec(Path(workdir), "initial", -1, system)
    settings = config.systems[system]

    def body(directory: Path) -> Outcome:
        structures = read(settings.structures)
        rng = np.random.default_rng(seed_for(config, "initial", system))
        copies = []
        for k in range(settings.initial_samples):
            atoms = structures[k % len(structures)].copy()
            atoms.rattle(stdev=settings.initial_rattle, seed=int(rng.integers(2**31)))
            copies.append(atoms)
        starts = [atoms.copy() for atoms in structures] + copies
        for atoms in starts:
            atoms.calc = None if not settings.labelled else atoms.calc
            atoms.info.update(system=system)
        return Outcome(outputs={"structures": write(directory / "structures.extxyz", starts)}, summary={"count": len(starts)})

    return run_task(spec, [settings.structures], settings.model_dump(mode="json", exclude={"structures"}), body)


def initial_count(config: CampaignConfig, system: str) -> int:
    """How many structures :func:`_initial` writes for ``system``."""
    settings = config.systems[system]
    return len(read(settings.structures)) + settings.initial_samples


# --- split and training -------------------------------------------------------------------------


@stage_task("split")
def _split(workdir: str, iteration: int, config: CampaignConfig, merged: TaskRecord) -> TaskRecord:
    """Test set and per-member bootstrap splits of the dataset as the previous merge left it.

    The snapshot names labelled structures (:func:`cagoflow.hashing.labelled_hash`); the draws
    use their geometry (:func:`cagoflow.hashing.structure_hash`, as the routed CAGO structures
    do), so a structure relabelled by a reference run again keeps its place in the splits and
    only the members that train or validate on it are retrained.
    """
    from cagoflow.dataset import Dataset, make_splits_for_hashes
    from cagoflow.hashing import structure_hash

    root = Path(workdir)
    spec = TaskSpec(root, "split", iteration, "dataset")
    snapshot = output(merged, "snapshot", root)
    routed = [output(merged, "routed", root)] if "routed" in merged.outputs else []
    settings = {"members": config.committee.size, "seed": config.seed, **config.dataset.model_dump(mode="json")}

    def body(directory: Path) -> Outcome:
        hashes = json.loads(snapshot.read_text())
        fixed = {h for path in routed for h in json.loads(path.read_text())}
        dataset = Dataset.open(root / DATASET)
        position = {entry.hash: k for k, entry in enumerate(dataset.entries)}
        structures = dataset.structures([position[h] for h in hashes])
        splits = make_splits_for_hashes(
            [structure_hash(atoms) for atoms in structures],
            config.committee.size,
            config.seed,
            test_fraction=config.dataset.test_fraction,
            train_fraction=config.dataset.train_fraction,
            validation_fraction=config.dataset.validation_fraction,
            min_test=config.dataset.min_test,
            fixed_test=fixed,
        )
        outputs = {"test": write(directory / "test.extxyz", [structures[i] for i in splits.test])}
        for m, member in enumerate(splits.members):
            outputs[f"train-{m}"] = write(directory / f"member-{m:02d}-train.extxyz", [structures[i] for i in member.train])
            outputs[f"validation-{m}"] = write(
                directory / f"member-{m:02d}-validation.extxyz", [structures[i] for i in member.validation or member.train[:1]]
            )
        splits.save(directory / "splits.json")
        test = len(splits.test)
        summary = {"dataset": len(hashes), "test": test, "test_from_cago": len(fixed & set(splits.test_hashes))}
        if test < config.dataset.min_test:
            summary["warning"] = (f"{test} test structures (dataset.min_test = {config.dataset.min_test}): too few to judge "
                                  "the calibration out of sample until the dataset grows")  # fmt: skip
        return Outcome(outputs=outputs, summary=summary)

    return run_task(spec, [snapshot, *routed], settings, body)


def training_spec(workdir: str, iteration: int, member: int) -> TaskSpec:
    return TaskSpec(Path(workdir), "train", iteration, f"member-{member:02d}")


@stage_task("train")
def _prepare_training(
    workdir: str, iteration: int, config: CampaignConfig, site: SiteConfig, member: int, split: TaskRecord,
    previous: TaskRecord | None,
) -> dict:  # fmt: skip
    """Write the trainer's input; return the shell command to run (``true`` when already trained).

    The command runs under ``flock`` on the task directory, so a trainer left running by a
    killed driver finishes (or dies) before a new one starts in the same place; a trainer that
    finds a checkpoint there continues from it. A member that failed in an earlier run (a crash,
    a lost node, a NaN loss) is trained again: its failure may have been the site's, not the data's.
    """
    from cagoflow.backends import TrainingSettings, get_backend
    from cagoflow.records import task_key

    root = Path(workdir)
    spec = training_spec(workdir, iteration, member)
    train_file, validation_file = output(split, f"train-{member}", root), output(split, f"validation-{member}", root)
    init_model = None
    if config.committee.fine_tune and previous is not None and previous.status == "done":
        init_model = output(previous, "model", root)
    settings = TrainingSettings(
        steps=config.training_steps(iteration),
        seed=seed_for(config, "train", iteration, member) % 2**31,
        type_map=tuple(sorted({s for atoms in read(train_file) for s in atoms.get_chemical_symbols()})),
        preset=config.committee.preset,
        hyperparameters=config.committee.hyperparameters_at(iteration),
        init_model=init_model,
    )
    inputs = [train_file, validation_file] + ([init_model] if init_model else [])
    key_settings = {"backend": config.committee.backend, **{k: str(v) for k, v in vars(settings).items()}}
    key = task_key(inputs, key_settings)
    backend = config.committee.backend
    if trained(spec.directory, key, root) is not None:
        return {"key": key, "command": "true", "backend": backend}
    prepare_directory(spec.directory)
    commands = get_backend(backend).write_training_input(train_file, validation_file, spec.directory, settings)
    return {"key": key, "command": shell_command(spec.directory, commands, site, "train", "train.log"), "backend": backend}


def trained(directory: Path, key: str, workdir: Path) -> TaskRecord | None:
    """The record of a member trained successfully with this key (a failed one is not reused)."""
    record = finished(directory, key, workdir)
    return record if record is not None and record.status == "done" else None


def _run_command(
    prepared: dict, stdout: str | None = None, stderr: str | None = None, parsl_resource_specification: dict | None = None
) -> str:
    """Bash app body: the prepared command (its exit status goes to a file, never raised).

    ``parsl_resource_specification`` (nodes, ranks) is read by Parsl's MPIExecutor, which puts
    the matching launcher line into ``$PARSL_MPI_PREFIX``."""
    return prepared["command"]


@stage_task("train")
def _collect_training(workdir: str, iteration: int, member: int, prepared: dict, ran: int) -> TaskRecord:
    """Read the trained model (or the failure, with the trainer's last lines) and record it."""
    from cagoflow.backends import get_backend
    from cagoflow.io import log_tail
    from cagoflow.records import write_record

    root = Path(workdir)
    spec = training_spec(workdir, iteration, member)
    done = trained(spec.directory, prepared["key"], root)
    if done is not None:
        return done
    code = check_started(spec.directory)
    if code != 0:
        status, model = "failed", None
        summary = {"message": f"the trainer exited with code {code}: {log_tail(spec.directory / 'train.log', 5)}"}
    else:
        result = get_backend(prepared["backend"]).read_training_result(spec.directory)
        status = "done" if result.status == "success" else "failed"
        model, summary = result.model, {"message": result.message, **dict(result.metrics)}
    record = TaskRecord(
        stage="train",
        task=spec.task,
        iteration=iteration,
        key=prepared["key"],
        status=status,
        outputs={} if model is None else {"model": str(Path(model).resolve().relative_to(root))},
        summary=summary,
        seconds=program_seconds(spec.directory),
    )
    return write_record(spec.directory, record, root)


# --- calibration ---------------------------------------------------------------------------------


def cago_task_names(config: CampaignConfig, iteration: int) -> list[tuple[str, int]]:
    """(system, index) of every CAGO task of an iteration, in a fixed order."""
    return [(system, k) for system in sorted(config.systems) for k in range(config.n_samples(iteration))]


@stage_task("calibrate")
def _calibrate(workdir: str, iteration: int, config: CampaignConfig, split: TaskRecord, *members: TaskRecord) -> TaskRecord:
    """Calibrate the committee on the test set, and every member subset CAGO will use.

    Fewer successfully trained members than ``committee.min_trained`` stops the iteration.
    """
    from cagoflow.calibration import calibrate_committee
    from cagoflow.io import atomic_write_json
    from cagoflow.sampling import cago_subsets

    root = Path(workdir)
    spec = TaskSpec(root, "calibrate", iteration, "committee")
    models = successful_models(members, root)
    failed = [record.task for record in members if record.status != "done"]
    if len(models) < config.committee.min_trained:
        reasons = "; ".join(f"{r.task}: {r.summary.get('message', '')}"[:300] for r in members if r.status != "done")
        raise StageFailed(
            f"iteration {iteration}: only {len(models)} of {len(members)} members trained, fewer than "
            f"committee.min_trained = {config.committee.min_trained} ({reasons})"
        )
    test_file = output(split, "test", root)
    training_files = [output(split, f"train-{m}", root) for m in range(config.committee.size)]
    subset_size = min(config.cago_subset(iteration), len(models))
    settings = {"subset": subset_size, "seed": config.seed, "n_bins": config.calibration.n_bins}

    def body(directory: Path) -> Outcome:
        committee = load_committee(config, members, root)
        references = read(test_file)
        training = [atoms for path in training_files for atoms in read(path)]
        prediction = committee.predict(references)
        full = calibrate_committee(prediction, references, training=training)
        outputs = {"calibration": full.save(directory / "calibration.json")}
        seeds = {f"{system}/{k}": seed_for(config, "subset", iteration, system, k) for system, k in cago_task_names(config, iteration)}
        chosen = cago_subsets(len(models), subset_size, seeds)
        subset_limits = []
        for index, subset in enumerate(chosen.subsets):
            calibration = calibrate_committee(prediction, references, members=subset, training=training)
            outputs[f"subset-{index}"] = calibration.save(directory / f"calibration-subset-{index}.json")
            subset_limits.append(calibration.force_validity_limit)
        subsets = {"tasks": chosen.tasks, "subsets": chosen.subsets}
        outputs["subsets"] = atomic_write_json(directory / "subsets.json", subsets)
        mean_forces = prediction.forces.mean(0)
        reference_forces = np.concatenate([atoms.get_forces() for atoms in references])
        summary = {
            "members": len(models),
            "failed_members": failed,
            "a": full.forces.law.a,
            "b": full.forces.law.b,
            "validity_limit": full.force_validity_limit,
            "subset_validity_limits": subset_limits,
            "rms_z_out_of_sample": None if full.forces.diagnostics.out_of_sample is None
            else full.forces.diagnostics.out_of_sample.std_r,
            "test_force_rmse": float(np.sqrt(np.mean((mean_forces - reference_forces) ** 2))),
            "test_structures": len(references),
            "calibration_points": full.n_atoms,
            "contact_distances": full.contact_distances,
        }
        return Outcome(outputs=outputs, summary=summary)

    return run_task(spec, [test_file, *training_files, *models], settings, body)


# --- MD and sampling ------------------------------------------------------------------------------


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
    spec = TaskSpec(root, "md", iteration, f"{system}-{replica:02d}")
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
    summary = {"stable": result.stable, "reason": result.reason, "frames": len(result.frames), "steps": result.steps_done}
    return Outcome(outputs={} if frames is None else {"frames": frames}, summary=summary, program_seconds=seconds)


@stage_task("md")
def _md(workdir: str, iteration: int, config: CampaignConfig, system: str, replica: int, *members: TaskRecord) -> TaskRecord:
    """Committee MD of one replica in this process (the ASE engine)."""
    from cagoflow.engines.ase_md import run_md

    plan = plan_md(workdir, iteration, config, system, replica, members)
    stage = config.md_stage(iteration)

    def body(directory: Path) -> Outcome:
        committee = load_committee(config, members, Path(workdir))
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
    workdir: str, iteration: int, config: CampaignConfig, site: SiteConfig, system: str, replica: int, *members: TaskRecord
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
    *members: TaskRecord,
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
    *md_and_members: TaskRecord,
) -> TaskRecord:  # fmt: skip
    """Pick the structures CAGO starts from: training-set structures or MD frames of the system.

    With ``cago.no_room: redraw``, a pick that CAGO would not push (a relative δ, factor × its
    σ_cal under the calibration of the member subset its CAGO slot uses, above that
    calibration's validity limit; or no limit at all) is replaced by the next candidate that
    leaves room (each start's ``info["start"]`` says drawn, redrawn or no_room). The trust radius of the CAGO walks is derived here from
    the MD frames (``trust_radius`` in the summary, Å).
    """
    from cagoflow.geometry import thermal_displacement
    from cagoflow.hashing import structure_hash
    from cagoflow.sampling import max_uncertainty_frames, random_frames, starts_with_room, structure_force_uncertainty

    root = Path(workdir)
    spec = TaskSpec(root, "sample", iteration, system)
    source = config.cago_source(iteration)
    md_records = [r for r in md_and_members if r.stage == "md"]
    members = [r for r in md_and_members if r.stage == "train"]
    if source.source == "training":
        inputs = [output(split, f"train-{m}", root) for m in range(config.committee.size)]
    else:
        inputs = [output(r, "frames", root) for r in md_records if "frames" in r.outputs]
    redraw = source.optimize and config.cago.no_room == "redraw"
    needs_committee = redraw or config.sampling.strategy == "max_uncertainty"
    laws = [output(calibration, name, root) for name in sorted(calibration.outputs) if name.startswith("subset")] if redraw else []
    models = successful_models(members, root) if needs_committee else []
    count = config.n_samples(iteration)
    settings = {"source": source.model_dump(mode="json"), "strategy": config.sampling.strategy,
                "uncertainty": config.sampling.uncertainty, "n": count, "redraw": redraw,
                "cago": config.cago.model_dump(mode="json", include={"delta", "trust_region"})}  # fmt: skip

    def body(directory: Path) -> Outcome:
        candidates, seen, runs = [], set(), []
        for path in inputs:
            frames = [atoms for atoms in read(path) if system_of(atoms) in (system, None)]
            runs.append(thermal_displacement(frames))
            for atoms in frames:
                key = structure_hash(atoms)
                if key not in seen:
                    seen.add(key)
                    candidates.append(atoms)
        if not candidates:
            return Outcome(status="failed", summary={"message": f"no {source.source} structures of system {system}"})
        committee = load_committee(config, members, root) if needs_committee else None
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
        summary = {
            "count": len(starts),
            "redrawn": sum(c.how == "redrawn" for c in choices),
            "without_room": sum(c.how == "no_room" for c in choices),
            "thermal_displacement": float(np.mean(displacements)) if displacements else None,
        }
        if config.cago.trust_region is not None and source.optimize:
            summary["trust_radius"] = config.cago.trust_region.radius_for(summary["thermal_displacement"], len(candidates))
        return Outcome(outputs={"starts": write(directory / "starts.extxyz", starts)}, summary=summary)

    subsets = [output(calibration, "subsets", root)] if redraw else []
    return run_task(spec, [*inputs, *laws, *subsets, *models], settings, body)


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
        limit, sigma = limit_and_sigma(subsets["tasks"][f"{system}/{slot}"])
        return choose_delta(sigma[candidate], config.cago, limit).used is not None

    return has_room


# --- CAGO and the filters ----------------------------------------------------------------------


def cago_groups(config: CampaignConfig, iteration: int) -> list[tuple[int, int]]:
    """(first index, count) of the structures each CAGO task of a system optimises together."""
    total, size = config.n_samples(iteration), config.cago.structures_per_task
    return [(first, min(size, total - first)) for first in range(0, total, size)]


@stage_task("cago")
def _cago(
    workdir: str, iteration: int, config: CampaignConfig, system: str, first: int, count: int, sample: TaskRecord,
    calibration: TaskRecord, *members: TaskRecord,
) -> list[TaskRecord]:  # fmt: skip
    """Push sampled structures ``first .. first+count-1`` to δ, those of one member subset
    together (one committee call per round), each with its subset's calibration.

    Every structure keeps its own directory and record, keyed by its own inputs, so a resumed
    campaign redoes only the structures that had not finished.
    """
    from cagoflow.cago import run_cago_batch
    from cagoflow.calibration import CommitteeCalibration
    from cagoflow.records import task_key

    root = Path(workdir)
    specs = [TaskSpec(root, "cago", iteration, f"{system}-{k:03d}") for k in range(first, first + count)]
    available = sample.summary.get("count", 0) if sample.status == "done" else 0
    records: dict[int, TaskRecord] = {}
    pending: dict[int, list[tuple[int, TaskSpec, str]]] = {}
    if available > first:
        subsets = json.loads(output(calibration, "subsets", root).read_text())
        starts = output(sample, "starts", root)
        models = successful_models(members, root)
        source = config.cago_source(iteration)
    for k, spec in zip(range(first, first + count), specs):
        if k >= available:
            records[k] = run_task(spec, [], {"skipped": True}, lambda directory: Outcome(summary={"skipped": True}))
            continue
        subset_index = subsets["tasks"][f"{system}/{k}"]
        settings = {"index": k, "subset": subsets["subsets"][subset_index], "optimize": source.optimize,
                    "trust_radius": sample.summary.get("trust_radius"),
                    "cago": config.cago.model_dump(mode="json", exclude={"structures_per_task"})}  # fmt: skip
        key = task_key([starts, output(calibration, f"subset-{subset_index}", root), *models], settings)
        done = finished(spec.directory, key, root)
        if done is not None:
            records[k] = done
        else:
            prepare_directory(spec.directory)
            pending.setdefault(subset_index, []).append((k, spec, key))
    structures = read(starts) if pending else []
    committee = load_committee(config, members, root) if pending and source.optimize else None
    for subset_index, tasks in pending.items():
        subset = tuple(subsets["subsets"][subset_index])
        chosen = [structures[k] for k, _, _ in tasks]
        begin = time.perf_counter()
        if committee is not None:
            law = CommitteeCalibration.load(output(calibration, f"subset-{subset_index}", root)).for_cago()
            results = run_cago_batch(chosen, committee.subset(subset), law, config.cago, trust_radius=sample.summary.get("trust_radius"))
            finals = [result.atoms for result in results]
            summaries = [{**result.summary(), "action": action_of(result.delta, config.cago.no_room)} for result in results]
        else:  # baselines: the sampled frames go to the reference as they are (a δ only when absolute)
            finals = [atoms.copy() for atoms in chosen]
            delta = config.cago.delta if isinstance(config.cago.delta, float) else None
            summaries = [{"reason": "not optimised", "delta": delta, "action": "sampled"} for _ in chosen]
        seconds = (time.perf_counter() - begin) / len(tasks)
        for (k, spec, key), atoms, start, summary in zip(tasks, finals, chosen, summaries):
            atoms.info.update({name: value for name, value in start.info.items() if name not in atoms.info})
            summary = {**summary, "subset": list(subset), "start": start.info.get("start", "drawn")}
            written = {} if summary["action"] == "dropped" else {"structure": write(spec.directory / "structure.extxyz", [atoms])}
            records[k] = record_outcome(spec, key, Outcome(outputs=written, summary=summary), seconds)
    return [records[k] for k in range(first, first + count)]


def action_of(delta: float | None, no_room: str) -> str:
    """What a campaign does with a CAGO result: "pushed" (it had a δ), else by the ``no_room``
    policy "dropped", or "sampled" (the frame goes to the reference as it is; also when a
    redraw found no start with room)."""
    if delta is not None:
        return "pushed"
    return "dropped" if no_room == "drop" else "sampled"


def flatten(records: Sequence[TaskRecord | Sequence[TaskRecord]]) -> list[TaskRecord]:
    """Records and lists of records (a CAGO task's), as one list."""
    return [r for item in records for r in (item if isinstance(item, (list, tuple)) else [item])]


@stage_task("prefilter")
def _prefilter(
    workdir: str, iteration: int, config: CampaignConfig, system: str, *cago_and_members: TaskRecord | list[TaskRecord]
) -> TaskRecord:
    """Drop CAGO structures with huge committee-mean forces or atoms too close (reasons recorded)."""
    from cagoflow.filters import pre_filter

    root = Path(workdir)
    spec = TaskSpec(root, "prefilter", iteration, system)
    records = flatten(cago_and_members)
    cagos = [r for r in records if r.stage == "cago" and "structure" in r.outputs]
    members = [r for r in records if r.stage == "train"]
    files = [output(r, "structure", root) for r in cagos]
    settings = config.filters.pre.model_dump(mode="json")

    def body(directory: Path) -> Outcome:
        structures = [read(path)[0] for path in files]
        if not structures:
            return Outcome(summary={"kept": [], "rejected": {}})
        prediction = load_committee(config, members, root).predict(structures)
        mean_forces = [prediction.structure_forces(k).mean(0) for k in range(len(structures))]
        result = pre_filter(structures, mean_forces, config.filters.pre)
        kept = [cagos[k].task for k in result.kept]
        rejected = {cagos[r.index].task: r.reason for r in result.rejected}
        return Outcome(summary={"kept": kept, "rejected": rejected})

    return run_task(spec, files + successful_models(members, root), settings, body)


# --- reference, post-filter, merge ----------------------------------------------------------------


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
    kept = gate is None or structures.task in gate.summary.get("kept", [])
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
    """Write an external engine's input (CP2K); return the shell command (``true``: nothing to run)."""
    from cagoflow.engines import make_file_reference
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
    program = [["cp2k.psmp", *engine.arguments(plan.spec.directory)]]
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
    workdir: str, iteration: int, config: CampaignConfig, system: str, *records: TaskRecord | list[TaskRecord]
) -> TaskRecord:
    """Drop labelled structures whose reference failed or has huge forces (reasons recorded);
    measure the hit of every converged CAGO reference against the δ and member subset its CAGO
    record names (one committee load, one prediction per member subset).

    ``records``: the reference records, the members' and the CAGO tasks' (none before iteration 0).
    """
    from cagoflow.cago import labelled_hits
    from cagoflow.filters import post_filter

    root = Path(workdir)
    spec = TaskSpec(root, "postfilter", iteration, system)
    records = flatten(records)
    references = [r for r in records if r.stage == "reference"]
    members = [r for r in records if r.stage == "train"]
    cago = {r.task: r.summary for r in records if r.stage == "cago" and "subset" in r.summary}
    labelled = [r for r in references if "labelled" in r.outputs]
    files = [output(r, "labelled", root) for r in labelled]
    settings = config.filters.post.model_dump(mode="json")
    targets = {task: {"subset": cago[task]["subset"], "delta": cago[task].get("delta"), "reason": cago[task].get("reason")}
               for task in sorted(cago)}  # fmt: skip

    def body(directory: Path) -> Outcome:
        structures = [read(path)[0] for path in files]
        measured = [(atoms, targets[r.task]) for atoms, r in zip(structures, labelled)
                    if r.summary.get("status") == "converged" and r.task in cago]  # fmt: skip
        if measured and members:
            committee = load_committee(config, members, root)
            subsets = [tuple(summary["subset"]) for _, summary in measured]
            deltas = [summary.get("delta") for _, summary in measured]
            for (atoms, _), figures in zip(measured, labelled_hits(committee, [a for a, _ in measured], subsets, deltas)):
                atoms.info.update(figures)
        result = post_filter(structures, config.filters.post)
        kept = result.select(structures)
        reached = [atoms.info for atoms, target in measured if target.get("reason") == "reached"]
        unreached = [atoms.info for atoms, target in measured if target.get("reason") != "reached"]
        summary = {
            "attempted": sum(not r.summary.get("skipped") for r in references),
            "kept": len(kept),
            "rejected": {labelled[r.index].task: r.reason for r in result.rejected},
            "hit_ratios": [info["hit_ratio"] for info in reached if "hit_ratio" in info],
            "unreached_hit_ratios": [info["hit_ratio"] for info in unreached if "hit_ratio" in info],
            "true_errors": [info["true_error"] for info in reached + unreached if "true_error" in info],
        }
        return Outcome(outputs={"kept": write(directory / "kept.extxyz", kept)} if kept else {}, summary=summary)

    inputs = files + successful_models(members, root)
    return run_task(spec, inputs, {**settings, "cago": targets}, body)


@stage_task("merge")
def _merge(
    workdir: str, iteration: int, config: CampaignConfig, previous: TaskRecord | None, *postfilters: TaskRecord
) -> TaskRecord:
    """Append the post-filtered structures of every system to the dataset, with provenance.

    The store under ``dataset/`` is an append-only pool; the campaign's training set after this
    iteration is the previous merge's snapshot plus what this merge added (``dataset.json``, the
    hashes in order), so structures from runs with other settings never leak in.
    When not a single reference of the iteration gave a usable structure, the campaign stops.
    """
    from cagoflow.dataset import Dataset, Provenance, spread_pick
    from cagoflow.hashing import labelled_hash, structure_hash
    from cagoflow.io import atomic_write_json

    root = Path(workdir)
    spec = TaskSpec(root, "merge", iteration, "dataset")
    kept_files = [output(r, "kept", root) for r in postfilters if "kept" in r.outputs]
    before = [] if previous is None else [output(previous, "snapshot", root)]
    routed_before = [] if previous is None or "routed" not in previous.outputs else [output(previous, "routed", root)]
    attempted = sum(r.summary["attempted"] for r in postfilters)
    if attempted and not kept_files:
        reasons = "; ".join(f"{task}: {reason}" for r in postfilters for task, reason in list(r.summary["rejected"].items())[:3])
        raise StageFailed(
            f"iteration {iteration}: none of the {attempted} reference calculations gave a usable structure "
            f"({reasons}); the campaign stops instead of looping"
        )
    engine = f"{config.reference.engine}/{config.reference.method_name or ''}".rstrip("/")

    def body(directory: Path) -> Outcome:
        kept = [atoms for path in kept_files for atoms in read(path)]
        pushed = [k for k, atoms in enumerate(kept) if "hit_ratio" in atoms.info]
        to_test = {pushed[k] for k in spread_pick([int(kept[p].info.get("cago_steps", 0)) for p in pushed], config.dataset.cago_to_test)}
        provenance = []
        for index, atoms in enumerate(kept):
            extra = {k: atoms.info[k] for k in ("system", "true_error", "delta", "hit_ratio") if k in atoms.info}
            extra.update({"split": "test"} if index in to_test else {})
            provenance.append(Provenance(iteration=max(iteration, 0), stage="initial" if iteration < 0 else "cago",
                                         engine=engine, parent=atoms.info.get("parent"), extra=extra))  # fmt: skip
        Dataset(root / DATASET).append(kept, provenance)
        training_set = json.loads(before[0].read_text()) if before else []
        known = set(training_set)
        added = [h for h in dict.fromkeys(labelled_hash(atoms) for atoms in kept) if h not in known]
        snapshot = atomic_write_json(directory / "dataset.json", training_set + added)
        routed = json.loads(routed_before[0].read_text()) if routed_before else []
        routed += [h for h in dict.fromkeys(structure_hash(kept[k]) for k in sorted(to_test)) if h not in set(routed)]
        ratios = [x for r in postfilters for x in r.summary["hit_ratios"]]
        errors = [x for r in postfilters for x in r.summary["true_errors"]]
        summary = {
            "added": len(added),
            "dataset": len(training_set) + len(added),
            "to_test": len(to_test),
            "hit_ratio_mean": float(np.mean(ratios)) if ratios else None,
            "hit_ratio_median": float(np.median(ratios)) if ratios else None,
            "hits": len(ratios),
            "unreached": sum(len(r.summary.get("unreached_hit_ratios", [])) for r in postfilters),
            "true_error_mean": float(np.mean(errors)) if errors else None,
        }
        outputs = {"snapshot": snapshot, "routed": atomic_write_json(directory / "test-routed.json", routed)}
        return Outcome(outputs=outputs, summary=summary)

    return run_task(spec, kept_files + before + routed_before, {"engine": engine, "cago_to_test": config.dataset.cago_to_test}, body)


# --- evaluation: held-out errors, production MD per member, properties ------------------------------


@stage_task("evaluate")
def _benchmark(workdir: str, config: CampaignConfig, system: str) -> TaskRecord:
    """The held-out benchmark set of a system, made once: the campaign's labelled file
    (``benchmark``), or frames of an MD run driven by an ASE calculator (``structures``, to be
    labelled by the reference; see :func:`_benchmark_labels`). It never enters the dataset."""
    from cagoflow.evaluation import benchmark_frames, load_benchmark

    root = Path(workdir)
    spec = TaskSpec(root, "evaluate", -1, f"benchmark-{system}")
    settings = config.evaluation.benchmark
    if settings.file is not None:

        def copy(directory: Path) -> Outcome:
            structures = load_benchmark(settings.file)
            for atoms in structures:
                atoms.info.update(system=system)
            return Outcome(outputs={"benchmark": write(directory / "benchmark.extxyz", structures)}, summary={"count": len(structures)})

        return run_task(spec, [settings.file], {"file": str(settings.file)}, copy)
    generate = settings.generate
    start_file = config.systems[system].structures
    key_settings = {"generate": generate.model_dump(mode="json"), "reference": config.reference.model_dump(mode="json")}

    def frames(directory: Path) -> Outcome:
        from cagoflow.engines import make_reference
        from cagoflow.engines.ase_reference import AseCalculatorReference

        start = read(start_file)[0]
        start.info.update(system=system)
        if generate.calculator is None:
            calculator = make_reference(config.reference, config.systems[system]).calculator()
        else:
            calculator = AseCalculatorReference(generate.calculator, generate.settings).calculator()
        found = benchmark_frames(start, calculator, generate, seed_for(config, "benchmark", system) % 2**31)
        return Outcome(outputs={"structures": write(directory / "frames.extxyz", found)}, summary={"count": len(found)})

    return run_task(spec, [start_file], key_settings, frames)


def benchmark_count(config: CampaignConfig) -> int:
    """Frames the benchmark MD of each system gives (0 when the set comes from a file)."""
    generate = config.evaluation.benchmark.generate
    return 0 if generate is None else generate.frames


@stage_task("evaluate")
def _benchmark_labels(workdir: str, config: CampaignConfig, system: str, *references: TaskRecord) -> TaskRecord:
    """The labelled benchmark set of a system: its MD frames whose reference converged."""
    root = Path(workdir)
    spec = TaskSpec(root, "evaluate", -1, f"benchmark-{system}-labelled")
    labelled = [r for r in references if "labelled" in r.outputs]
    files = [output(r, "labelled", root) for r in labelled]

    def body(directory: Path) -> Outcome:
        from cagoflow.filters import post_filter

        structures = [read(path)[0] for path in files]
        kept = post_filter(structures, config.filters.post).select(structures)
        if not kept:
            return Outcome(status="failed", summary={"message": f"no benchmark frame of system {system} got reference labels"})
        return Outcome(outputs={"benchmark": write(directory / "benchmark.extxyz", kept)}, summary={"count": len(kept)})

    return run_task(spec, files, config.filters.post.model_dump(mode="json"), body)


def _check_benchmark(benchmark: TaskRecord) -> None:
    if "benchmark" not in benchmark.outputs:
        raise StageFailed(f"evaluation: {benchmark.summary.get('message', 'no benchmark set')}")


@stage_task("evaluate")
def _evaluate_errors(
    workdir: str, iteration: int, config: CampaignConfig, system: str, benchmark: TaskRecord, *members: TaskRecord
) -> TaskRecord:
    """Force, energy and virial RMSE of the committee mean and of every member on the benchmark set."""
    from dataclasses import asdict

    from cagoflow.committee import predict_in_batches
    from cagoflow.evaluation import heldout_errors

    _check_benchmark(benchmark)
    root = Path(workdir)
    spec = TaskSpec(root, "evaluate", iteration, f"errors-{system}")
    references = output(benchmark, "benchmark", root)
    models = successful_models(members, root)

    def body(directory: Path) -> Outcome:
        structures = read(references)
        prediction = predict_in_batches(load_committee(config, members, root), structures, None)
        return Outcome(summary=asdict(heldout_errors(prediction, structures)))

    return run_task(spec, [references, *models], {"system": system}, body)


@stage_task("evaluate")
def _evaluate_md(
    workdir: str, iteration: int, config: CampaignConfig, system: str, member: int, *members: TaskRecord
) -> TaskRecord:
    """Production MD of one member from the system's starting structure: stability over the
    replicas, density, self-diffusion and coordination."""
    from dataclasses import asdict

    from cagoflow.evaluation import production_md

    root = Path(workdir)
    spec = TaskSpec(root, "evaluate", iteration, f"md-{system}-member-{member:02d}")
    record = members[member]
    if record.status != "done":
        return run_task(spec, [], {"skipped": True}, _skipped)
    model = output(record, "model", root)
    production = config.evaluation.production
    settings = {"production": production.model_dump(mode="json"), "seed": config.seed}
    start_file = config.systems[system].structures

    def body(directory: Path) -> Outcome:
        from cagoflow.backends import get_backend

        committee = get_backend(config.committee.backend).load([model])
        seed = seed_for(config, "production", iteration, system, member) % 2**31
        result = production_md(committee, read(start_file)[0], production, seed)
        return Outcome(summary={"member": member, **asdict(result)})

    return run_task(spec, [model, start_file], settings, body)


@stage_task("evaluate")
def _evaluate_summary(
    workdir: str, iteration: int, config: CampaignConfig, system: str, errors: TaskRecord, *productions: TaskRecord
) -> TaskRecord:
    """The iteration's figures of a system: held-out errors, stable members, properties over the stable ones."""
    from dataclasses import asdict

    from cagoflow.evaluation import HeldOutErrors, MemberProduction, summarize

    root = Path(workdir)
    spec = TaskSpec(root, "evaluate", iteration, f"summary-{system}")
    ran = [record for record in productions if not record.summary.get("skipped")]
    settings = {"errors": errors.key, "productions": [record.key for record in ran]}  # keyed by what it summarises

    def body(directory: Path) -> Outcome:
        figures = HeldOutErrors.from_dict(errors.summary)
        members = [MemberProduction.from_dict({k: v for k, v in r.summary.items() if k != "member"}) for r in ran]
        return Outcome(summary=asdict(summarize(figures, members)))

    return run_task(spec, [], settings, body)
