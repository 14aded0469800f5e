"""MLIP backends: train one committee member with the backend's own trainer; load members.

A backend is a pure template (ASE's calculator-template idea): it writes the trainer's input
into a work directory and names the commands to run there, then reads the results back.
Who runs the commands — :func:`train` here, a Parsl bash app on a cluster — is decided
elsewhere. The command names (``dp``, ``nequip-train``) can be replaced by the site-config.

The backends are listed once, in :data:`BACKENDS`; campaigns and committee files name them
from there.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

from pydantic import AfterValidator

from cagoflow.committee import Committee
from cagoflow.io import log_tail


@dataclass(frozen=True)
class TrainingSettings:
    """What to train: preset ("tiny" for tests, "paper" for the paper's architecture), training
    steps, the member's seed, the species (type map), free hyperparameters that override the
    preset, and optionally a previous model to start from (fine-tuning)."""

    steps: int
    seed: int
    type_map: tuple[str, ...]
    preset: Literal["tiny", "paper"] = "tiny"
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    init_model: Path | None = None


@dataclass(frozen=True)
class TrainingResult:
    """Outcome of training one member.

    Attributes:
        status: "success" or "failed" (a crash, NaN losses, no model file).
        model: the deployable model file (None when failed).
        metrics: final RMSEs, e.g. ``train_energy_per_atom`` (eV/atom), ``train_forces`` (eV/Å),
            ``validation_energy_per_atom``, ``validation_forces``.
        message: why it failed, with the trainer's last lines.
        wall_time: seconds.
    """

    status: Literal["success", "failed"]
    model: Path | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str = ""
    wall_time: float = 0.0


@runtime_checkable
class Backend(Protocol):
    """One MLIP package (DeePMD-kit, NequIP, Allegro, the analytic Morse fit)."""

    name: str

    def write_training_input(
        self, train_file: Path, validation_file: Path, workdir: Path, settings: TrainingSettings
    ) -> list[list[str]]:
        """Write the trainer's inputs into ``workdir``; return the commands to run there, in order."""
        ...

    def read_training_result(self, workdir: Path) -> TrainingResult:
        """Read the trained model and final errors from ``workdir`` (failures as a result)."""
        ...

    def load(self, models: Sequence[Path], device: str | None = None) -> Committee:
        """A committee of the given member models (device: "cpu", "cuda"; None: CUDA if available).

        A file that is not a model of this backend raises InputError naming it."""
        ...

    def resume_step(self, workdir: Path) -> int | None:
        """The training step an interrupted earlier run in ``workdir`` left a checkpoint at, from
        which the next training there continues (None: it starts from scratch)."""
        ...

    def model_files(self, model: Path) -> list[Path]:
        """The files one member consists of, the model file first (a compiled model may need its
        checkpoint beside it): what to copy to take the member elsewhere."""
        ...


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: mappings recursively, everything else replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def batch_atoms_for(device: str, defaults: Mapping[str, int], batch_atoms: int | None = None) -> int:
    """Atoms per model call: ``batch_atoms``, or the backend's default for the device kind
    (``defaults["cpu"]`` / ``defaults["cuda"]``). Small CPU batches are faster per structure than
    large ones (cache), GPUs want many atoms per call."""
    from cagoflow.errors import InputError

    value = int(batch_atoms or defaults["cuda" if device.startswith("cuda") else "cpu"])
    if value < 1:
        raise InputError(f"batch_atoms must be at least 1, got {value}", field="batch_atoms")
    return value


def train(
    backend: Backend,
    train_file: Path,
    validation_file: Path,
    workdir: Path,
    settings: TrainingSettings,
    *,
    timeout: float | None = None,
) -> TrainingResult:
    """Train one member here and now: write inputs, run the commands, read the result.

    Each command's output goes to ``workdir/<step>.log``; a failing command ends training with a
    failed result carrying the log's last lines, never an exception.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for step, command in enumerate(backend.write_training_input(train_file, validation_file, workdir, settings)):
        log = workdir / f"step-{step}.log"
        with open(log, "w") as handle:
            try:
                completed = subprocess.run(command, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return TrainingResult("failed", None, message=f"{' '.join(command)}: {exc}", wall_time=time.perf_counter() - start)
        if completed.returncode != 0:
            message = f"{' '.join(command)} exited with code {completed.returncode}:\n{log_tail(log)}"
            return TrainingResult("failed", None, message=message, wall_time=time.perf_counter() - start)
    result = backend.read_training_result(workdir)
    return TrainingResult(result.status, result.model, result.metrics, result.message, time.perf_counter() - start)


#: The backends by name, as "module:Class" (imported on first use: the MLIP packages are large).
#: The one list of backends: a campaign's ``committee.backend`` (:data:`BackendName`) and a
#: committee file's ``backend`` (:mod:`cagoflow.models`) are checked against it.
BACKENDS: dict[str, str] = {
    "analytic": "cagoflow.backends.analytic:AnalyticBackend",
    "deepmd": "cagoflow.backends.deepmd:DeepmdBackend",
    "nequip": "cagoflow.backends.nequip:NequipBackend",
    "allegro": "cagoflow.backends.nequip:AllegroBackend",
}


#: The trainer programs the backends start, by the site's engine name: (program's usual name,
#: description). The site-config's ``engines.deepmd`` / ``engines.nequip`` say how this machine
#: starts them (nequip and allegro share ``nequip-train``).
BACKEND_PROGRAMS: dict[str, tuple[str, str]] = {
    "deepmd": ("dp", "DeePMD-kit trainer"),
    "nequip": ("nequip-train", "NequIP/Allegro trainer"),
}


def check_backend_name(name: str, known: Iterable[str] = BACKENDS) -> str:
    """``name`` when it is one of ``known`` (default: :data:`BACKENDS`); else a ValueError that
    lists them, with the closest as a hint."""
    choices = list(known)
    if name in choices:
        return name
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown backend {name!r}{hint}; expected one of: {', '.join(choices)}")


#: A pydantic field type: the name of a backend of :data:`BACKENDS`.
BackendName = Annotated[str, AfterValidator(check_backend_name)]


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (see :data:`BACKENDS`), with its default settings."""
    module, cls = BACKENDS[check_backend_name(name)].split(":")
    return getattr(importlib.import_module(module), cls)()
