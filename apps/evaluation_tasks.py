"""Evaluation: the held-out benchmark set, held-out errors and production MD per member, their summary.

Plain task bodies (files in, files out), registered with their stage; :func:`cagoflow.apps.make_apps`
makes each a Parsl app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


from cagoflow.apps.tasks import (
    Outcome, StageFailed, TaskSpec, output, read, run_task, seed_for, stage_task, successful_models, trained_committee, write,
)
from cagoflow.campaign import CampaignConfig
from cagoflow.records import TaskRecord
from cagoflow.stages import member_task


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
def _benchmark_labels(workdir: str, config: CampaignConfig, system: str, references: Sequence[TaskRecord]) -> TaskRecord:
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
    workdir: str, iteration: int, config: CampaignConfig, system: str, benchmark: TaskRecord, members: Sequence[TaskRecord]
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
        prediction = predict_in_batches(trained_committee(config, members, root), structures, None)
        return Outcome(summary=asdict(heldout_errors(prediction, structures)))

    return run_task(spec, [references, *models], {"system": system}, body)


@stage_task("evaluate")
def _evaluate_md(
    workdir: str, iteration: int, config: CampaignConfig, system: str, member: int, members: Sequence[TaskRecord]
) -> TaskRecord:
    """Production MD of one member from the system's starting structure: stability over the
    replicas, density, self-diffusion and coordination."""
    from dataclasses import asdict

    from cagoflow.evaluation import production_md

    root = Path(workdir)
    spec = TaskSpec(root, "evaluate", iteration, f"md-{system}-{member_task(member)}")
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
    workdir: str, iteration: int, config: CampaignConfig, system: str, errors: TaskRecord, productions: Sequence[TaskRecord]
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
