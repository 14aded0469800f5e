"""Shared test helpers.

Tests of real components (a trainer, LAMMPS, CP2K, SLURM) call :func:`require_module` or
:func:`require_command`: outside CI a missing component skips the test; under CI (``CI=true``)
it is a failure, never a silent skip. The ``slurm_cluster`` fixture starts the one-node test
cluster of ``scripts/slurm-test-cluster.sh`` (the same rule applies).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The programs of the environment the tests run in (lmp, dp, nequip-train, cagoflow, Parsl's
# worker pool) come first on PATH, as they do for a user who activated it.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is missing under CI: the set-up must install it", pytrace=False)
    pytest.skip(f"{what} is not installed")


def require_module(name: str) -> None:
    """Skip (fail under CI) when the Python module ``name`` cannot be imported."""
    if importlib.util.find_spec(name) is None:
        _missing(f"Python module {name}")


def require_command(name: str) -> str:
    """The path of the program ``name``; skip (fail under CI) when it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        _missing(f"program {name}")
    return path


REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-test-cluster.sh"


def _as_root(command: list[str]) -> list[str]:
    """``command`` as root: directly when we are root, else through password-less sudo (CI)."""
    if os.geteuid() == 0:
        return command
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", *command]
    return command  # the script then says it needs root


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A running one-node SLURM cluster with partitions `cpu` and `gpu` (site-configs/ci-slurm.yaml).

    Skips outside CI when SLURM is not installed or cannot be started here (not root, no sudo);
    fails under CI. Stops the cluster at the end of the session when this session started it.
    """
    require_command("slurmctld")
    was_up = subprocess.run(_as_root([str(CLUSTER_SCRIPT), "status"]), capture_output=True, text=True)
    started = subprocess.run(_as_root([str(CLUSTER_SCRIPT), "start"]), capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        _missing(f"a running SLURM test cluster ({started.stderr.strip()})")
    yield
    if was_up.returncode != 0:
        subprocess.run(_as_root([str(CLUSTER_SCRIPT), "stop"]), capture_output=True, text=True, timeout=120)
