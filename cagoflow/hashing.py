"""Content hashes of structures, files and settings (used for duplicate detection and records)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from cagoflow.io import structure_labels

#: Positions and cells are snapped to this many decimals (Å) before hashing: the precision of
#: ASE's extxyz writer (positions as ``%16.8f``), so a stored structure hashes like the original.
HASH_DECIMALS = 8
_SNAP_FORMAT = f"%.{HASH_DECIMALS}f"


def _snap(values: object) -> np.ndarray:
    """``values`` as the floats parsed back from their ``%.8f`` text (-0.0 folded into 0.0).

    Exact, not ``np.round``: ``np.round(x, 8)`` can differ from the float extxyz reads back in
    the last bit. Snapping is idempotent (for |x| < 2**26 Å), so snapping a value read back from
    extxyz gives the same float as snapping the value that was written.
    """
    array = np.asarray(values, dtype=float)
    return np.char.mod(_SNAP_FORMAT, array).astype(float).reshape(array.shape) + 0.0  # +0.0 folds -0.0


def structure_hash(atoms: Atoms) -> str:
    """SHA-256 (hex) of the geometry: atomic numbers, positions, cell and periodicity.

    Positions and cell are snapped to the extxyz text precision (the float parsed back from
    ``%.8f``, 1e-8 Å), so ``structure_hash(atoms) == structure_hash(read(write(atoms)))`` holds
    exactly for an extxyz round trip (positions written as ``%16.8f``, the cell at full
    precision). Labels and ``info`` do not enter the hash.
    """
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    for array in (atoms.positions, np.asarray(atoms.cell)):
        digest.update(np.ascontiguousarray(_snap(array)).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    return digest.hexdigest()


def labelled_hash(atoms: Atoms) -> str:
    """SHA-256 (hex) of a labelled structure: its :func:`structure_hash` and its reference labels.

    Energy (eV), forces (eV/Å) and stress (eV/Å³, Voigt order) are snapped like the positions,
    so the hash survives an extxyz round trip; a structure relabelled by a new reference
    calculation hashes differently from its old label. The identity of a dataset entry.
    """
    labels = structure_labels(atoms)
    digest = hashlib.sha256(structure_hash(atoms).encode())
    for name in ("energy", "forces", "stress"):
        if name in labels:
            value = np.asarray(labels[name], dtype=float)
            value = full_3x3_to_voigt_6_stress(value) if name == "stress" and value.shape == (3, 3) else value
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(_snap(value)).tobytes())
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings: Any) -> str:
    """SHA-256 (hex) of JSON-serialisable settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
