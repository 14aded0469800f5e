"""How far a CAGO walk may go before the calibration stops holding, judged on labelled walks.

The power law σ_cal = a·σ̂^b is judged on test structures (:mod:`cagoflow.calibration`); CAGO
moves each structure away from where it started, and far enough away σ_cal underestimates the
true error even where σ_cal itself lies inside the validity limit (a coherent move is a
different kind of structure, not a larger σ). Labelled CAGO structures show where: each carries
the largest distance of an atom from its start (``info["cago_displacement"]``, Å). Sorted by
that displacement and dealt into bins of at least :data:`WALKS_PER_BIN` walks, each bin's ratio
RMS true error / RMS σ_cal (σ_cal out of sample where the caller has it) is judged with the
calibration's own bootstrap over structures and monotone band
(:func:`cagoflow.calibration.bootstrap_ratios`, :func:`~cagoflow.calibration.monotone_band`).

The trust radius from the walks (:func:`displacement_limit`) is the upper displacement edge of
the last bin, walking up from the smallest displacements, whose band's upper edge stays at most
the calibration's 1.25; None when the first bin's does not: no displacement is shown to be
safe, so walks are not trusted at all (fails closed, as the validity limit). One-sided: a trust
region is there to stop walks where σ_cal underestimates the error (over-confidence); the lower
edge pools the small-displacement bins with the large ones whenever the ratio grows, so it is
not used.

Units: displacements Å; σ_cal and errors eV/Å.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cagoflow.calibration import (
    BOOTSTRAP_RESAMPLES,
    VALID_RATIO,
    bootstrap_ratios,
    cross_validated_sigma_cal,
    force_samples,
    monotone_band,
    structure_index,
)
from cagoflow.errors import InputError

if TYPE_CHECKING:
    from ase import Atoms

    from cagoflow.committee import CommitteePrediction

#: Labelled walks per displacement bin, at least: fewer walks are not judged at all.
WALKS_PER_BIN = 8
#: The info key of a CAGO structure's largest displacement of an atom from its start, Å.
DISPLACEMENT_KEY = "cago_displacement"


@dataclass(frozen=True)
class DisplacementBin:
    """One bin of labelled walks by their largest displacement.

    Attributes:
        low, high: the smallest and largest displacement of its walks, Å.
        walks: how many walks it holds.
        ratio: RMS true error / RMS σ_cal over its samples (dimensionless).
        band_low, band_high: the monotone band of that ratio over bootstrap resamples of the
            structures (16th percentile of the decreasing fits, 84th of the increasing ones).
    """

    low: float
    high: float
    walks: int
    ratio: float
    band_low: float
    band_high: float

    @property
    def holds(self) -> bool:
        """Whether σ_cal is not shown to underestimate the error here (band's upper edge ≤ 1.25)."""
        return bool(np.isfinite(self.band_high)) and self.band_high <= VALID_RATIO[1]


@dataclass(frozen=True)
class WalkCheck:
    """Where along the walks the calibration holds.

    Attributes:
        walks: labelled walks judged.
        bins: their displacement bins, small to large (empty with fewer than
            :data:`WALKS_PER_BIN` walks).
        radius: the largest displacement up to which the calibration is shown to hold, Å
            (None: not judged, or no bin holds).
    """

    walks: int
    bins: tuple[DisplacementBin, ...]
    radius: float | None

    @property
    def judged(self) -> bool:
        """Whether there were enough walks for at least one bin."""
        return bool(self.bins)

    def to_dict(self) -> dict[str, Any]:
        return {"walks": self.walks, "radius": self.radius, "bins": [asdict(b) for b in self.bins]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WalkCheck":
        return cls(int(data["walks"]), tuple(DisplacementBin(**b) for b in data["bins"]), data["radius"])


def displacement_bins(
    displacement: Any, sigma_cal: Any, error: Any, walk: Any = None, group: Any = None, per_bin: int = WALKS_PER_BIN
) -> list[DisplacementBin]:
    """Labelled walks in bins of at least ``per_bin`` by their largest displacement.

    Per sample (an atom, or a whole walk's RMS values): ``displacement`` (its walk's largest
    displacement, Å), ``sigma_cal`` and ``error`` (eV/Å); ``walk`` names the sample's walk
    (None: every sample its own) and ``group`` the unit the bootstrap resamples (None: the
    walk; e.g. the start, where one start was walked to several δ). Walks are sorted by
    displacement (ties in order of appearance) and dealt in order into ⌊walks / per_bin⌋ bins
    of near-equal size. Empty with fewer than ``per_bin`` walks.
    """
    displacement_ = np.asarray(displacement, dtype=float).ravel()
    sigma, resid = np.asarray(sigma_cal, dtype=float).ravel(), np.asarray(error, dtype=float).ravel()
    if not displacement_.size == sigma.size == resid.size:
        raise InputError(
            f"{displacement_.size} displacements, {sigma.size} σ_cal and {resid.size} errors: one of each per sample",
            field="displacement",
        )
    walks = structure_index(walk, sigma.size)
    n_walks = int(walks.max()) + 1 if walks.size else 0
    if n_walks < per_bin:
        return []
    walk_displacement = displacement_[np.unique(walks, return_index=True)[1]]  # at each walk's first sample
    order = np.argsort(walk_displacement, kind="stable")
    owner = structure_index(walk if group is None else group, sigma.size)
    members = [np.flatnonzero(walks == w) for w in range(n_walks)]
    binned = np.array_split(order, n_walks // per_bin)
    chunks = [np.concatenate([members[w] for w in chunk]) for chunk in binned]
    ratios, weights = bootstrap_ratios(sigma, resid, owner, chunks, BOOTSTRAP_RESAMPLES)
    low, high = monotone_band(ratios, weights)
    return [
        DisplacementBin(
            low=float(walk_displacement[chunk[0]]), high=float(walk_displacement[chunk[-1]]), walks=int(chunk.size),
            ratio=float(ratios[0, j]), band_low=float(low[j]), band_high=float(high[j]),
        )  # fmt: skip
        for j, chunk in enumerate(binned)
    ]


def displacement_limit(bins: Sequence[DisplacementBin]) -> float | None:
    """The trust radius from labelled walks, Å: the upper edge of the last bin, walking up from
    the smallest displacements, that :attr:`~DisplacementBin.holds`; None when the first does
    not (or there are no bins)."""
    limit = None
    for current in bins:
        if not current.holds:
            break
        limit = current.high
    return limit


def check_walks(
    displacement: Any, sigma_cal: Any, error: Any, walk: Any = None, group: Any = None, per_bin: int = WALKS_PER_BIN
) -> WalkCheck:
    """:func:`displacement_bins` and :func:`displacement_limit` of labelled walks (arguments as
    :func:`displacement_bins`)."""
    walks = structure_index(walk, np.asarray(sigma_cal).size)
    bins = displacement_bins(displacement, sigma_cal, error, walk, group, per_bin)
    return WalkCheck(walks=int(walks.max()) + 1 if walks.size else 0, bins=tuple(bins), radius=displacement_limit(bins))


def check_test_walks(prediction: "CommitteePrediction", references: Sequence["Atoms"], per_bin: int = WALKS_PER_BIN) -> WalkCheck:
    """:func:`check_walks` of the labelled CAGO structures among a calibration's test structures
    (those whose ``info`` holds :data:`DISPLACEMENT_KEY`), per atom, with the out-of-sample
    σ_cal of the calibration's cross-validation over all test structures (the law fitted
    without the fold of the structure judged). Not judged (no bins) where the cross-validation
    has no σ_cal."""
    walked = np.array([DISPLACEMENT_KEY in atoms.info for atoms in references])
    if walked.sum() < per_bin:
        return WalkCheck(int(walked.sum()), (), None)
    sigma_hat, errors, groups = force_samples(prediction, references)
    sigma_cal = cross_validated_sigma_cal(sigma_hat, errors, groups)
    if sigma_cal is None:
        return WalkCheck(int(walked.sum()), (), None)
    chosen = walked[groups]
    displacement = np.array([float(atoms.info.get(DISPLACEMENT_KEY, np.nan)) for atoms in references])[groups]
    return check_walks(displacement[chosen], sigma_cal[chosen], errors[chosen], groups[chosen], per_bin=per_bin)
