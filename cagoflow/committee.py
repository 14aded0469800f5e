"""The committee protocol: batched per-member predictions and their statistics.

A committee predicts energies, forces and virials for MANY structures in one call, for all
members at once. Statistics (the committee spread σ̂ of each quantity) are derived from those
arrays. The statistics functions are written with operations that NumPy arrays and torch
tensors share, so the CAGO objective can use them with autograd too.

Conventions
-----------
- energies in eV, forces in eV/Å, virials in eV with ``W = -V·stress`` (ASE's stress sign),
  i.e. ``W = -dE/dη`` for a strain η. Pressure ``P = tr(W)/(3V)``.
- Forces of all structures in a batch are concatenated along the atom axis (ragged batches
  of different sizes are allowed); ``natoms`` gives the number of atoms per structure.
- Committee spreads use the unbiased estimator (ddof = 1), as in the paper:
  σ̂² = 1/(M−1) Σ_m (ŷ_m − ȳ)².
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from ase import Atoms

#: Floor added under square roots of variances (eV²/Å²) so gradients stay finite at σ̂ = 0.
VARIANCE_FLOOR = 1e-24


@dataclass(frozen=True)
class CommitteePrediction:
    """Per-member predictions for a batch of S structures with A atoms in total.

    Attributes:
        energies: (M, S) total energies, eV.
        forces: (M, A, 3) forces, eV/Å; structures concatenated along the atom axis.
        natoms: (S,) number of atoms of each structure.
        virials: (M, S, 3, 3) virials, eV (``-V·stress``); NaN for non-periodic structures.
            ``None`` when the committee does not predict virials.
    """

    energies: np.ndarray
    forces: np.ndarray
    natoms: np.ndarray
    virials: np.ndarray | None = None

    @property
    def n_members(self) -> int:
        return int(self.energies.shape[0])

    @property
    def n_structures(self) -> int:
        return int(self.energies.shape[1])

    @property
    def offsets(self) -> np.ndarray:
        """(S + 1,) start index of each structure's atoms in :attr:`forces`."""
        return np.concatenate([[0], np.cumsum(self.natoms)])

    def structure_forces(self, index: int) -> np.ndarray:
        """(M, N, 3) forces of structure ``index``."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.forces[:, start:stop]

    def uniform_forces(self) -> np.ndarray:
        """(M, S, N, 3) forces when all structures have the same number of atoms N."""
        if len(set(self.natoms.tolist())) != 1:
            raise ValueError("structures of the batch have different numbers of atoms")
        return self.forces.reshape(self.n_members, self.n_structures, int(self.natoms[0]), 3)

    def members(self, indices: Sequence[int]) -> "CommitteePrediction":
        """The same prediction restricted to the given members."""
        idx = np.asarray(indices, dtype=int)
        virials = None if self.virials is None else self.virials[idx]
        return CommitteePrediction(self.energies[idx], self.forces[idx], self.natoms, virials)

    @staticmethod
    def concatenate(parts: Sequence["CommitteePrediction"]) -> "CommitteePrediction":
        """Join predictions of consecutive batches (same members) into one."""
        virials = None
        if all(part.virials is not None for part in parts):
            virials = np.concatenate([part.virials for part in parts], axis=1)
        return CommitteePrediction(
            energies=np.concatenate([part.energies for part in parts], axis=1),
            forces=np.concatenate([part.forces for part in parts], axis=1),
            natoms=np.concatenate([part.natoms for part in parts]),
            virials=virials,
        )


@runtime_checkable
class Committee(Protocol):
    """A committee of M models that predicts many structures per call."""

    @property
    def n_members(self) -> int:
        """Number of members M."""
        ...

    def predict(self, structures: Sequence[Atoms]) -> CommitteePrediction:
        """Energies, forces and virials of every member for every structure (one batched call)."""
        ...

    def subset(self, members: Sequence[int]) -> "Committee":
        """A committee made of the given members (indices into this committee)."""
        ...


#: ``energy_fn(positions (M, A, 3), cells (M, S, 3, 3)) -> energies (M, S)``, torch tensors, eV:
#: S structures with A atoms in all (concatenated in order), one copy per member.
MemberEnergyFunction = Callable[[Any, Any], Any]


@runtime_checkable
class DifferentiableCommittee(Committee, Protocol):
    """A committee whose energies are differentiable torch functions of positions and cell.

    CAGO uses this for the exact gradient of its objective (double backpropagation through
    forces = −∂E/∂x), see :class:`cagoflow.cago_gradients.ExactGradient`.
    """

    def torch_energy(self, structures: Sequence[Atoms]) -> MemberEnergyFunction:
        """Energy function of all members near ``structures`` (same species and sizes,
        neighbours built here): every structure of a CAGO round in one differentiable call."""
        ...


# --- statistics (shared by NumPy and torch arrays) -------------------------------------------


def member_variance(values: Any) -> Any:
    """Unbiased variance over the member axis 0 (ddof = 1); works for NumPy and torch."""
    n_members = values.shape[0]
    if n_members < 2:
        raise ValueError("a committee spread needs at least two members")
    deviation = values - values.mean(0)
    return (deviation * deviation).sum(0) / (n_members - 1)


def force_sigma_hat(forces: Any) -> Any:
    """Per-atom committee force uncertainty σ̂_F_i (eq. 9 of the paper), eV/Å.

    σ̂_F_i = sqrt(σ̂²_|F_ix| + σ̂²_|F_iy| + σ̂²_|F_iz|), the spread of the ABSOLUTE force
    components. ``forces``: (M, ..., 3) → result (...,).
    """
    return (member_variance(abs(forces)).sum(-1) + VARIANCE_FLOOR) ** 0.5


def member_std(values: Any) -> Any:
    """Committee standard deviation over axis 0 (ddof = 1)."""
    return (member_variance(values) + VARIANCE_FLOOR) ** 0.5


@dataclass(frozen=True)
class CommitteeStatistics:
    """Committee means and spreads of a batch (shapes as in :class:`CommitteePrediction`).

    Attributes:
        energy_mean, energy_std: (S,) eV.
        force_mean, force_std: (A, 3) eV/Å, per Cartesian component.
        abs_force_std: (A, 3) eV/Å, spread of |F_ix|, |F_iy|, |F_iz|.
        force_sigma: (A,) eV/Å, σ̂_F_i of eq. (9).
        virial_mean, virial_std: (S, 3, 3) eV, or None.
    """

    energy_mean: np.ndarray
    energy_std: np.ndarray
    force_mean: np.ndarray
    force_std: np.ndarray
    abs_force_std: np.ndarray
    force_sigma: np.ndarray
    virial_mean: np.ndarray | None
    virial_std: np.ndarray | None


def committee_statistics(prediction: CommitteePrediction, *, allow_one_member: bool = False) -> CommitteeStatistics:
    """Means and spreads of every predicted quantity.

    A committee of one member has no spread: it raises ValueError, unless ``allow_one_member``,
    where its means are its predictions and every spread is NaN (the unbiased estimator divides
    by M − 1 = 0; NaN rather than 0, so a single model is never taken for a certain one). This
    lets a single member drive MD; whatever needs a spread (CAGO, calibration) still refuses it.
    """
    undefined = allow_one_member and prediction.n_members == 1
    std = _undefined_spread if undefined else member_std
    virials = prediction.virials
    return CommitteeStatistics(
        energy_mean=prediction.energies.mean(0),
        energy_std=std(prediction.energies),
        force_mean=prediction.forces.mean(0),
        force_std=std(prediction.forces),
        abs_force_std=std(np.abs(prediction.forces)),
        force_sigma=std(prediction.forces[..., 0]) if undefined else force_sigma_hat(prediction.forces),
        virial_mean=None if virials is None else virials.mean(0),
        virial_std=None if virials is None else std(virials),
    )


def _undefined_spread(values: np.ndarray) -> np.ndarray:
    """NaN of the shape of a spread over the member axis 0 (one member has none)."""
    return np.full(values.shape[1:], np.nan)


def predict_in_batches(committee: Committee, structures: Sequence[Atoms], batch_size: int | None) -> CommitteePrediction:
    """Predict ``structures`` in chunks of ``batch_size`` (``None``: all in one call)."""
    if batch_size is None or batch_size >= len(structures):
        return committee.predict(structures)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    parts = [committee.predict(structures[k : k + batch_size]) for k in range(0, len(structures), batch_size)]
    return CommitteePrediction.concatenate(parts)


def virial_from_stress(stress_voigt: np.ndarray, volume: float) -> np.ndarray:
    """(3, 3) virial in eV from ASE's Voigt stress (xx, yy, zz, yz, xz, xy) in eV/Å³."""
    from ase.stress import voigt_6_to_full_3x3_stress

    return -volume * voigt_6_to_full_3x3_stress(np.asarray(stress_voigt))
