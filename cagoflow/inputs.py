"""Reading the project's YAML inputs: the base settings model, schedules, file paths, a strict
YAML loader, and pydantic's errors turned into one message per file and field.

Each science module owns its settings as one pydantic model built on :class:`InputModel`
(CAGO in :mod:`cagoflow.cago`, MD in :mod:`cagoflow.engines.md_settings`, ...); the campaign
schema (:mod:`cagoflow.campaign`) and the site schema (:mod:`cagoflow.executors.site`) compose
them, and the CLI builds the same models (:func:`load_settings`), so a default is written once.
Every file the project reads is validated through :func:`validate_input`; any problem becomes
one :class:`~cagoflow.errors.InputError` naming the file, the dotted field path, the line, what
was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, ValidationError, ValidationInfo

from cagoflow.errors import InputError

__all__ = [
    "IMPORT_PATH", "NAME_PATTERN", "Count", "FieldError", "Finite", "InputModel", "Name", "NonNegative", "Positive", "ScheduleEntry", "check_schedule",
    "load_settings", "located_error", "read_yaml_mapping", "resolve_file", "schedule_at", "schedule_input",
    "validate_input",
]  # fmt: skip

#: Names used in directory names: systems, executors, campaigns, sites.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

#: Numbers as files read back hold them (units by field): strict, so neither true/false nor text
#: is taken for a number. A finite float; one > 0; one >= 0; a count or index >= 0.
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Positive = Annotated[Finite, Field(gt=0)]
NonNegative = Annotated[Finite, Field(ge=0)]
Count = Annotated[int, Strict(), Field(ge=0)]

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


# --- loading YAML with errors for people ----------------------------------------------------------


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no arbitrary objects) with three YAML 1.1 traps removed.

    - a key given twice in one mapping is an error (safe_load silently keeps the last);
    - ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3`` and reads ``1e-3`` as a string);
    - ``48:00:00`` stays a string and ``010`` is ten (YAML 1.1: base-60 172800 and octal 8).
    """


_INT = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


