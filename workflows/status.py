"""What a campaign's work directory says about it: no Parsl, no scheduler, only the records.

A task directory with a record is done or failed; one without a record is running (or was
interrupted: the next ``cagoflow run`` redoes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cagoflow.errors import InputError
from cagoflow.records import RECORD_NAME, TaskRecord, read_record

#: Stages in the order an iteration runs them (as they appear in the work directory).
STAGE_ORDER = (
    "initial", "split", "train", "calibrate", "md", "sample", "cago", "prefilter", "reference", "postfilter", "merge"
)  # fmt: skip


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

    def _summary(self, stage: str, key: str):
        records = self.stages.get(stage, StageStatus()).records
        return records[0].summary.get(key) if records else None

    @property
    def dataset_size(self) -> int | None:
        return self._summary("merge", "dataset")

    @property
    def added(self) -> int | None:
        return self._summary("merge", "added")

    @property
    def test_force_rmse(self) -> float | None:
        """Force RMSE of the committee mean on the test set, eV/Å."""
        return self._summary("calibrate", "test_force_rmse")

    @property
    def hit_ratio(self) -> float | None:
        """Mean true error / δ of this iteration's CAGO structures (from their reference labels)."""
        return self._summary("merge", "hit_ratio_mean")

    @property
    def cago_reached(self) -> str | None:
        """"k/n": CAGO structures of this iteration whose σ_cal reached δ, of those optimised."""
        cago = self.stages.get("cago")
        optimised = [r for r in cago.records if r.summary.get("reason") != "not optimised"] if cago else []
        if not optimised:
            return None
        return f"{sum(r.summary.get('reason') == 'reached' for r in optimised)}/{len(optimised)}"

    @property
    def members_trained(self) -> str | None:
        train = self.stages.get("train")
        return None if train is None else f"{train.done}/{train.done + train.failed + train.running}"

    @property
    def md_stable(self) -> str | None:
        md = self.stages.get("md")
        if md is None or not md.records:
            return None
        return f"{sum(bool(r.summary.get('stable')) for r in md.records)}/{len(md.records)}"


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


def campaign_iterations(workdir: Path) -> int:
    """Iterations the campaign asks for (from the copy of its settings in the work directory)."""
    return int(json.loads((workdir / "campaign.json").read_text())["iterations"])


def failed_tasks(iterations: list[IterationStatus]) -> list[tuple[int, TaskRecord]]:
    """(iteration, record) of every failed task, in the order the campaign runs them."""
    return [
        (it.iteration, record)
        for it in iterations
        for name in STAGE_ORDER
        for record in it.stages.get(name, StageStatus()).records
        if record.status != "done"
    ]


def counts(status: StageStatus) -> str:
    """"3", "3 +1✗", "2 +1…": done, failed, running tasks of a stage."""
    text = str(status.done) if status.done or not (status.failed or status.running) else ""
    if status.failed:
        text += f" +{status.failed} failed"
    if status.running:
        text += f" +{status.running} running"
    return text.strip()
