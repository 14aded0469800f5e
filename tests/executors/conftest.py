"""Fixtures of the executor tests: a real one-node SLURM cluster (scripts/slurm-test-cluster.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm-test-cluster.sh"


def _shared_helpers(config: pytest.Config) -> ModuleType:
    """tests/conftest.py as pytest loaded it (every conftest.py outside a package is named
    'conftest', so it cannot be imported by name from here)."""
    root_conftest = REPO / "tests" / "conftest.py"
    for plugin in config.pluginmanager.get_plugins():
        path = getattr(plugin, "__file__", None)
        if path and Path(path).resolve() == root_conftest:
            return plugin
    raise RuntimeError(f"{root_conftest} is not loaded")


def _as_root(command: list[str]) -> list[str]:
    """``command`` as root: directly when we are root, else through password-less sudo (CI)."""
    if os.geteuid() == 0:
        return command
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", *command]
    return command  # the script then says it needs root


@pytest.fixture(scope="session")
def slurm_cluster(pytestconfig: pytest.Config) -> Iterator[None]:
    """A running one-node SLURM cluster with partitions `cpu` and `gpu` (site-configs/ci-slurm.yaml).

    Skips outside CI when SLURM is not installed or cannot be started here (not root, no sudo);
    fails under CI. Stops the cluster at the end of the session when this session started it.
    """
    helpers = _shared_helpers(pytestconfig)
    helpers.require_command("slurmctld")
    was_up = subprocess.run(_as_root([str(CLUSTER_SCRIPT), "status"]), capture_output=True, text=True)
    started = subprocess.run(
        _as_root([str(CLUSTER_SCRIPT), "start"]), capture_output=True, text=True, timeout=120
    )
    if started.returncode != 0:
        message = f"the SLURM test cluster did not start:\n{started.stderr.strip()}"
        if helpers.IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield
    if was_up.returncode != 0:
        subprocess.run(_as_root([str(CLUSTER_SCRIPT), "stop"]), capture_output=True, text=True, timeout=120)
