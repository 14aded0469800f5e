"""Starting structures built from scratch (lengths in Å, densities in g/cm³)."""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from ase.geometry import get_distances
from ase.units import _amu

#: Rigid water geometry: O–H bond length (Å) and H–O–H angle (degrees).
WATER_OH_A = 0.9572
WATER_HOH_DEG = 104.52
#: Closest allowed O–O distance between molecules, Å.
WATER_MIN_OO_A = 2.5
#: Closest allowed distance between atoms of different molecules, Å.
WATER_MIN_INTERMOLECULAR_A = 1.5

_G_PER_AMU = _amu * 1e3  # g
_A3_PER_CM3 = 1e24


def water_box(n_molecules: int, density_g_cm3: float = 1.0, seed: int = 0) -> Atoms:
    """A periodic cubic box of ``n_molecules`` randomly oriented rigid H2O at the given density.

    Oxygens sit on a cubic grid (randomly chosen sites when the grid has more sites than
    molecules); where the grid would be tighter than 2.5 Å O–O, molecules are placed at random
    instead. Atoms of different molecules are at least 1.5 Å apart, O–O at least 2.5 Å.
    The result depends only on the arguments (``seed`` fixes sites and orientations).
    Distances are checked between different molecules (minimum image), not between a molecule
    and its own images, which only matters for tiny boxes (one H2O at 1 g/cm³: 3.1 Å).
    """
    if n_molecules < 1:
        raise ValueError(f"n_molecules must be at least 1, got {n_molecules}")
    if not density_g_cm3 > 0:
        raise ValueError(f"density_g_cm3 must be positive, got {density_g_cm3}")
    rng = np.random.default_rng(seed)
    template = _water_molecule()
    edge = _cubic_edge(n_molecules * float(template.get_masses().sum()), density_g_cm3)
    cell = np.eye(3) * edge
    per_side = math.ceil(round(n_molecules ** (1 / 3), 9))
    if edge / per_side >= WATER_MIN_OO_A:
        sites = _grid_sites(per_side, edge)
        centres = sites[np.sort(rng.choice(len(sites), size=n_molecules, replace=False))]
    else:
        centres = None
    box = Atoms(cell=cell, pbc=True)
    for index in range(n_molecules):
        centre = None if centres is None else centres[index]
        box += _place_molecule(template, box, centre, edge, rng)
    return box


def _water_molecule() -> Atoms:
    """One H2O with the oxygen at the origin, Å."""
    half = math.radians(WATER_HOH_DEG) / 2
    h1 = WATER_OH_A * np.array([math.sin(half), math.cos(half), 0.0])
    h2 = WATER_OH_A * np.array([-math.sin(half), math.cos(half), 0.0])
    return Atoms("OH2", positions=[np.zeros(3), h1, h2])


def _cubic_edge(mass_amu: float, density_g_cm3: float) -> float:
    """Edge (Å) of the cube that holds ``mass_amu`` at ``density_g_cm3``."""
    volume_a3 = mass_amu * _G_PER_AMU / density_g_cm3 * _A3_PER_CM3
    return volume_a3 ** (1 / 3)


def _grid_sites(per_side: int, edge: float) -> np.ndarray:
    """(per_side³, 3) points of a simple cubic grid filling a cube of ``edge`` Å."""
    axis = (np.arange(per_side) + 0.5) * edge / per_side
    return np.array(np.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1).T


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3×3 rotation matrix (from a random unit quaternion)."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _place_molecule(
    template: Atoms, box: Atoms, centre: np.ndarray | None, edge: float, rng: np.random.Generator, tries: int = 10000
) -> Atoms:
    """A copy of ``template`` with its O at ``centre`` (random if None) that keeps clear of ``box``."""
    for _ in range(tries):
        origin = rng.uniform(0.0, edge, size=3) if centre is None else centre
        molecule = template.copy()
        molecule.positions = molecule.positions @ _random_rotation(rng).T + origin
        if len(box) == 0 or _clear_of(molecule, box):
            return molecule
    raise ValueError(
        f"could not place {len(box) // 3 + 1} water molecules in a {edge:.2f} Å box "
        f"(O–O ≥ {WATER_MIN_OO_A} Å, other atoms ≥ {WATER_MIN_INTERMOLECULAR_A} Å): lower the density"
    )


def _clear_of(molecule: Atoms, box: Atoms) -> bool:
    """True when ``molecule`` keeps the minimum distances to every atom of ``box`` (minimum image)."""
    _, distances = get_distances(molecule.positions, box.positions, cell=box.cell, pbc=box.pbc)
    oxygens = box.numbers == 8
    return bool(distances.min() >= WATER_MIN_INTERMOLECULAR_A and distances[0, oxygens].min() >= WATER_MIN_OO_A)
