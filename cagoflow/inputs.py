"""What every settings model shares: the base class, field-located errors, schedules, file paths.

Each science module owns its settings as one pydantic model built on :class:`InputModel`
(CAGO in :mod:`cagoflow.cago`, MD in :mod:`cagoflow.engines.md_settings`, ...); the campaign
schema (:mod:`cagoflow.config`) composes them and the CLI builds the same models, so a default
is written once. Loading YAML and turning pydantic's errors into one message per file and
field lives in :mod:`cagoflow.config`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

__all__ = [
    "IMPORT_PATH", "FieldError", "InputModel", "ScheduleEntry", "check_schedule", "resolve_file", "schedule_at",
    "schedule_input",
]  # fmt: skip

#: An import path ``package.module:Class`` (an ASE calculator named in a settings file).
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class InputModel(BaseModel):
    """Base of all settings models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldError(ValueError):
    """A validation failure that belongs to a field below the object being validated.

    ``loc`` (field names and list indices) is appended to pydantic's location, so a check
    made on a whole model can still point at ``committee.min_trained``.
    """

    def __init__(self, message: str, *loc: str | int):
        super().__init__(message)
        self.loc = loc


def resolve_file(value: Path, info: ValidationInfo, what: str) -> Path:
    """Absolute path of ``value`` (relative to the context's ``base_dir``, else the cwd); must be a file."""
    base = Path((info.context or {}).get("base_dir", Path.cwd()))
    path = (base / value.expanduser()).resolve()
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist (relative paths start at {base})")
    if not path.is_file():
        raise ValueError(f"expected a {what}, found a directory: {path}")
    return path


# --- schedules -------------------------------------------------------------------------------------


class ScheduleEntry(InputModel):
    """One entry of a per-iteration schedule."""

    from_iteration: int = Field(0, ge=0, description="first iteration (counted from 0) this entry applies to")


EntryT = TypeVar("EntryT", bound=ScheduleEntry)


def schedule_at(entries: Sequence[EntryT], iteration: int) -> EntryT:
    """The entry in force at ``iteration``: the last one with ``from_iteration <= iteration``."""
    if iteration < 0:
        raise ValueError(f"iterations count from 0, got {iteration}")
    in_force = [entry for entry in entries if entry.from_iteration <= iteration]
    if not in_force:
        raise ValueError(f"no schedule entry applies to iteration {iteration}")
    return max(in_force, key=lambda entry: entry.from_iteration)


def schedule_input(scalar_key: str | None) -> Callable[[Any], Any]:
    """Before-validator: a single mapping (or a plain value stored under ``scalar_key``) → one entry."""

    def normalise(value: Any) -> Any:
        if isinstance(value, Mapping):
            return [value]
        if scalar_key is not None and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return [{scalar_key: value}]
        return value

    return normalise


def check_schedule(entries: tuple[EntryT, ...]) -> tuple[EntryT, ...]:
    """After-validator: at least one entry, the first from iteration 0, strictly increasing."""
    if not entries:
        raise ValueError("a schedule needs at least one entry (from_iteration: 0)")
    if entries[0].from_iteration != 0:
        raise FieldError(
            f"the first schedule entry must start at from_iteration 0, found {entries[0].from_iteration}",
            0,
            "from_iteration",
        )
    for index in range(1, len(entries)):
        previous, current = entries[index - 1].from_iteration, entries[index].from_iteration
        if current <= previous:
            raise FieldError(
                f"schedule entries must be in strictly increasing from_iteration order; entry {index} "
                f"starts at {current} after an entry that starts at {previous}",
                index,
                "from_iteration",
            )
    return entries
