"""Requiring a real component in a test: outside CI a missing one skips the test; under CI
(``CI=true``) it is a failure, never a silent skip.

Test modules import these as ``from real_components import require_module`` (a plain module
beside the top-level conftest, so the name cannot be taken by a conftest of a sub-folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Skip the test, or fail it under CI: ``what`` is not installed or cannot run here."""
    if IN_CI:
        pytest.fail(f"{what} is missing under CI: the set-up must install it", pytrace=False)
    pytest.skip(f"{what} is not installed")


def require_module(name: str) -> None:
    """Skip (fail under CI) when the Python module ``name`` cannot be imported."""
    if importlib.util.find_spec(name) is None:
        missing(f"Python module {name}")


def require_command(name: str) -> str:
    """The path of the program ``name``; skip (fail under CI) when it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        missing(f"program {name}")
    return path
