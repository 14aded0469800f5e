"""Atoms per model call: the device's default unless the user sets it."""

from __future__ import annotations

import pytest

from cagoflow.backends import batch_atoms_for
from cagoflow.errors import InputError

DEFAULTS = {"cpu": 768, "cuda": 10_000}


def test_default_by_device_kind_and_override():
    assert batch_atoms_for("cpu", DEFAULTS) == 768
    assert batch_atoms_for("cuda", DEFAULTS) == batch_atoms_for("cuda:1", DEFAULTS) == 10_000
    assert batch_atoms_for("cuda", DEFAULTS, 50) == 50


def test_impossible_batch_size_is_refused():
    with pytest.raises(InputError, match="batch_atoms must be at least 1, got -3"):
        batch_atoms_for("cpu", DEFAULTS, -3)
