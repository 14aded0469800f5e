"""Filters before and after the reference calculation; every rejection keeps its reason.

Defaults are the paper's thresholds (Cezar et al. 2025):

- after CAGO (:func:`pre_filter`): largest committee-mean atomic force above 40 eV/Å, or two
  atoms closer than 0.75 Å → drop; optionally, structures CAGO flagged (reached δ suspiciously
  fast, or stopped at the close-contact guard) → drop;
- after the reference (:func:`post_filter`): missing or non-finite labels, a reference that did
  not converge, or a largest reference atomic force above 30 eV/Å → drop.

"Largest force" is the largest per-atom force norm |F_i| of the structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence, TypeVar

import numpy as np
from ase import Atoms
from pydantic import Field

from cagoflow.geometry import min_interatomic_distance
from cagoflow.inputs import InputModel
from cagoflow.io import structure_labels

#: ``atoms.info`` key where reference engines record their outcome.
REFERENCE_STATUS_KEY = "reference_status"
#: ``atoms.info`` key where CAGO records its flags (space-separated, "none" when unflagged).
CAGO_FLAGS_KEY = "cago_flags"
#: Status values that count as a converged reference calculation.
CONVERGED_STATUSES = frozenset({"converged"})

T = TypeVar("T")


class PreFilterSettings(InputModel):
    """Checks of CAGO structures before the reference (null disables a threshold)."""

    max_mean_force: float | None = Field(40.0, gt=0, description="largest committee-mean atomic force norm, eV/Å")
    min_distance: float | None = Field(0.75, gt=0, description="smallest interatomic distance, Å")
    drop_flagged: tuple[Literal["fast", "contact", "trust_region", "packing"], ...] = Field(
        (), description="drop CAGO structures flagged so: 'fast' (reached δ in ≤ cago.fast_steps steps), or a limit a "
        "step touched: 'contact' (close-contact guard), 'trust_region', 'packing' (packing guard)"
    )


class PostFilterSettings(InputModel):
    """Checks of reference-labelled structures (null disables a threshold)."""

    max_reference_force: float | None = Field(30.0, gt=0, description="largest reference atomic force norm, eV/Å")
    require_converged: bool = Field(
        True, description="drop structures whose info['reference_status'] is present and not 'converged'"
    )


class FilterSettings(InputModel):
    """Filters before and after the reference calculation."""

    pre: PreFilterSettings = Field(PreFilterSettings(), description="after CAGO, before the reference")
    post: PostFilterSettings = Field(PostFilterSettings(), description="after the reference, before the dataset")


@dataclass(frozen=True)
class Rejection:
    """A dropped structure (position in the filtered sequence) and why, with the numbers."""

    index: int
    reason: str


@dataclass(frozen=True)
class FilterResult:
    """Positions kept and rejections, both in input order."""

    kept: tuple[int, ...]
    rejected: tuple[Rejection, ...]

    def select(self, items: Sequence[T]) -> list[T]:
        """The kept items of ``items`` (structures, or anything aligned with them)."""
        return [items[i] for i in self.kept]

    @property
    def reasons(self) -> dict[int, str]:
        """Rejection reason by position."""
        return {rejection.index: rejection.reason for rejection in self.rejected}


def max_atomic_force(forces: np.ndarray) -> float:
    """Largest per-atom force norm of an (N, 3) array, eV/Å (0 for no atoms)."""
    forces = np.asarray(forces, dtype=float).reshape(-1, 3)
    return float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0


def pre_filter(
    structures: Sequence[Atoms],
    mean_forces: Sequence[np.ndarray],
    settings: PreFilterSettings = PreFilterSettings(),
) -> FilterResult:
    """Drop CAGO structures with too large committee-mean forces or too close atoms.

    ``mean_forces[i]``: (N_i, 3) committee-mean forces of ``structures[i]``, eV/Å.
    """
    if len(mean_forces) != len(structures):
        raise ValueError(f"got mean forces for {len(mean_forces)} structures, expected {len(structures)}")
    reasons = [_pre_reasons(atoms, forces, settings) for atoms, forces in zip(structures, mean_forces)]
    return _result(reasons)


def post_filter(structures: Sequence[Atoms], settings: PostFilterSettings = PostFilterSettings()) -> FilterResult:
    """Drop reference-labelled structures that are unlabelled, unconverged or too strained."""
    return _result([_post_reasons(atoms, settings) for atoms in structures])


def _pre_reasons(atoms: Atoms, mean_forces: np.ndarray, settings: PreFilterSettings) -> list[str]:
    forces = np.asarray(mean_forces, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"mean forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    reasons = []
    if not np.isfinite(forces).all():
        reasons.append("committee-mean forces are not finite")
    elif settings.max_mean_force is not None:
        largest = max_atomic_force(forces)
        if largest > settings.max_mean_force:
            reasons.append(f"max committee-mean force {largest:.1f} eV/Å > {settings.max_mean_force:g} eV/Å")
    if settings.min_distance is not None:
        distance = min_interatomic_distance(atoms, cutoff=settings.min_distance + 0.5)
        if distance < settings.min_distance:
            reasons.append(f"min interatomic distance {distance:.3f} Å < {settings.min_distance:g} Å")
    flags = set(str(atoms.info.get(CAGO_FLAGS_KEY, "")).split()) & set(settings.drop_flagged)
    if flags:
        reasons.append(f"CAGO flagged it {', '.join(sorted(flags))}")
    return reasons


def _post_reasons(atoms: Atoms, settings: PostFilterSettings) -> list[str]:
    reasons = []
    status = atoms.info.get(REFERENCE_STATUS_KEY)
    if settings.require_converged and status is not None and str(status) not in CONVERGED_STATUSES:
        reasons.append(f"reference status '{status}' (converged required)")
    labels = structure_labels(atoms)
    if "energy" not in labels or "forces" not in labels:
        return reasons + ["no reference energy and forces"]
    forces = np.asarray(labels["forces"], dtype=float)
    if forces.shape != (len(atoms), 3):
        return reasons + [f"reference forces have shape {forces.shape}, expected ({len(atoms)}, 3)"]
    if labels["energy"] is None or not np.isfinite(labels["energy"]) or not np.isfinite(forces).all():
        return reasons + ["reference energy or forces are not finite"]
    largest = max_atomic_force(forces)
    if settings.max_reference_force is not None and largest > settings.max_reference_force:
        reasons.append(f"max reference force {largest:.1f} eV/Å > {settings.max_reference_force:g} eV/Å")
    return reasons


def _result(reasons: Sequence[list[str]]) -> FilterResult:
    kept = tuple(i for i, found in enumerate(reasons) if not found)
    rejected = tuple(Rejection(i, "; ".join(found)) for i, found in enumerate(reasons) if found)
    return FilterResult(kept=kept, rejected=rejected)
