"""The committee's tasks: training each member (prepare → trainer → collect) and calibrating the committee.

Plain task bodies (files in, files out), registered with their stage; :func:`cagoflow.apps.make_apps`
makes each a Parsl app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cagoflow.apps.commands import check_started, program_seconds, shell_command
from cagoflow.apps.tasks import (
    Outcome, StageFailed, TaskSpec, output, prepare_directory, read, run_task, seed_for, stage_task, successful_models, trained_committee,
)
from cagoflow.campaign import CampaignConfig
from cagoflow.executors.site import SiteConfig
from cagoflow.records import TaskRecord, finished
from cagoflow.summaries import CalibrationSummary
from cagoflow.stages import cago_slot, member_task


def training_spec(workdir: str, iteration: int, member: int) -> TaskSpec:
    return TaskSpec(Path(workdir), "train", iteration, member_task(member))


@stage_task("train")
def _prepare_training(
    workdir: str, iteration: int, config: CampaignConfig, site: SiteConfig, member: int, split: TaskRecord,
    previous: TaskRecord | None,
) -> dict:  # fmt: skip
    """Write the trainer's input; return the shell command to run (``true`` when already trained).

    The command runs under ``flock`` on the task directory, so a trainer left running by a
    killed driver finishes (or dies) before a new one starts in the same place; a trainer that
    finds a checkpoint there continues from it, and the record says from which step
    (``resumed_from_step``): the member is then not the one an uninterrupted run would have made.
    A member that failed in an earlier run (a crash, a lost node, a NaN loss) is trained again:
    its failure may have been the site's, not the data's.
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
    trainer = get_backend(backend)
    resumed = trainer.resume_step(spec.directory)
    commands = trainer.write_training_input(train_file, validation_file, spec.directory, settings)
    command = shell_command(spec.directory, commands, site, "train", "train.log")
    return {"key": key, "command": command, "backend": backend, "resumed_from_step": resumed}


def trained(directory: Path, key: str, workdir: Path) -> TaskRecord | None:
    """The record of a member trained successfully with this key (a failed one is not reused)."""
    record = finished(directory, key, workdir)
    return record if record is not None and record.status == "done" else None


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
    if prepared.get("resumed_from_step") is not None:  # an interrupted run's checkpoint: consistent, not a replay
        summary["resumed_from_step"] = prepared["resumed_from_step"]
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


def cago_task_names(config: CampaignConfig, iteration: int) -> list[tuple[str, int]]:
    """(system, index) of every CAGO task of an iteration, in a fixed order."""
    return [(system, k) for system in sorted(config.systems) for k in range(config.n_samples(iteration))]


@stage_task("calibrate")
def _calibrate(workdir: str, iteration: int, config: CampaignConfig, split: TaskRecord, members: Sequence[TaskRecord]) -> TaskRecord:
    """Calibrate the committee on the test set, and every member subset CAGO will use; judge
    where along CAGO's walks the calibration holds, on the labelled CAGO structures routed into
    the test set (``walks``: :func:`cagoflow.walk_validity.check_test_walks`).

    Fewer successfully trained members than ``committee.min_trained`` stops the iteration.
    """
    from cagoflow.calibration import calibrate_committee
    from cagoflow.io import atomic_write_json
    from cagoflow.sampling import cago_subsets
    from cagoflow.walk_validity import check_test_walks

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
        committee = trained_committee(config, members, root)
        references = read(test_file)
        training = [atoms for path in training_files for atoms in read(path)]
        prediction = committee.predict(references)
        full = calibrate_committee(prediction, references, training=training)
        outputs = {"calibration": full.save(directory / "calibration.json")}
        seeds = {cago_slot(system, k): seed_for(config, "subset", iteration, system, k) for system, k in cago_task_names(config, iteration)}
        chosen = cago_subsets(len(models), subset_size, seeds)
        subset_limits = []
        for index, subset in enumerate(chosen.subsets):
            calibration = calibrate_committee(prediction, references, members=subset, training=training)
            outputs[f"subset-{index}"] = calibration.save(directory / f"calibration-subset-{index}.json")
            subset_limits.append(calibration.force_validity_limit)
        subsets = {"tasks": chosen.tasks, "subsets": chosen.subsets}
        outputs["subsets"] = atomic_write_json(directory / "subsets.json", subsets)
        walks = check_test_walks(prediction, references)
        outputs["walks"] = atomic_write_json(directory / "walks.json", walks.to_dict())
        mean_forces = prediction.forces.mean(0)
        reference_forces = np.concatenate([atoms.get_forces() for atoms in references])
        out_of_sample = full.forces.diagnostics.out_of_sample
        summary = CalibrationSummary(
            members=len(models),
            failed_members=failed,
            a=full.forces.law.a,
            b=full.forces.law.b,
            validity_limit=full.force_validity_limit,
            subset_validity_limits=subset_limits,
            rms_z_out_of_sample=None if out_of_sample is None else out_of_sample.std_r,
            test_force_rmse=float(np.sqrt(np.mean((mean_forces - reference_forces) ** 2))),
            test_structures=len(references),
            calibration_points=full.n_atoms,
            contact_distances=full.contact_distances,
            walks=walks.walks,
            walk_radius=walks.radius,
            walk_judged=walks.judged,
        )
        return Outcome(outputs=outputs, summary=summary.dump())

    return run_task(spec, [test_file, *training_files, *models], settings, body)
