"""Append-only store of labelled structures with provenance, and reproducible splits.

Layout of a dataset directory (``<workdir>/dataset/``)::

    batch-00000.extxyz   one extxyz file per appended batch (energy eV, forces eV/Å, stress eV/Å³,
    batch-00001.extxyz   provenance as a JSON dict in ``info["provenance"]``)
    index.json           every structure: content hash, batch file, position, provenance

The index is the single source of truth. An append writes the new batch file first and the
index second, each atomically (temp file + rename). A process killed between the two leaves a
batch file that the index does not reference; readers ignore it and the next append overwrites
or deletes it. Batch names follow from the index (batch number = number of batches listed), so
re-running an append after a crash produces the same files. One writer at a time: the store
has no lock, the workflow driver is its only writer.

An entry's identity is :func:`cagoflow.hashing.labelled_hash`: the geometry and the reference
labels, snapped to the extxyz text precision, so a structure hashes the same before it is stored
and after it is read back from its batch file, and a structure relabelled by a new reference
calculation is a new entry (the merge snapshot that names it changes, and so does every task
that trains on it). Version 1 indexes hashed the geometry only; they are read and rehashed.

Splits (:func:`make_splits_for_hashes`) assign each structure to the test set by a draw that
depends only on the seed and its content hash, so the test set is stable while the dataset grows.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from pydantic import Field, PlainValidator, field_validator, model_validator

from cagoflow.errors import InputError
from cagoflow.hashing import labelled_hash, structure_hash
from cagoflow.inputs import Count, FieldError, InputModel, validate_input
from cagoflow.io import atomic_write_json, read_json, read_structures, structure_labels, write_structures

INDEX_NAME = "index.json"
INDEX_FORMAT: Final = "cagoflow-dataset"
INDEX_VERSION: Final = 2
#: ``atoms.info`` key holding the provenance dict of a stored structure.
PROVENANCE_KEY = "provenance"
_BATCH_NAME = "batch-{:05d}.extxyz"
_BATCH_RE = re.compile(r"^batch-\d{5,}\.extxyz$")
_FORBIDDEN_CHARACTERS = ('"', "\\", "\n", "\r")

JsonScalar = float | int | str | bool | None


class FrozenDict(dict):
    """A read-only, hashable, picklable dict (JSON-serialisable like a plain dict)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("this mapping is read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))


# --- provenance ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    """Where a structure came from.

    Attributes:
        iteration: active-learning iteration that produced it (0 for the initial data).
        stage: producing stage, e.g. ``"initial"``, ``"cago"``, ``"md"``, ``"random"``.
        engine: name of the reference engine that labelled it (e.g. ``"cp2k"``, ``"tblite"``).
        parent: hash or id of the frame it was derived from, or ``None``.
        extra: free-form JSON scalars, e.g. CAGO's ``true_error`` (eV/Å), ``delta`` (eV/Å).

    Strings may not contain ``"``, ``\\`` or line breaks (extxyz cannot store them).
    """

    iteration: int
    stage: str
    engine: str
    parent: str | None = None
    extra: Mapping[str, JsonScalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.iteration, bool) or not isinstance(self.iteration, (int, np.integer)):
            raise ValueError(f"provenance iteration must be an integer, got {self.iteration!r}")
        if self.iteration < 0:
            raise ValueError(f"provenance iteration must be >= 0, got {self.iteration}")
        object.__setattr__(self, "iteration", int(self.iteration))
        _check_text("stage", self.stage, allow_empty=False)
        _check_text("engine", self.engine, allow_empty=True)
        if self.parent is not None:
            _check_text("parent", self.parent, allow_empty=False)
        extra = {str(key): _json_scalar(f"extra[{key!r}]", value) for key, value in dict(self.extra).items()}
        for key in extra:
            _check_text("extra key", key, allow_empty=False)
        object.__setattr__(self, "extra", FrozenDict(extra))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the form stored in the index and in ``atoms.info``)."""
        return {
            "iteration": self.iteration,
            "stage": self.stage,
            "engine": self.engine,
            "parent": self.parent,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming a missing or bad key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"provenance must be a JSON object, got {type(data).__name__}")
        missing = [key for key in ("iteration", "stage", "engine") if key not in data]
        if missing:
            raise ValueError(f"provenance lacks the key(s) {', '.join(missing)}")
        extra = data.get("extra") or {}
        if not isinstance(extra, Mapping):
            raise ValueError("provenance 'extra' must be a JSON object")
        return cls(
            iteration=data["iteration"],
            stage=data["stage"],
            engine=data["engine"],
            parent=data.get("parent"),
            extra=extra,
        )

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> "Provenance":
        """Provenance stored in ``atoms.info`` by the dataset (``info["provenance"]``)."""
        if PROVENANCE_KEY not in info:
            raise ValueError(f"atoms.info has no '{PROVENANCE_KEY}' entry")
        return cls.from_dict(info[PROVENANCE_KEY])


def _check_text(name: str, value: Any, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise ValueError(f"provenance {name} must be a string, got {value!r}")
    if not allow_empty and not value:
        raise ValueError(f"provenance {name} must not be empty")
    if any(character in value for character in _FORBIDDEN_CHARACTERS):
        raise ValueError(f"provenance {name} {value!r} contains a quote, backslash or line break")


def _json_scalar(name: str, value: Any) -> JsonScalar:
    """``value`` as a plain Python JSON scalar (NumPy scalars converted)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        _check_text(name, value, allow_empty=True)
        return value
    raise ValueError(f"provenance {name} must be a JSON scalar (number, string, bool, None), got {value!r}")


# --- entries and append results --------------------------------------------------------------


@dataclass(frozen=True)
class DatasetEntry:
    """One stored structure: its content hash, batch file name, position in it and provenance."""

    hash: str
    file: str
    index: int
    provenance: Provenance

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "file": self.file, "index": self.index, "provenance": self.provenance.to_dict()}


@dataclass(frozen=True)
class AppendResult:
    """Outcome of :meth:`Dataset.append`.

    Attributes:
        added: hashes of the structures stored, in input order.
        refused: ``(hash, reason)`` of every structure not stored, in input order.
        file: batch file written (name inside the dataset directory), ``None`` if nothing was added.
    """

    added: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    file: str | None = None


@dataclass(frozen=True)
class _Index:
    batches: tuple[str, ...] = ()
    entries: tuple[DatasetEntry, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "batches": list(self.batches),
            "entries": [entry.to_dict() for entry in self.entries],
        }


# --- labels and stored copies ---------------------------------------------------------------


def label_problem(atoms: Atoms) -> str | None:
    """Why ``atoms`` cannot be stored as a labelled structure, or ``None`` if it can."""
    labels = structure_labels(atoms)
    if "energy" not in labels or "forces" not in labels:
        return "no reference energy and forces"
    forces = np.asarray(labels["forces"], dtype=float)
    if forces.shape != (len(atoms), 3):
        return f"reference forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
    if labels["energy"] is None or not math.isfinite(float(labels["energy"])) or not np.isfinite(forces).all():
        return "reference energy or forces are not finite"
    if "stress" in labels:
        stress = np.asarray(labels["stress"], dtype=float)
        if stress.shape not in ((6,), (3, 3)) or not np.isfinite(stress).all():
            return f"reference stress must be 6 or 3x3 finite values, got shape {stress.shape}"
    return None


def _stored_copy(atoms: Atoms, provenance: Provenance) -> Atoms:
    """Copy of ``atoms`` with only the labels attached and provenance in ``info``."""
    copy = atoms.copy()
    copy.info[PROVENANCE_KEY] = provenance.to_dict()
    copy.calc = SinglePointCalculator(copy, **structure_labels(atoms))
    return copy


# --- the dataset -----------------------------------------------------------------------------


class Dataset:
    """Append-only store of labelled structures in a directory (see the module docstring).

    ``Dataset(path)`` opens a dataset that may not exist yet (empty; the directory is created on
    the first append); :meth:`open` requires an existing one. A bad index raises
    :class:`~cagoflow.errors.InputError` naming the file and the field.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError("expected a dataset directory, found a file", file=self.path)
        self._index = self._load_index()

    @classmethod
    def open(cls, path: str | Path) -> "Dataset":
        """Open an existing dataset; a missing directory or index raises ``InputError``."""
        path = Path(path)
        if not (path / INDEX_NAME).is_file():
            raise InputError(f"not a dataset: {INDEX_NAME} does not exist in this directory", file=path)
        return cls(path)

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_NAME

    def __len__(self) -> int:
        return len(self._index.entries)

    def __contains__(self, item: str | Atoms) -> bool:
        """Whether a hash (or a labelled structure, by its :func:`labelled_hash`) is in the dataset."""
        key = labelled_hash(item) if isinstance(item, Atoms) else item
        return key in self.hashes

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, {len(self)} structures)"

    @property
    def entries(self) -> tuple[DatasetEntry, ...]:
        """All entries in append order."""
        return self._index.entries

    @property
    def hashes(self) -> set[str]:
        """Content hashes of all stored structures."""
        return {entry.hash for entry in self._index.entries}

    @property
    def batch_files(self) -> tuple[str, ...]:
        """Batch file names listed in the index, in append order."""
        return self._index.batches

    def structures(self, indices: Sequence[int] | None = None) -> list[Atoms]:
        """Stored structures (all, or those at ``indices`` in append order), labels attached.

        Each has a ``SinglePointCalculator`` with energy (eV), forces (eV/Å) and stress (eV/Å³)
        when stored, and ``info["provenance"]`` (dict, from the index).
        """
        entries = self._index.entries
        positions = range(len(entries)) if indices is None else [int(i) for i in indices]
        for position in positions:
            if not 0 <= position < len(entries):
                raise IndexError(f"dataset index {position} out of range (dataset has {len(entries)} structures)")
        batches = {name: self._read_batch(name) for name in {entries[p].file for p in positions}}
        return [self._checked_structure(p, batches[entries[p].file]) for p in positions]

    def _read_batch(self, name: str) -> list[Atoms]:
        return read_structures(self.path / name)

    def _checked_structure(self, position: int, batch: list[Atoms]) -> Atoms:
        entry = self._index.entries[position]
        batch_path = self.path / entry.file
        if entry.index >= len(batch):
            raise InputError(
                f"the index places structure {position} at position {entry.index}, "
                f"but the batch file holds {len(batch)} structures",
                file=batch_path,
                field=f"entries.{position}.index",
            )
        atoms = batch[entry.index].copy()
        atoms.calc = SinglePointCalculator(atoms, **structure_labels(batch[entry.index]))
        if labelled_hash(atoms) != entry.hash:
            raise InputError(
                f"structure {entry.index} of this file does not match its hash in the index "
                "(the file was changed after it was appended)",
                file=batch_path,
                field=f"entries.{position}.hash",
            )
        atoms.info[PROVENANCE_KEY] = entry.provenance.to_dict()
        return atoms

    def append(self, structures: Iterable[Atoms], provenance: Provenance | Sequence[Provenance]) -> AppendResult:
        """Store labelled structures as one new batch; refuse duplicates and unlabelled ones.

        ``provenance`` is one :class:`Provenance` for all or one per structure. A structure is
        refused (never stored) when it lacks finite energy+forces labels, is already in the
        dataset with the same labels, or repeats the geometry of an earlier structure of the
        same call (one label per geometry and batch). The same geometry with new labels (a
        reference calculation run again) is a new entry. Atomic and crash safe.
        """
        structures = list(structures)
        provenances = _broadcast_provenance(provenance, len(structures))
        self._index = self._load_index()  # the file on disk is the truth
        hashes = [labelled_hash(atoms) for atoms in structures]
        known = self.hashes
        first_seen: dict[str, int] = {}
        accepted: list[int] = []
        refused: list[tuple[str, str]] = []
        for number, (atoms, digest) in enumerate(zip(structures, hashes)):
            geometry = structure_hash(atoms)
            reason = label_problem(atoms)
            if reason is None and digest in known:
                reason = "already in the dataset"
            elif reason is None and geometry in first_seen:
                reason = f"duplicate of structure {first_seen[geometry]} of this batch"
            if reason is not None:
                refused.append((digest, reason))
                continue
            first_seen[geometry] = number
            accepted.append(number)
        if not accepted:
            self._remove_stray_files()
            return AppendResult(added=(), refused=tuple(refused), file=None)
        name = _BATCH_NAME.format(len(self._index.batches))
        stored = [_stored_copy(structures[i], provenances[i]) for i in accepted]
        write_structures(self.path / name, stored)
        new_entries = tuple(
            DatasetEntry(hashes[i], name, position, provenances[i]) for position, i in enumerate(accepted)
        )
        index = _Index(self._index.batches + (name,), self._index.entries + new_entries)
        atomic_write_json(self.index_path, index.to_dict())
        self._index = index
        self._remove_stray_files()
        return AppendResult(added=tuple(hashes[i] for i in accepted), refused=tuple(refused), file=name)

    def _remove_stray_files(self) -> None:
        """Delete batch files the index does not list and temp files left by killed writes."""
        if not self.path.is_dir():
            return
        listed = set(self._index.batches)
        for candidate in self.path.iterdir():
            name = candidate.name
            stray_batch = _BATCH_RE.match(name) is not None and name not in listed
            stray_temp = name.endswith(".tmp") and (name.startswith(".batch-") or name.startswith(f".{INDEX_NAME}."))
            if (stray_batch or stray_temp) and candidate.is_file():
                candidate.unlink(missing_ok=True)

    def _load_index(self) -> _Index:
        if not self.index_path.exists():
            return _Index()
        data = read_json(self.index_path)
        model = validate_input(IndexJson, data, file=self.index_path, text="", context={})
        index = model.value()
        for number, name in enumerate(index.batches):
            if not (self.path / name).is_file():
                raise InputError(
                    f"the index references the batch file {name}, which does not exist in {self.path}",
                    file=self.index_path,
                    field=f"batches.{number}",
                )
        return index if model.version == INDEX_VERSION else self._rehashed(index)

    def _rehashed(self, index: _Index) -> _Index:
        """A version-1 index (geometry hashes) with every entry's :func:`labelled_hash`, each
        structure checked against its old hash first; written as version 2 by the next append."""
        batches = {name: self._read_batch(name) for name in index.batches}
        entries = []
        for position, entry in enumerate(index.entries):
            atoms = batches[entry.file][entry.index] if entry.index < len(batches[entry.file]) else None
            if atoms is None or structure_hash(atoms) != entry.hash:
                raise InputError(
                    "the index does not match its batch file (the file was changed after it was appended)",
                    file=self.path / entry.file,
                    field=f"entries.{position}.hash",
                )
            entries.append(replace(entry, hash=labelled_hash(atoms)))
        return _Index(index.batches, tuple(entries))


def _broadcast_provenance(provenance: Provenance | Sequence[Provenance], n: int) -> list[Provenance]:
    if isinstance(provenance, Provenance):
        return [provenance] * n
    provenances = list(provenance)
    if len(provenances) != n:
        raise ValueError(f"got {len(provenances)} provenance records for {n} structures")
    if not all(isinstance(item, Provenance) for item in provenances):
        raise TypeError("provenance must be a Provenance or a sequence of Provenance")
    return provenances


# --- index file ----------------------------------------------------------------------------


def _provenance(value: Any) -> Provenance:
    """A :class:`Provenance` from its dict (``ValueError`` names what is wrong)."""
    return value if isinstance(value, Provenance) else Provenance.from_dict(value)


class IndexEntryJson(InputModel):
    """:class:`DatasetEntry` in the index file."""

    hash: str = Field(..., description="content hash of the labelled structure (cagoflow.hashing.labelled_hash; version 1: the geometry's)")
    file: str = Field(..., description="batch file holding the structure")
    index: Count = Field(..., description="position of the structure in its batch file")
    provenance: Annotated[Provenance, PlainValidator(_provenance)] = Field(
        ..., description="where the structure came from (Provenance.to_dict)"
    )

    def value(self) -> DatasetEntry:
        """The entry as the dataset holds it."""
        return DatasetEntry(self.hash, self.file, self.index, self.provenance)


class IndexJson(InputModel):
    """The index file of a dataset (``index.json``)."""

    format: Literal[INDEX_FORMAT] = Field(..., description="identifies a dataset index")
    version: Literal[1, INDEX_VERSION] = Field(..., description="version of the index format (1: hashes of the geometry only)")
    batches: list[str] = Field(..., description="batch files in append order: batch-00000.extxyz, batch-00001.extxyz, ...")
    entries: list[IndexEntryJson] = Field(..., description="every stored structure, in append order")

    @field_validator("batches")
    @classmethod
    def _numbered(cls, batches: list[str]) -> list[str]:
        for number, name in enumerate(batches):
            if name != _BATCH_NAME.format(number):
                raise FieldError(f"expected {_BATCH_NAME.format(number)!r}, found {name!r}", number)
        return batches

    @model_validator(mode="after")
    def _consistent(self) -> "IndexJson":
        """Every entry in a listed batch; no hash and no position in a batch listed twice."""
        batches = set(self.batches)
        seen_hashes: dict[str, int] = {}
        seen_slots: set[tuple[str, int]] = set()
        for number, entry in enumerate(self.entries):
            if entry.file not in batches:
                raise FieldError(f"batch file {entry.file!r} is not listed in 'batches'", "entries", number, "file")
            if entry.hash in seen_hashes:
                raise FieldError(f"hash repeats entry {seen_hashes[entry.hash]}", "entries", number, "hash")
            if (entry.file, entry.index) in seen_slots:
                raise FieldError(f"position {entry.index} of {entry.file} is listed twice", "entries", number, "index")
            seen_hashes[entry.hash] = number
            seen_slots.add((entry.file, entry.index))
        return self

    def value(self) -> _Index:
        """The index as the dataset holds it."""
        return _Index(tuple(self.batches), tuple(entry.value() for entry in self.entries))


# --- splits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberSplit:
    """Training and validation structures of one committee member (dataset positions).

    ``train`` is a bootstrap sample (sorted, with repeats); ``validation`` holds distinct
    structures outside ``train``.
    """

    train: tuple[int, ...]
    validation: tuple[int, ...]


@dataclass(frozen=True)
class Splits:
    """A fixed test set and one bootstrap split per member (positions into the dataset).

    ``hashes`` (optional) lists the content hash of every position the splits were made for,
    so a later iteration can keep the same test structures (``fixed_test=splits.test_hashes``).
    """

    test: tuple[int, ...]
    members: tuple[MemberSplit, ...]
    hashes: tuple[str, ...] = ()

    @property
    def test_hashes(self) -> tuple[str, ...]:
        """Content hashes of the test structures (empty when ``hashes`` was not recorded)."""
        return tuple(self.hashes[i] for i in self.test) if self.hashes else ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": list(self.test),
            "members": [{"train": list(m.train), "validation": list(m.validation)} for m in self.members],
            "hashes": list(self.hashes),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Splits":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("splits: expected a JSON object")
        members = data.get("members")
        if not isinstance(members, list):
            raise ValueError("splits field 'members': expected a list")
        return cls(
            test=_int_tuple(data.get("test"), "test"),
            members=tuple(
                MemberSplit(
                    _int_tuple(_member_field(m, "train", k), f"members[{k}].train"),
                    _int_tuple(_member_field(m, "validation", k), f"members[{k}].validation"),
                )
                for k, m in enumerate(members)
            ),
            hashes=tuple(_str_list(data.get("hashes", []), "hashes")),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Splits":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Splits":
        """Read a file written by :meth:`save`; a bad file raises ``InputError`` naming it."""
        try:
            return cls.from_dict(read_json(path))
        except ValueError as exc:
            raise InputError(str(exc), file=path) from None


def _member_field(member: Any, key: str, number: int) -> Any:
    if not isinstance(member, dict):
        raise ValueError(f"splits field 'members[{number}]': expected a JSON object")
    return member.get(key)


def _int_tuple(values: Any, name: str) -> tuple[int, ...]:
    valid = isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if not valid or any(v < 0 for v in values):
        raise ValueError(f"splits field '{name}': expected a list of non-negative integers")
    return tuple(values)


def _str_list(values: Any, name: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"splits field '{name}': expected a list of strings")
    return values


def split_draw(seed: int, content_hash: str) -> float:
    """Deterministic uniform draw in [0, 1) for one structure, from the seed and its hash."""
    digest = hashlib.sha256(f"cagoflow-test-split:{int(seed)}:{content_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def make_splits_for_hashes(
    hashes: Sequence[str],
    n_members: int,
    seed: int,
    *,
    test_fraction: float = 0.1,
    train_fraction: float = 0.8,
    validation_fraction: float = 0.1,
    fixed_test: Collection[str] = (),
    min_test: int = 1,
) -> Splits:
    """Test set plus per-member bootstrap splits for structures with the given content hashes.

    Test set: structure ``i`` is a test structure when ``split_draw(seed, hashes[i]) <
    test_fraction`` or its hash is in ``fixed_test``. The draw depends only on the seed and
    the hash, so appending structures never moves a structure into or out of the test set.
    With ``n >= 2`` at least one structure is tested: if no draw falls below the fraction, the
    structure with the smallest draw is (that one may leave the test set once later structures
    draw in naturally, unless the caller passes the previous test hashes as ``fixed_test``).
    With ``n >= 2`` at least one structure also stays outside the test set. With ``min_test``,
    the structures with the smallest draws join the test set until it holds ``min_test``
    structures (at most half of them); those in ``fixed_test`` count toward it.

    Members: the pool is every non-test structure. Member ``m`` draws
    ``max(1, round(train_fraction·pool))`` structures WITH replacement (a bootstrap; repeats
    are kept) and ``round(validation_fraction·pool)`` (at least 1 when possible) distinct pool
    structures outside its training sample. Member ``m``'s draws use the random stream
    ``SeedSequence(seed).spawn(n_members)[m]``, so members differ and are reproducible.
    Positions are returned sorted.
    """
    _check_split_arguments(hashes, n_members, test_fraction, train_fraction, validation_fraction)
    test = _test_positions(hashes, seed, test_fraction, set(fixed_test), min_test)
    test_set = set(test)
    pool = np.array([i for i in range(len(hashes)) if i not in test_set], dtype=int)
    streams = np.random.SeedSequence(int(seed)).spawn(n_members)
    members = tuple(
        _member_split(pool, np.random.default_rng(stream), train_fraction, validation_fraction) for stream in streams
    )
    return Splits(test=test, members=members, hashes=tuple(hashes))


def spread_pick(walk_lengths: Sequence[int], fraction: float) -> list[int]:
    """Positions of ``fraction`` of the structures (at least one when ``fraction`` > 0 and any
    are given), spread evenly over their walk lengths (CAGO steps): the shortest, the longest
    and evenly spaced ones between, in the order of ``walk_lengths``."""
    if fraction <= 0 or not walk_lengths:
        return []
    count = min(len(walk_lengths), max(1, int(round(fraction * len(walk_lengths)))))
    order = np.argsort(np.asarray(walk_lengths), kind="stable")
    ranks = np.unique(np.round(np.linspace(0, len(order) - 1, count)).astype(int))
    return sorted(int(order[r]) for r in ranks)


def _check_split_arguments(
    hashes: Sequence[str], n_members: int, test_fraction: float, train_fraction: float, validation_fraction: float
) -> None:
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not train_fraction > 0.0:
        raise ValueError(f"train_fraction must be > 0, got {train_fraction}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if len(set(hashes)) != len(hashes):
        raise ValueError("hashes must be unique (one per structure)")


def _test_positions(
    hashes: Sequence[str], seed: int, test_fraction: float, fixed: set[str], min_test: int = 1
) -> tuple[int, ...]:
    draws = np.array([split_draw(seed, h) for h in hashes])
    in_test = np.array([d < test_fraction or h in fixed for d, h in zip(draws, hashes)], dtype=bool)
    if len(hashes) >= 2 and test_fraction > 0:
        wanted = max(1, min(min_test, len(hashes) // 2))
        for index in np.argsort(draws):
            if in_test.sum() >= wanted:
                break
            in_test[index] = True
    if len(hashes) >= 2 and in_test.all():
        in_test[int(np.argmax(np.where([h in fixed for h in hashes], -1.0, draws)))] = False
    return tuple(int(i) for i in np.flatnonzero(in_test))


def _member_split(
    pool: np.ndarray, rng: np.random.Generator, train_fraction: float, validation_fraction: float
) -> MemberSplit:
    if len(pool) == 0:
        return MemberSplit(train=(), validation=())
    n_train = max(1, int(round(train_fraction * len(pool))))
    train = np.sort(rng.choice(pool, size=n_train, replace=True))
    out_of_bag = np.setdiff1d(pool, train)
    n_validation = int(round(validation_fraction * len(pool)))
    if validation_fraction > 0 and len(out_of_bag) > 0:
        n_validation = max(1, n_validation)
    n_validation = min(n_validation, len(out_of_bag))
    validation = np.sort(rng.choice(out_of_bag, size=n_validation, replace=False))
    return MemberSplit(train=tuple(int(i) for i in train), validation=tuple(int(i) for i in validation))