def _construct_int(loader: _ConfigLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    bases = {"0x": 16, "0o": 8, "0b": 2}
    base = bases.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _construct_unique_mapping(loader: _ConfigLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, typing.Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found the key '{key}' twice", key_node.start_mark
            )
        if isinstance(key, typing.Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
_ConfigLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))
_ConfigLoader.add_constructor(_INT_TAG, _construct_int)
_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml_mapping(path: Path, what: str, required: str, field: str) -> tuple[dict[str, Any], str]:
    """Text and top-level mapping of a YAML file; every problem is an InputError naming the file."""
    if not path.exists():
        raise InputError(f"{what} file does not exist", file=path)
    if path.is_dir():
        raise InputError(f"expected a {what} YAML file, found a directory", file=path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is dropped
    except PermissionError:
        raise InputError(f"{what} file is not readable (permission denied)", file=path) from None
    except UnicodeDecodeError as exc:
        message = f"expected a text (UTF-8) YAML file, found binary data at byte {exc.start}"
        raise InputError(message, file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read the {what} file ({exc.strerror or exc})", file=path) from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a yaml.SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"malformed YAML{where}: {exc.problem or exc.context}", file=path) from None
    except yaml.YAMLError as exc:
        raise InputError(f"malformed YAML: {exc}", file=path) from None
    if data is None or data == {}:
        found = "the file is empty" if data is None else "the file holds an empty mapping"
        raise InputError(f"a {what} must {required}, but {found}", file=path, field=field)
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of {what} settings at the top level, found {_kind(data)}", file=path)
    return data, text


def _kind(value: Any) -> str:
    """Words for the type of a YAML value."""
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


_ModelT = TypeVar("_ModelT", bound=BaseModel)


def validate_input(model: type[_ModelT], data: dict[str, Any], *, file: Path, text: str, context: dict[str, Any]) -> _ModelT:
    """``model.model_validate(data)`` with a ValidationError turned into one InputError."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise _input_error(exc, model, file, text) from None


def _input_error(exc: ValidationError, root: type[BaseModel], file: Path, text: str) -> InputError:
    """One InputError for the first failing field of ``exc``; counts the other fields."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for error in exc.errors():
        extra = getattr((error.get("ctx") or {}).get("error"), "loc", ())
        loc, field = _clean_loc(root, (*error["loc"], *extra))
        groups.setdefault(loc, []).append({**error, "field_info": field})
    (loc, errors), *others = groups.items()
    message = _describe(loc, errors)
    if others:
        message += f" (and {len(others)} more error(s), the next at '{_dotted(others[0][0])}')"
    return located_error(message, loc, file, text)


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _strip(annotation: Any) -> Any:
    """``annotation`` without Annotated[...] and without an Optional's None."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (Union, types.UnionType):
            arms = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
            if len(arms) == 1:
                annotation = arms[0]
                continue
        return annotation


def _clean_loc(root: type[BaseModel], loc: Sequence[Any]) -> tuple[tuple[Any, ...], Any]:
    """pydantic's error location as a field path (union tags and '[key]' dropped), and the
    model class (for an unknown key) or (field name, FieldInfo) of the last field on the way."""
    kept: list[Any] = []
    current: Any = root
    last: Any = None
    for part in loc:
        if part == "[key]":
            continue
        current = _strip(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            kept.append(part)
            info = current.model_fields.get(part) if isinstance(part, str) else None
            last = (part, info) if info is not None else current
            current = info.annotation if info is not None else None
        elif dataclasses.is_dataclass(current) and isinstance(current, type):  # a result class read back from a file
            kept.append(part)
            current = typing.get_type_hints(current, include_extras=True).get(part) if isinstance(part, str) else None
        elif origin in (dict, Mapping):
            kept.append(part)
            current = typing.get_args(current)[1]
        elif origin in (tuple, list) and isinstance(part, int):
            kept.append(part)
            current = typing.get_args(current)[0]
        elif origin in (Union, types.UnionType):  # part is the tag of a union arm
            arms = typing.get_args(current)
            current = next((arm for arm in arms if getattr(arm, "__name__", str(arm)) == part or str(arm) == part), Any)
        elif current is None:
            kept.append(part)
        # anything else is a type tag below a plain value: dropped
    return tuple(kept), last


def _describe(loc: tuple[Any, ...], errors: list[dict[str, Any]]) -> str:
    """Words for the errors of one field: what was expected, what was found."""
    first = errors[0]
    info = first["field_info"]
    note = f" — {info[0]}: {info[1].description}" if isinstance(info, tuple) and info[1].description else ""
    if first["type"] == "missing":
        return f"missing required key '{loc[-1]}'{note}"
    if first["type"] == "extra_forbidden":
        allowed = list(info.model_fields) if isinstance(info, type) and issubclass(info, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{loc[-1]}'{hint}; allowed keys here: {', '.join(allowed)}"
    texts: list[str] = []
    for error in errors:
        cause = (error.get("ctx") or {}).get("error")
        text = str(cause) if isinstance(cause, ValueError) else _expected(error)
        if text not in texts:
            texts.append(text)
    return " or ".join(texts) + note


def _expected(error: dict[str, Any]) -> str:
    """pydantic's message rewritten as 'expected ..., found ...'."""
    if error["type"] == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        rule = "letters, digits, '_', '-' and '.', starting with a letter or digit"
        return f"expected a name of {rule}, found {error['input']!r}"
    message = re.sub(r"^Input should be (?=greater|less|a multiple)", "expected a value ", error["msg"])
    message = re.sub(r"a valid dictionary or instance of \w+", "a mapping", message)
    message = re.sub(r"^Input should (be|have) ", lambda m: "expected " + ("" if m[1] == "be" else "to have "), message)
    found = repr(error["input"])
    found = found if len(found) <= 60 else found[:57] + "..."
    return f"{message}, found {found}"


def _yaml_line(text: str, loc: Sequence[Any]) -> int | None:
    """1-based line of the deepest node of ``loc`` present in the YAML ``text``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((key, value) for key, value in node.value if key.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def located_error(message: str, loc: tuple[Any, ...], file: Path, text: str) -> InputError:
    """InputError for ``loc``, the message led by the line number where the YAML has one."""
    line = _yaml_line(text, loc)
    return InputError((f"line {line}: " if line else "") + message, file=file, field=_dotted(loc) or None)




def load_settings(model: type[_ModelT], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> _ModelT:
    """A settings model from a YAML file of its fields (optional) with ``overrides`` on top —
    how the command line builds the same settings a campaign block holds (defaults written
    once, in the model). Problems raise one :class:`InputError` naming the file and field."""
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        path = Path(path)
        data, text = read_yaml_mapping(path, "settings", "hold settings", model.__name__)
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    return validate_input(model, data, file=path, text=text, context={"base_dir": base})
