"""Requiring a real component in a test: outside CI a missing one skips the test; under CI
(``CI=true``) it is a failure, never a silent skip. And running real trainers side by side.

Test modules import these as ``from real_components import require_module`` (a plain module
beside the top-level conftest, so the name cannot be taken by a conftest of a sub-folder).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: Trainers run side by side: the test machines have 2 cores, each trainer runs one thread
#: (tests/conftest.py sets the thread variables).
SIDE_BY_SIDE = 2

T = TypeVar("T")


def side_by_side(jobs: Sequence[Callable[[], T]], workers: int = SIDE_BY_SIDE) -> list[T]:
    """The results of ``jobs`` (each starts its own program, e.g. ``backends.train``), run
    ``workers`` at a time, in the order given."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: job(), jobs))


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
