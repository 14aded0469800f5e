"""CAGO: structures pushed to δ, one record per structure, and the filter before the reference.

Plain task bodies (files in, files out), registered with their stage; :func:`cagoflow.apps.make_apps`
makes each a Parsl app.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence


from cagoflow.apps.tasks import (
    Outcome, TaskSpec, flatten, output, prepare_directory, read, record_outcome, run_task, stage_task, successful_models, trained_committee, write,
)
from cagoflow.campaign import CampaignConfig
from cagoflow.records import TaskRecord, finished
from cagoflow.summaries import CagoSummary, PrefilterSummary, SampleSummary
from cagoflow.stages import cago_slot, structure_task


def cago_groups(config: CampaignConfig, iteration: int) -> list[tuple[int, int]]:
    """(first index, count) of the structures each CAGO task of a system optimises together."""
    total, size = config.n_samples(iteration), config.cago.structures_per_task
    return [(first, min(size, total - first)) for first in range(0, total, size)]


@stage_task("cago")
def _cago(
    workdir: str, iteration: int, config: CampaignConfig, system: str, first: int, count: int, sample: TaskRecord,
    calibration: TaskRecord, members: Sequence[TaskRecord],
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
    specs = [TaskSpec(root, "cago", iteration, structure_task(system, k)) for k in range(first, first + count)]
    sampled = SampleSummary.model_validate(sample.summary) if sample.status == "done" else None
    available = sampled.count if sampled is not None else 0
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
        subset_index = subsets["tasks"][cago_slot(system, k)]
        settings = {"index": k, "subset": subsets["subsets"][subset_index], "optimize": source.optimize,
                    "trust_radius": sampled.trust_radius,
                    "cago": config.cago.model_dump(mode="json", exclude={"structures_per_task"})}  # fmt: skip
        key = task_key([starts, output(calibration, f"subset-{subset_index}", root), *models], settings)
        done = finished(spec.directory, key, root)
        if done is not None:
            records[k] = done
        else:
            prepare_directory(spec.directory)
            pending.setdefault(subset_index, []).append((k, spec, key))
    structures = read(starts) if pending else []
    committee = trained_committee(config, members, root) if pending and source.optimize else None
    for subset_index, tasks in pending.items():
        subset = tuple(subsets["subsets"][subset_index])
        chosen = [structures[k] for k, _, _ in tasks]
        begin = time.perf_counter()
        if committee is not None:
            law = CommitteeCalibration.load(output(calibration, f"subset-{subset_index}", root)).for_cago()
            results = run_cago_batch(chosen, committee.subset(subset), law, config.cago, trust_radius=sampled.trust_radius)
            finals = [result.atoms for result in results]
            summaries = [{**result.summary(), "action": action_of(result.delta, config.cago.no_room)} for result in results]
        else:  # baselines: the sampled frames go to the reference as they are (a δ only when absolute)
            finals = [atoms.copy() for atoms in chosen]
            delta = config.cago.delta if isinstance(config.cago.delta, float) else None
            summaries = [{"optimised": False, "delta": delta, "action": "sampled"} for _ in chosen]
        seconds = (time.perf_counter() - begin) / len(tasks)
        for (k, spec, key), atoms, start, summary in zip(tasks, finals, chosen, summaries):
            atoms.info.update({name: value for name, value in start.info.items() if name not in atoms.info})
            summary = CagoSummary(**summary, subset=list(subset), start=start.info.get("start", "drawn"))
            written = {} if summary.action == "dropped" else {"structure": write(spec.directory / "structure.extxyz", [atoms])}
            records[k] = record_outcome(spec, key, Outcome(outputs=written, summary=summary.dump()), seconds)
    return [records[k] for k in range(first, first + count)]


def action_of(delta: float | None, no_room: str) -> str:
    """What a campaign does with a CAGO result: "pushed" (it had a δ), else by the ``no_room``
    policy "dropped", or "sampled" (the frame goes to the reference as it is; also when a
    redraw found no start with room)."""
    if delta is not None:
        return "pushed"
    return "dropped" if no_room == "drop" else "sampled"


@stage_task("prefilter")
def _prefilter(
    workdir: str, iteration: int, config: CampaignConfig, system: str, cago: Sequence[Sequence[TaskRecord]],
    members: Sequence[TaskRecord],
) -> TaskRecord:  # fmt: skip
    """Drop CAGO structures with huge committee-mean forces or atoms too close (reasons recorded).

    ``cago``: the records of each CAGO task of the system (a task optimises several structures)."""
    from cagoflow.filters import pre_filter

    root = Path(workdir)
    spec = TaskSpec(root, "prefilter", iteration, system)
    cagos = [r for r in flatten(cago) if "structure" in r.outputs]
    files = [output(r, "structure", root) for r in cagos]
    settings = config.filters.pre.model_dump(mode="json")

    def body(directory: Path) -> Outcome:
        structures = [read(path)[0] for path in files]
        if not structures:
            return Outcome(summary=PrefilterSummary(kept=[], rejected={}).dump())
        prediction = trained_committee(config, members, root).predict(structures)
        mean_forces = [prediction.structure_forces(k).mean(0) for k in range(len(structures))]
        result = pre_filter(structures, mean_forces, config.filters.pre)
        kept = [cagos[k].task for k in result.kept]
        rejected = {cagos[r.index].task: r.reason for r in result.rejected}
        return Outcome(summary=PrefilterSummary(kept=kept, rejected=rejected).dump())

    return run_task(spec, files + successful_models(members, root), settings, body)
