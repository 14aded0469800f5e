"""Run a :class:`~cagoflow.engines.reference.FileReference` here, as a subprocess.

For tests and local campaigns; on clusters the Parsl apps run the same template with the
site's command. :func:`run_file_reference` writes the inputs, runs
``command + engine.arguments(directory)`` in ``directory`` (stdout and stderr to
``directory/run.log``) and returns the engine's result. It never raises for a failed
calculation: an input the engine cannot write, a program that cannot start, a timeout (the
whole process group is killed) and a crash all come back as FAILED with the reason.

Environment: ``os.environ`` updated with ``env``. OMP_NUM_THREADS defaults to 1 when neither
sets it (a hybrid MPI/OpenMP binary would otherwise start one thread per core in every rank).
When the command's first word is ``mpirun``/``mpiexec``/``orterun`` and this process runs as
root (uid 0, as in containers and CI), OMPI_ALLOW_RUN_AS_ROOT=1 and
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are added unless ``env`` or the environment set them:
OpenMPI refuses to start as root otherwise. Nothing else is ever set globally.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from ase import Atoms

from cagoflow.engines.process import run_logged
from cagoflow.engines.reference import FileReference, ReferenceResult, ReferenceStatus
from cagoflow.filters import REFERENCE_STATUS_KEY
from cagoflow.io import log_tail

__all__ = ["LOG_FILE", "run_file_reference", "runner_environment"]

#: stdout and stderr of the command, in the calculation's directory.
LOG_FILE = "run.log"
_MPI_LAUNCHERS = frozenset({"mpirun", "mpiexec", "orterun"})
_ROOT_VARIABLES = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
_TAIL_LINES = 12


def runner_environment(command: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment :func:`run_file_reference` gives ``command`` (see the module docstring)."""
    result = dict(os.environ)
    result.update({key: str(value) for key, value in (env or {}).items()})
    result.setdefault("OMP_NUM_THREADS", "1")
    if command and Path(command[0]).name in _MPI_LAUNCHERS and os.geteuid() == 0:
        for key, value in _ROOT_VARIABLES.items():
            result.setdefault(key, value)
    return result


def run_file_reference(
    engine: FileReference,
    atoms: Atoms,
    directory: str | Path,
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> ReferenceResult:
    """Label ``atoms`` with ``engine`` by running ``command`` (e.g. ``["mpirun", "-np", "2",
    "cp2k.psmp"]``) in ``directory``; ``timeout`` in seconds (None: no limit)."""
    directory = Path(directory)
    start = time.monotonic()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        engine.write_input(atoms, directory)
    except (ValueError, OSError) as exc:
        return _failed(engine, atoms, f"cannot write the input: {exc}", start)
    argv = [*command, *engine.arguments(directory)]
    log = directory / LOG_FILE
    run = run_logged(argv, directory, log, runner_environment(command, env), timeout)
    if not run.started:
        return _failed(engine, atoms, run.problem, start)
    if run.returncode is None:
        return _failed(engine, atoms, f"{run.problem}: {' '.join(argv)}{log_tail(log, _TAIL_LINES, titled=True)}", start)
    result = engine.read_result(atoms, directory, run.returncode)
    if result.status is ReferenceStatus.FAILED and run.returncode != 0:
        result = replace(result, message=result.message + log_tail(log, _TAIL_LINES, titled=True))
    return replace(result, wall_time=time.monotonic() - start)


def _failed(engine: FileReference, atoms: Atoms, message: str, start: float) -> ReferenceResult:
    bare = atoms.copy()
    bare.calc = None
    bare.info[REFERENCE_STATUS_KEY] = ReferenceStatus.FAILED.value
    return ReferenceResult(bare, ReferenceStatus.FAILED, engine.name, message, time.monotonic() - start)
