"""Shared test helpers.

Tests of real components (a trainer, LAMMPS, CP2K, SLURM) call :func:`require_module` or
:func:`require_command`: outside CI a missing component skips the test; under CI (``CI=true``)
it is a failure, never a silent skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
