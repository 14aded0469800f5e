"""Run an engine's program here: its own process group, output to a log file, a time limit.

One mechanism for every engine that runs locally (CP2K, LAMMPS): :func:`run_logged` never
raises for a program that cannot start or runs out of time; it says so in :class:`ProgramRun`,
and the engine turns that into its own failed result. :func:`find_program` finds a program
the way every engine and trainer does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["ProgramRun", "find_program", "run_logged"]


def find_program(name: str) -> str:
    """``name`` as found on PATH; else the program installed next to this Python (a venv that
    is not activated); else ``name`` itself (the shell reports it missing). A path is kept."""
    if "/" in name or shutil.which(name) is not None:
        return name
    sibling = Path(sys.executable).parent / name
    return str(sibling) if sibling.is_file() else name


@dataclass(frozen=True)
class ProgramRun:
    """How a program ended: whether it started, its exit code, or why it has none (``problem``)."""

    started: bool
    returncode: int | None = None
    problem: str = ""  # "cannot start 'lmp': ..." or "timed out after 60 s"


def run_logged(
    argv: Sequence[str], cwd: Path, log: Path, env: Mapping[str, str], timeout: float | None = None
) -> ProgramRun:
    """Run ``argv`` in ``cwd`` with stdout and stderr in ``log``; ``timeout`` in s (None: no limit).

    The program gets its own process group, so a timeout (or an interrupt of this process)
    kills MPI ranks and other children too.
    """
    with open(log, "wb") as handle:
        try:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        except OSError as exc:
            return ProgramRun(False, problem=f"cannot start {argv[0]!r}: {exc}")
        try:
            return ProgramRun(True, process.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            kill_process_group(process)
            return ProgramRun(True, problem=f"timed out after {timeout:g} s")
        finally:
            if process.poll() is None:  # KeyboardInterrupt or another exception while waiting
                kill_process_group(process)


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the program's process group, SIGKILL to what is left after 5 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5.0)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # ranks that outlived their launcher
    except ProcessLookupError:
        pass
    process.wait()
