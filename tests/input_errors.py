"""Helpers of the tests of input files: edited copies of settings and the one-paragraph error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest

from cagoflow.errors import InputError

DELETE = object()


def edited(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with values set at dotted paths (``DELETE`` removes the key)."""
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = [int(part) if part.isdigit() else part for part in dotted.split(".")]
        node = data
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


def case(name: str, data: Any, field: str | None, *words: str) -> Any:
    return pytest.param(data, field, words, id=name)


def assert_input_error(path: Path, field: str | None, *words: str, loader: Callable[[Path], Any]) -> InputError:
    with pytest.raises(InputError) as info:
        loader(path)
    error = info.value
    assert path.name in str(error), str(error)
    assert error.file == str(path)
    if field is not None:
        assert error.field == field, str(error)
        assert field in str(error)
    for word in words:
        assert word in str(error), str(error)
    return error
