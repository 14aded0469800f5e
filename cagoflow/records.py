"""Task records: what makes a campaign resumable, keyed by content.

Every task of a campaign (a member's training, one CAGO structure, one reference calculation,
...) writes, after its outputs, a record ``record.json`` in its own directory. The record
carries a key: a hash of the contents of the task's input files, its settings and the
cagoflow version. A task whose directory holds a finished record with the same key and whose
outputs all exist is done and is not run again — whatever Parsl run directory, scratch path
or process is asking. A changed input or setting changes the key, so exactly the tasks that
depend on it run again. Each real execution is appended to ``executions.jsonl`` in the work
directory, which proves what ran and when.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from cagoflow import __version__
from cagoflow.hashing import file_hash, settings_hash
from cagoflow.io import atomic_write_json

RECORD_NAME = "record.json"
EXECUTIONS_NAME = "executions.jsonl"

Status = Literal["done", "failed"]


@dataclass(frozen=True)
class TaskRecord:
    """The outcome of one task.

    Attributes:
        stage: the workflow stage ("train", "cago", ...).
        task: the task's name within the stage and iteration ("member-03", "water-002").
        iteration: the active-learning iteration (−1 for the initial labelling).
        key: content key of inputs + settings + cagoflow version.
        status: "done" or "failed" (a failure is a result: it is recorded and not retried
            unless its inputs change or the user asks).
        outputs: output files by role, relative to the work directory.
        summary: small JSON facts for status tables (counts, errors, σ, reasons).
        seconds: wall time of the execution.
        where: the host, SLURM job and partition the task ran in (see :func:`execution_place`).
    """

    stage: str
    task: str
    iteration: int
    key: str
    status: Status
    outputs: Mapping[str, str] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    version: str = __version__
    where: Mapping[str, str] = field(default_factory=lambda: execution_place())


def execution_place() -> dict[str, str]:
    """Host, and the SLURM job and partition when the task runs inside one."""
    import socket

    place = {"host": socket.gethostname()}
    for key, variable in (("slurm_job", "SLURM_JOB_ID"), ("partition", "SLURM_JOB_PARTITION")):
        if variable in os.environ:
            place[key] = os.environ[variable]
    return place


def task_key(inputs: Sequence[str | Path], settings: Mapping[str, Any]) -> str:
    """Content key of a task: hashes of its input files (in order), its settings, the version."""
    parts = {
        "inputs": [file_hash(path) for path in inputs],
        "settings": settings_hash(settings),
        "version": __version__,
    }
    return settings_hash(parts)


def read_record(directory: Path) -> TaskRecord | None:
    """The record in ``directory``, or None (missing or unreadable: the task is not done)."""
    try:
        data = json.loads((directory / RECORD_NAME).read_text())
        return TaskRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def finished(directory: Path, key: str, workdir: Path) -> TaskRecord | None:
    """The record of a finished task with this key whose outputs all exist, else None."""
    record = read_record(directory)
    if record is None or record.key != key:
        return None
    if not all((workdir / path).exists() for path in record.outputs.values()):
        return None
    return record


def write_record(directory: Path, record: TaskRecord, workdir: Path) -> TaskRecord:
    """Write the record atomically and log the execution in ``executions.jsonl``."""
    atomic_write_json(directory / RECORD_NAME, asdict(record))
    line = json.dumps({"time": time.time(), "stage": record.stage, "task": record.task,
                       "iteration": record.iteration, "status": record.status, "key": record.key})  # fmt: skip
    descriptor = os.open(workdir / EXECUTIONS_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (line + "\n").encode())
    finally:
        os.close(descriptor)
    return record


def all_records(workdir: Path) -> list[TaskRecord]:
    """Every task record below ``workdir`` (for status and report; no Parsl, no scheduler)."""
    records = []
    for path in sorted(workdir.glob(f"**/{RECORD_NAME}")):
        record = read_record(path.parent)
        if record is not None:
            records.append(record)
    return records


def executions(workdir: Path) -> list[dict[str, Any]]:
    """The execution log: one entry per task that really ran."""
    path = workdir / EXECUTIONS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
