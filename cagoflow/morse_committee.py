"""An analytic committee: Morse pair potentials whose parameters differ member by member.

The committee spread of such a model is smooth and known, which makes it the test bed of the
statistics, the calibration and the CAGO optimizer: fast, differentiable (torch, float64) and
batched over structures and members in one call. :class:`MorseCalculator` is one member (or the
unperturbed "truth") as an ordinary ASE calculator, used as a cheap reference engine in tests.
A committee file names it ``backend: morse`` (:mod:`cagoflow.models`); the trainable Morse
members of ``backend: analytic`` are :mod:`cagoflow.backends.analytic`.

Energy of one member (eV):  E = Σ_{i<j} D_ij [e^{−2α_ij (r−r0_ij)} − 2 e^{−α_ij (r−r0_ij)}] · f_c(r),
with a smooth (C², quintic) switch f_c from 1 at ``cutoff − switch_width`` to 0 at ``cutoff`` (Å).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers, covalent_radii

from cagoflow.committee import CommitteePrediction
from cagoflow.geometry import close_pairs


@dataclass(frozen=True)
class MorsePair:
    """Morse parameters of one species pair: depth ``D`` (eV), width ``alpha`` (1/Å), minimum ``r0`` (Å)."""

    D: float
    alpha: float
    r0: float


def default_pair(symbol_a: str, symbol_b: str) -> MorsePair:
    """Generic parameters: minimum at the sum of covalent radii; deep between unlike species."""
    r0 = float(covalent_radii[atomic_numbers[symbol_a]] + covalent_radii[atomic_numbers[symbol_b]])
    if symbol_a == symbol_b:
        return MorsePair(D=0.1, alpha=1.5, r0=max(r0, 1.5))
    return MorsePair(D=1.0, alpha=1.5, r0=r0)


def _pair_key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class MorseModel:
    """Parameters of M committee members over a set of species (eV, 1/Å, Å).

    ``D``, ``alpha`` and ``r0`` have shape (M, Z, Z) for the ``species`` (atomic numbers, sorted).
    """

    species: tuple[int, ...]
    D: np.ndarray
    alpha: np.ndarray
    r0: np.ndarray
    cutoff: float = 5.0
    switch_width: float = 1.0

    @classmethod
    def from_pairs(
        cls,
        pairs: Mapping[tuple[str, str], MorsePair],
        *,
        n_members: int = 1,
        spread: float = 0.0,
        seed: int = 0,
        cutoff: float = 5.0,
        switch_width: float = 1.0,
    ) -> "MorseModel":
        """Members whose parameters are the given ones times ``1 + spread·N(0, 1)`` (seeded)."""
        species = tuple(sorted({atomic_numbers[s] for pair in pairs for s in pair}))
        index = {z: k for k, z in enumerate(species)}
        rng = np.random.default_rng(seed)
        arrays = {name: np.zeros((n_members, len(species), len(species))) for name in ("D", "alpha", "r0")}
        for (sa, sb), pair in sorted(pairs.items()):
            ia, ib = index[atomic_numbers[sa]], index[atomic_numbers[sb]]
            for name in ("D", "alpha", "r0"):
                values = getattr(pair, name) * (1.0 + spread * rng.standard_normal(n_members))
                arrays[name][:, ia, ib] = values
                arrays[name][:, ib, ia] = values
        return cls(species, arrays["D"], arrays["alpha"], arrays["r0"], cutoff, switch_width)

    @classmethod
    def for_symbols(cls, symbols: Sequence[str], **kwargs) -> "MorseModel":
        """Generic parameters (:func:`default_pair`) for every pair of the given species."""
        unique = sorted(set(symbols), key=lambda s: atomic_numbers[s])
        pairs = {(a, b): default_pair(a, b) for k, a in enumerate(unique) for b in unique[k:]}
        return cls.from_pairs(pairs, **kwargs)

    @property
    def n_members(self) -> int:
        return int(self.D.shape[0])

    def members(self, indices: Sequence[int]) -> "MorseModel":
        idx = np.asarray(indices, dtype=int)
        return replace(self, D=self.D[idx], alpha=self.alpha[idx], r0=self.r0[idx])

    def type_indices(self, numbers: np.ndarray) -> np.ndarray:
        """Index of each atomic number in :attr:`species`; unknown species raise ValueError."""
        lookup = {z: k for k, z in enumerate(self.species)}
        try:
            return np.array([lookup[int(z)] for z in numbers], dtype=int)
        except KeyError as exc:
            raise ValueError(f"the Morse model has no parameters for atomic number {exc.args[0]}") from None


@dataclass(frozen=True)
class PairList:
    """Pairs within the cutoff of a batch of structures, atoms numbered across the batch.

    ``shifts`` are the Cartesian periodic-image offsets (Å) of each pair in its own cell;
    the pair vector is ``positions[j] − positions[i] + shifts``.
    """

    i: np.ndarray
    j: np.ndarray
    shift_images: np.ndarray
    structure: np.ndarray
    pair_type: tuple[np.ndarray, np.ndarray]
    natoms: np.ndarray


#: Extra neighbour-list range (Å): a list built with it serves every structure of a batch whose
#: atoms lie within half of it of the structure it was built for (finite-difference batches).
SKIN = 0.5


def _close_to(atoms: Atoms, anchor: Atoms) -> bool:
    """Whether ``anchor``'s skinned neighbour list also holds every pair of ``atoms``."""
    return (
        len(atoms) == len(anchor)
        and np.array_equal(atoms.numbers, anchor.numbers)
        and np.array_equal(atoms.pbc, anchor.pbc)
        and np.abs(atoms.positions - anchor.positions).max(initial=0.0) < SKIN / 4
        and np.abs(np.asarray(atoms.cell) - np.asarray(anchor.cell)).max() < SKIN / 4
    )


