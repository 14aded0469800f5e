"""What every stage task shares: its registration, its directory, its content key, its record.

A task body writes its outputs into the task's own directory (atomic writes) and returns a
:class:`Outcome`; :func:`run_task` skips the body when a finished record with the same key
exists, and writes the record after the outputs otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from cagoflow.io import remove_stale_temporaries
from cagoflow.records import Status, TaskRecord, finished, task_key, write_record
from cagoflow.stages import STAGE_BY_NAME

if TYPE_CHECKING:
    from ase import Atoms

    from cagoflow.campaign import CampaignConfig


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives and what identifies it (all paths absolute)."""

    workdir: Path
    stage: str
    iteration: int
    task: str

    @property
    def directory(self) -> Path:
        name = "iter-init" if self.iteration < 0 else f"iter-{self.iteration:03d}"
        return self.workdir / name / self.stage / self.task


@dataclass(frozen=True)
class Outcome:
    """What a task body produced: status, output files by role (absolute), facts for status
    tables, and the wall time (s) of external programs the task ran before its body."""

    status: Status = "done"
    outputs: Mapping[str, Path] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)
    program_seconds: float = 0.0


class StageFailed(RuntimeError):
    """A whole stage failed (every reference, too few members): stops the iteration with this message."""


def run_task(
    spec: TaskSpec, inputs: Sequence[Path], settings: Mapping[str, Any], body: Callable[[Path], Outcome]
) -> TaskRecord:
    """Run ``body(directory)`` unless a finished record with the same content key exists."""
    key = task_key(inputs, settings)
    done = finished(spec.directory, key, spec.workdir)
    if done is not None:
        return done
    prepare_directory(spec.directory)
    start = time.perf_counter()
    outcome = body(spec.directory)
    return record_outcome(spec, key, outcome, time.perf_counter() - start)


def record_outcome(spec: TaskSpec, key: str, outcome: Outcome, seconds: float) -> TaskRecord:
    """Write the record of a task whose outputs are written (for tasks that share one run,
    such as the CAGO structures optimised together, each keeps its own record)."""
    record = TaskRecord(
        stage=spec.stage,
        task=spec.task,
        iteration=spec.iteration,
        key=key,
        status=outcome.status,
        outputs={role: str(path.relative_to(spec.workdir)) for role, path in outcome.outputs.items()},
        summary=dict(outcome.summary),
        seconds=seconds + outcome.program_seconds,
    )
    return write_record(spec.directory, record, spec.workdir)


def prepare_directory(directory: Path) -> Path:
    """A task's directory, ready for the task to run (again): created, and without the temp
    files a writer killed mid-write left there (never a result)."""
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    return directory


def output(record: TaskRecord, role: str, workdir: Path) -> Path:
    """Absolute path of one output of a finished task."""
    return workdir / record.outputs[role]


# --- shared by the task bodies ---------------------------------------------------------------


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
    """Model files of the members that trained."""
    return [output(record, "model", workdir) for record in members if record.status == "done"]


def trained_committee(config: CampaignConfig, members: Sequence[TaskRecord], workdir: Path):
    """The committee of the members that trained (the campaign's backend)."""
    from cagoflow.backends import get_backend

    return get_backend(config.committee.backend).load(successful_models(members, workdir))


def structure_system(atoms: Atoms) -> str | None:
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


def flatten(records: Sequence[TaskRecord | Sequence[TaskRecord]]) -> list[TaskRecord]:
    """Records and lists of records (a CAGO task's), as one list."""
    return [r for item in records for r in (item if isinstance(item, (list, tuple)) else [item])]
