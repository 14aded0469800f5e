"""Geometry helpers built on ASE's neighbour lists (distances in Å)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.neighborlist import neighbor_list

#: Pairs farther apart than this (Å) are not looked at by :func:`shortest_pair_distances`.
PAIR_SEARCH_CUTOFF = 4.0


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


def pair_name(symbol_a: str, symbol_b: str) -> str:
    """``"H-O"``: the two symbols in the order of increasing atomic number."""
    a, b = sorted((symbol_a, symbol_b), key=lambda s: atomic_numbers[s])
    return f"{a}-{b}"


def pair_names(atoms: Atoms, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The species pair (:func:`pair_name`) of each atom pair (i, j)."""
    low = np.minimum(atoms.numbers[i], atoms.numbers[j])
    high = np.maximum(atoms.numbers[i], atoms.numbers[j])
    return np.array([f"{chemical_symbols[a]}-{chemical_symbols[b]}" for a, b in zip(low, high)], dtype=object)


def shortest_pair_distances(structures: Iterable[Atoms], cutoff: float = PAIR_SEARCH_CUTOFF) -> dict[str, float]:
    """Shortest distance (Å, minimum image) of every species pair over ``structures``.

    Pairs that never come closer than ``cutoff`` Å are left out.
    """
    shortest: dict[str, float] = {}
    for atoms in structures:
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        if not len(d):
            continue
        names = pair_names(atoms, i, j)
        for name in np.unique(names):
            value = float(d[names == name].min())
            shortest[name] = min(value, shortest.get(name, np.inf))
    return dict(sorted(shortest.items()))


def closest_contact(atoms: Atoms, limits: Mapping[str, float]) -> tuple[float, str | None]:
    """The smallest ratio distance / limit over the pairs whose species have a limit (Å), and
    that pair's name; ``(inf, None)`` when no such pair lies within its limit's range."""
    if not limits:
        return float("inf"), None
    i, j, d = neighbor_list("ijd", atoms, max(limits.values()))
    if not len(d):
        return float("inf"), None
    names = pair_names(atoms, i, j)
    ratios = np.array([d[k] / limits[name] if name in limits else np.inf for k, name in enumerate(names)])
    best = int(np.argmin(ratios))
    return (float(ratios[best]), str(names[best])) if np.isfinite(ratios[best]) else (float("inf"), None)