def build_pairs(structures: Sequence[Atoms], model: MorseModel) -> PairList:
    """Half neighbour lists of all structures, concatenated (atoms numbered across the batch).

    Lists are built with ``cutoff + SKIN`` and reused for later structures that are close to
    the one a list was built for (pairs beyond the cutoff contribute exactly zero).
    """
    parts_i, parts_j, parts_s, parts_k, types_a, types_b = [], [], [], [], [], []
    offset = 0
    anchor, anchor_list = None, None
    for k, atoms in enumerate(structures):
        if anchor is None or not _close_to(atoms, anchor):
            anchor, anchor_list = atoms, close_pairs(atoms, model.cutoff + SKIN)
        i, j, shifts = anchor_list
        types = model.type_indices(atoms.numbers)
        parts_i.append(i + offset)
        parts_j.append(j + offset)
        parts_s.append(shifts)
        parts_k.append(np.full(i.size, k))
        types_a.append(types[i])
        types_b.append(types[j])
        offset += len(atoms)
    return PairList(
        i=np.concatenate(parts_i),
        j=np.concatenate(parts_j),
        shift_images=np.concatenate(parts_s).reshape(-1, 3),
        structure=np.concatenate(parts_k),
        pair_type=(np.concatenate(types_a), np.concatenate(types_b)),
        natoms=np.array([len(a) for a in structures], dtype=int),
    )


def _switch(r, r_on: float, r_off: float):
    """C² quintic switch: 1 below ``r_on``, 0 above ``r_off`` (torch)."""
    import torch

    t = torch.clamp((r - r_on) / (r_off - r_on), 0.0, 1.0)
    return 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)


