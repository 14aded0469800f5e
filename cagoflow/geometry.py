"""Geometry helpers built on ASE's neighbour lists (distances in Å)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list


def min_interatomic_distance(atoms: Atoms, cutoff: float = 3.0) -> float:
    """Smallest interatomic distance in Å (minimum image under periodic boundaries).

    Returns ``inf`` when no pair lies within ``cutoff`` Å (or for a single atom).
    """
    if len(atoms) < 2 and not atoms.pbc.any():
        return float("inf")
    distances = neighbor_list("d", atoms, cutoff)
    return float(distances.min()) if len(distances) else float("inf")


def close_pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, cell shift S) closer than ``cutoff`` Å, each unordered pair once.

    The pair vector is ``positions[j] - positions[i] + S @ cell``.
    """
    i, j, shifts = neighbor_list("ijS", atoms, cutoff)
    keep = (i < j) | ((i == j) & _positive_shift(shifts))
    return i[keep], j[keep], shifts[keep].astype(float)


def _positive_shift(shifts: np.ndarray) -> np.ndarray:
    """True for the one of each +S/-S pair of self-image shifts that is lexicographically positive."""
    first_nonzero = np.argmax(shifts != 0, axis=1)
    return shifts[np.arange(len(shifts)), first_nonzero] > 0
