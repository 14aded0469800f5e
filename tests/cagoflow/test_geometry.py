"""Tests of cagoflow.geometry against hand-made structures and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from cagoflow.geometry import close_pairs, min_interatomic_distance


def brute_force_pairs(atoms: Atoms, cutoff: float) -> dict[tuple[int, int, tuple[int, ...]], float]:
    """Every unordered pair (i, j, S) closer than ``cutoff``, canonical form, with its distance.

    ``(i, j, S)`` and ``(j, i, -S)`` are the same pair; the canonical form has ``i < j``, or
    ``i == j`` and the first nonzero component of ``S`` positive. Atoms must lie inside the
    cell; enough image cells are searched to reach ``cutoff`` from anywhere in it.
    """
    cell = np.asarray(atoms.cell)
    volume = abs(np.linalg.det(cell)) if atoms.pbc.any() else 1.0
    heights = [volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
    reach = int(math.ceil(cutoff / min(h for h, p in zip(heights, atoms.pbc) if p))) + 1 if atoms.pbc.any() else 0
    ranges = [range(-reach, reach + 1) if periodic else range(1) for periodic in atoms.pbc]
    pairs = {}
    for shift in itertools.product(*ranges):
        offset = np.asarray(shift, dtype=float) @ cell
        for i, j in itertools.product(range(len(atoms)), repeat=2):
            distance = float(np.linalg.norm(atoms.positions[j] - atoms.positions[i] + offset))
            if not 0.0 < distance < cutoff:
                continue
            opposite = tuple(-s for s in shift)
            if i < j:
                key = (i, j, shift)
            elif i > j:
                key = (j, i, opposite)
            else:  # a self-image: keep the one of +S / -S whose first nonzero component is positive
                key = (i, i, shift if next(s for s in shift if s != 0) > 0 else opposite)
            pairs[key] = distance
    return pairs


def as_keys(i: np.ndarray, j: np.ndarray, shifts: np.ndarray) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(int(a), int(b), tuple(int(round(s)) for s in shift)) for a, b, shift in zip(i, j, shifts)]


# --- min_interatomic_distance --------------------------------------------------------------


def test_min_distance_of_a_molecule():
    water = molecule("H2O")
    expected = min(water.get_distance(a, b) for a, b in itertools.combinations(range(3), 2))
    assert min_interatomic_distance(water) == pytest.approx(expected, abs=1e-12)


def test_min_distance_with_and_without_periodic_images():
    atoms = Atoms("H2", positions=[[0.5, 1.0, 1.0], [3.0, 1.0, 1.0]], cell=[4.0, 4.0, 4.0], pbc=False)
    assert min_interatomic_distance(atoms) == pytest.approx(2.5)  # direct distance

    atoms.pbc = True
    assert min_interatomic_distance(atoms) == pytest.approx(1.5)  # through the x boundary

    atoms.pbc = [False, True, True]  # x is not periodic: only the direct distance
    assert min_interatomic_distance(atoms) == pytest.approx(2.5)


def test_min_distance_beyond_cutoff_is_inf():
    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    assert min_interatomic_distance(atoms) == math.inf  # default cutoff 3 Å
    assert min_interatomic_distance(atoms, cutoff=5.0) == pytest.approx(4.0)


def test_single_atom():
    assert min_interatomic_distance(Atoms("Cu", positions=[[0.0, 0.0, 0.0]])) == math.inf
    big_box = Atoms("Cu", positions=[[1.0, 1.0, 1.0]], cell=[10.0, 10.0, 10.0], pbc=True)
    assert min_interatomic_distance(big_box) == math.inf
    # in a small periodic cell the atom sees its own images
    small_box = Atoms("Cu", positions=[[0.3, 0.2, 0.1]], cell=[2.5, 2.8, 2.9], pbc=True)
    assert min_interatomic_distance(small_box) == pytest.approx(2.5)


# --- close_pairs ---------------------------------------------------------------------------


def test_close_pairs_of_a_molecule():
    water = molecule("H2O")
    i, j, shifts = close_pairs(water, cutoff=1.2)
    assert as_keys(i, j, shifts) == [(0, 1, (0, 0, 0)), (0, 2, (0, 0, 0))]  # O-H twice, no H-H (1.5 Å)
    assert shifts.dtype == float


@pytest.mark.parametrize(
    ("cell", "pbc"),
    [
        ([[2.6, 0.0, 0.0], [0.4, 2.4, 0.0], [-0.3, 0.5, 2.7]], True),  # triclinic, self-images in all directions
        ([[2.2, 0.0, 0.0], [0.0, 3.5, 0.0], [0.0, 0.0, 6.0]], [True, True, False]),  # slab
        ([[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]], False),  # no images at all
    ],
    ids=["triclinic", "slab", "molecule"],
)
def test_close_pairs_match_brute_force(cell, pbc):
    rng = np.random.default_rng(7)
    atoms = Atoms("CHON", scaled_positions=rng.uniform(0.0, 1.0, (4, 3)), cell=cell, pbc=pbc)
    cutoff = 3.0

    i, j, shifts = close_pairs(atoms, cutoff)
    keys = as_keys(i, j, shifts)
    expected = brute_force_pairs(atoms, cutoff)

    assert len(keys) == len(set(keys))  # each unordered pair once
    assert set(keys) == set(expected)
    assert all(a <= b for a, b, _ in keys)
    vectors = atoms.positions[j] - atoms.positions[i] + shifts @ np.asarray(atoms.cell)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [expected[key] for key in keys], atol=1e-10)
    if atoms.pbc.all():
        assert any(a == b for a, b, _ in keys)  # the small cell has self-image pairs


def test_close_pairs_self_images_of_a_single_atom():
    atoms = Atoms("Cu", positions=[[0.1, 0.2, 0.3]], cell=[2.0, 2.5, 10.0], pbc=True)

    i, j, shifts = close_pairs(atoms, cutoff=3.0)

    keys = set(as_keys(i, j, shifts))
    # images at +-x (2.0 Å) and +-y (2.5 Å) are within 3 Å, the xy diagonals (3.2 Å) are not
    assert keys == {(0, 0, (1, 0, 0)), (0, 0, (0, 1, 0))}
    assert len(i) == 2


def test_mean_neighbour_distances_and_packing_departure():
    """A box compressed by 5 % in every direction leaves the packing range of the box by 5 %
    for every species pair; a copy of the box departs by nothing."""
    from cagoflow.geometry import mean_neighbour_distances, neighbour_distance_ranges, packing_departure
    from cagoflow.structures import water_box

    box = water_box(8, seed=0)
    ranges = neighbour_distance_ranges([box])
    assert set(ranges) == {"H-H", "H-O", "O-O"} and all(low == high for low, high in ranges.values())
    assert packing_departure(box.copy(), ranges) == (0.0, None)
    squeezed = box.copy()
    squeezed.set_cell(box.cell * 0.95, scale_atoms=True)
    departure, _ = packing_departure(squeezed, ranges)
    assert departure == pytest.approx(0.05)
    assert mean_neighbour_distances(squeezed)["O-O"] == pytest.approx(0.95 * mean_neighbour_distances(box)["O-O"])


def test_thermal_displacement_between_consecutive_frames():
    """One atom of four hops by 0.4 Å between consecutive frames: RMS over atoms 0.2 Å, / √2;
    a single frame gives None."""
    from ase import Atoms

    from cagoflow.geometry import thermal_displacement

    frames = []
    for k in range(5):
        atoms = Atoms("H4", positions=[[0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]], cell=[8, 8, 8], pbc=True)
        atoms.positions[0, 0] += 0.4 * (k % 2)
        frames.append(atoms)
    assert thermal_displacement(frames) == pytest.approx(0.2 / np.sqrt(2))
    assert thermal_displacement(frames[:1]) is None
