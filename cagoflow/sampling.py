"""What CAGO starts from and with which members: random or most-uncertain frames, member subsets.

The paper's protocol: in the first iterations CAGO starts from training-set structures (random
picks), later from frames of committee MD (random picks, or the most uncertain ones as a
baseline); each CAGO task pushes with a random subset of the committee. All functions are
pure; random choices come from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cagoflow.committee import CommitteePrediction, force_sigma_hat


def random_frames(n_frames: int, k: int, seed: int) -> list[int]:
    """``k`` distinct frame indices out of ``n_frames``, sorted (all frames when ``k >= n_frames``)."""
    _check_counts(n_frames, k)
    if k >= n_frames:
        return list(range(n_frames))
    picks = np.random.default_rng(seed).choice(n_frames, size=k, replace=False)
    return sorted(int(i) for i in picks)


def max_uncertainty_frames(uncertainties: Sequence[float] | np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` most uncertain frames, largest uncertainty first, ties by index.

    NaN uncertainties (a model that blew up) rank after every number.
    """
    values = np.asarray(uncertainties, dtype=float).reshape(-1)
    _check_counts(len(values), k)
    keys = np.where(np.isnan(values), -np.inf, values)
    nan_last = np.isnan(values)
    order = np.lexsort((np.arange(len(values)), -keys, nan_last))
    return [int(i) for i in order[:k]]


#: How a structure's per-atom uncertainties make one number: the largest atom's (as the paper
#: picks its max-uncertainty frames) or the RMS over atoms.
UncertaintyReduction = Literal["max_atom", "rms"]


def structure_force_uncertainty(prediction: CommitteePrediction, reduce: UncertaintyReduction = "max_atom") -> np.ndarray:
    """(S,) per-structure force uncertainty from σ̂_F_i (eq. 9), eV/Å: the largest over the
    structure's atoms (``max_atom``) or the RMS over them (``rms``)."""
    sigma = np.asarray(force_sigma_hat(np.asarray(prediction.forces, dtype=float)))
    natoms = np.asarray(prediction.natoms, dtype=int)
    owner = np.repeat(np.arange(len(natoms)), natoms)
    if reduce == "max_atom":
        largest = np.full(len(natoms), -np.inf)
        np.maximum.at(largest, owner, np.where(np.isnan(sigma), np.inf, sigma))
        return np.where(np.isinf(largest), np.nan, largest)
    sums = np.bincount(owner, weights=sigma**2, minlength=len(natoms))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sums / natoms)


@dataclass(frozen=True)
class StartChoice:
    """The candidate one CAGO slot starts from and how it was chosen: "drawn" (the first pick),
    "redrawn" (the first pick had no room and this one has) or "no_room" (no candidate had room:
    the first pick, left to the ``no_room`` policy)."""

    candidate: int
    how: Literal["drawn", "redrawn", "no_room"]


def starts_with_room(picks: Sequence[int], alternates: Sequence[int], has_room: Callable[[int, int], bool]) -> list[StartChoice]:
    """For slot k, the pick ``picks[k]`` if ``has_room(k, pick)``, else the first unused candidate
    of ``alternates`` (in their order) that has room in that slot, else the pick itself."""
    used: set[int] = set()
    choices = []
    for slot, pick in enumerate(picks):
        if has_room(slot, pick):
            choices.append(StartChoice(pick, "drawn"))
            continue
        spare = next((c for c in alternates if c not in used and has_room(slot, c)), None)
        if spare is None:
            choices.append(StartChoice(pick, "no_room"))
        else:
            used.add(spare)
            choices.append(StartChoice(spare, "redrawn"))
    return choices


@dataclass(frozen=True)
class CagoSubsets:
    """The committee members each CAGO task of an iteration uses.

    Attributes:
        tasks: task key ``"system/k"`` → index into ``subsets``.
        subsets: the distinct member subsets (sorted member indices), in order of first use.
    """

    tasks: dict[str, int]
    subsets: list[tuple[int, ...]]


def cago_subsets(n_models: int, subset_size: int, seeds: Mapping[str, int]) -> CagoSubsets:
    """Draw ``subset_size`` distinct members out of ``n_models`` for every CAGO task.

    ``seeds`` maps each task key ``"system/k"`` to its seed, in task order; task ``key`` uses
    the members ``sorted(default_rng(seeds[key]).choice(n_models, subset_size, replace=False))``.
    Tasks that draw the same members share one subset (one calibration per distinct subset).
    """
    if not 1 <= subset_size <= n_models:
        raise ValueError(f"subset_size must be in [1, n_models = {n_models}], got {subset_size}")
    tasks: dict[str, int] = {}
    subsets: list[tuple[int, ...]] = []
    for key, seed in seeds.items():
        draw = np.random.default_rng(seed).choice(n_models, size=subset_size, replace=False)
        subset = tuple(sorted(int(member) for member in draw))
        if subset not in subsets:
            subsets.append(subset)
        tasks[key] = subsets.index(subset)
    return CagoSubsets(tasks, subsets)


def _check_counts(n: int, k: int) -> None:
    if n < 0:
        raise ValueError(f"number of frames must be >= 0, got {n}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