def pair_energies(model: MorseModel, pairs: PairList, positions, cells):
    """Energy (eV) of every member for every structure, shape (M, S), as a torch expression.

    ``positions``: (M, A, 3) Å, one copy per member so that per-member forces come out of one
    backward pass; ``cells``: (M, S, 3, 3) Å (rows are cell vectors).
    """
    import torch

    i = torch.as_tensor(pairs.i)
    j = torch.as_tensor(pairs.j)
    s = torch.as_tensor(pairs.structure)
    images = torch.as_tensor(pairs.shift_images, dtype=positions.dtype)
    shifts = torch.einsum("pk,mpkl->mpl", images, cells[:, s])
    vectors = positions[:, j] - positions[:, i] + shifts
    r = torch.linalg.norm(vectors, dim=-1)
    ta, tb = (torch.as_tensor(t) for t in pairs.pair_type)
    D, alpha, r0 = (torch.as_tensor(getattr(model, name))[:, ta, tb] for name in ("D", "alpha", "r0"))
    x = torch.exp(-alpha * (r - r0))
    per_pair = D * (x * x - 2.0 * x) * _switch(r, model.cutoff - model.switch_width, model.cutoff)
    n_structures = len(pairs.natoms)
    energies = torch.zeros(positions.shape[0], n_structures, dtype=positions.dtype)
    return energies.index_add(1, s, per_pair)


class MorseCommittee:
    """A committee of Morse pair potentials: batched, differentiable, energies/forces/virials.

    Implements :class:`cagoflow.committee.DifferentiableCommittee`.
    """

    def __init__(self, model: MorseModel):
        self.model = model

    @property
    def n_members(self) -> int:
        return self.model.n_members

    def subset(self, members: Sequence[int]) -> "MorseCommittee":
        return MorseCommittee(self.model.members(members))

    def predict(self, structures: Sequence[Atoms]) -> CommitteePrediction:
        """All members, all structures, one torch evaluation; virials NaN for non-periodic cells."""
        import torch

        structures = list(structures)
        pairs = build_pairs(structures, self.model)
        M = self.n_members
        positions0 = torch.as_tensor(np.concatenate([a.positions for a in structures]), dtype=torch.float64)
        cells0 = torch.as_tensor(np.stack([np.asarray(a.cell) for a in structures]), dtype=torch.float64)
        strain = torch.zeros(M, len(structures), 3, 3, dtype=torch.float64, requires_grad=True)
        positions = positions0.expand(M, -1, -1).clone().requires_grad_(True)
        deform = torch.eye(3, dtype=torch.float64) + strain
        atom_structure = torch.as_tensor(np.repeat(np.arange(len(structures)), pairs.natoms))
        strained_positions = torch.einsum("mak,makl->mal", positions, deform[:, atom_structure])
        strained_cells = cells0 @ deform
        energies = pair_energies(self.model, pairs, strained_positions, strained_cells)
        grad_positions, grad_strain = torch.autograd.grad(energies.sum(), (positions, strain))
        virials = -grad_strain.detach().numpy()
        periodic = np.array([a.pbc.all() for a in structures])
        virials[:, ~periodic] = np.nan
        return CommitteePrediction(
            energies=energies.detach().numpy(),
            forces=-grad_positions.numpy(),
            natoms=pairs.natoms,
            virials=virials,
        )

    def torch_energy(self, structures: Sequence[Atoms]):
        """``fn(positions (M, A, 3), cells (M, S, 3, 3)) -> energies (M, S)`` near ``structures`` (torch)."""
        pairs = build_pairs(list(structures), self.model)

        def energy(positions, cells):
            return pair_energies(self.model, pairs, positions, cells)

        return energy


class MorseCalculator(Calculator):
    """One member of a :class:`MorseModel` (member 0 by default) as an ASE calculator."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: MorseModel, member: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.committee = MorseCommittee(model.members([member]))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        prediction = self.committee.predict([self.atoms])
        energy = float(prediction.energies[0, 0])
        self.results = {"energy": energy, "free_energy": energy, "forces": prediction.forces[0]}
        if self.atoms.pbc.all():
            virial = prediction.virials[0, 0]
            stress = -virial / self.atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
