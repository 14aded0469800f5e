"""Geometry helpers built on ASE's neighbour lists (distances in Å)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from ase.geometry import find_mic
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


def mean_neighbour_distances(atoms: Atoms, cutoff: float = PAIR_SEARCH_CUTOFF) -> dict[str, float]:
    """Per species pair (:func:`pair_name`), the mean over the atoms of either species of the
    distance to their nearest neighbour of the other species (Å, minimum image).

    A coherent compression or expansion shifts these means, while the thermal motion of single
    atoms hardly does; pairs with no partner within ``cutoff`` Å are left out.
    """
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    if not len(d):
        return {}
    partners = np.unique(atoms.numbers)
    column = np.searchsorted(partners, atoms.numbers[j])
    nearest = np.full((len(atoms), partners.size), np.inf)
    np.minimum.at(nearest, (i, column), d)
    means = {}
    for k, partner in enumerate(partners):
        for own in partners:
            has = (atoms.numbers == own) & np.isfinite(nearest[:, k])
            if has.any():
                means.setdefault(pair_name(chemical_symbols[own], chemical_symbols[partner]), []).append(nearest[has, k])
    return {name: float(np.concatenate(values).mean()) for name, values in sorted(means.items())}


def neighbour_distance_ranges(structures: Iterable[Atoms]) -> dict[str, tuple[float, float]]:
    """Smallest and largest value over ``structures`` of each species pair's
    :func:`mean_neighbour_distances` (Å): the packing the structures span."""
    ranges: dict[str, tuple[float, float]] = {}
    for atoms in structures:
        for name, value in mean_neighbour_distances(atoms).items():
            low, high = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(low, value), max(high, value))
    return dict(sorted(ranges.items()))


def ranges_including(ranges: Mapping[str, tuple[float, float]], atoms: Atoms) -> dict[str, tuple[float, float]]:
    """``ranges`` (see :func:`neighbour_distance_ranges`) widened to hold ``atoms``' own packing."""
    own = mean_neighbour_distances(atoms)
    return {
        name: (min(low, own.get(name, low)), max(high, own.get(name, high))) for name, (low, high) in ranges.items()
    }


def packing_departure(atoms: Atoms, ranges: Mapping[str, tuple[float, float]]) -> tuple[float, str | None]:
    """How far the structure's packing lies outside ``ranges`` (see :func:`neighbour_distance_ranges`):
    the largest relative distance of a pair's mean nearest-neighbour distance beyond its range
    (0 inside every range), and that pair."""
    worst, which = 0.0, None
    for name, value in mean_neighbour_distances(atoms).items():
        if name not in ranges:
            continue
        low, high = ranges[name]
        departure = max(low - value, value - high, 0.0) / max(low, 1e-12)
        if departure > worst:
            worst, which = departure, name
    return worst, which


def thermal_displacement(frames: Sequence[Atoms]) -> float | None:
    """Thermal displacement of the atoms (Å): the RMS over atoms and pairs of consecutive
    ``frames`` (frames of one MD run, in time order; minimum image) of an atom's displacement,
    divided by √2 — the spread of one frame about the next when both fluctuate independently
    about the same place. Consecutive frames keep diffusion out of it. None with fewer than two
    frames of the same atoms."""
    frames = [f for f in frames if len(f) == len(frames[0]) and (f.numbers == frames[0].numbers).all()] if frames else []
    if len(frames) < 2:
        return None
    squares = []
    for before, after in zip(frames, frames[1:]):
        delta = after.positions - before.positions
        if before.pbc.any():
            delta, _ = find_mic(delta, before.cell, before.pbc)
        squares.append(np.sum(delta**2, axis=-1))
    return float(np.sqrt(np.mean(squares) / 2))
