"""Which frames CAGO starts from: random or most-uncertain picks, training set or MD.

The paper's protocol: in the first iterations CAGO starts from training-set structures (random
picks), later from frames of committee MD (random picks, or the most uncertain ones as a
baseline). All functions are pure; random choices come from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from cagoflow.committee import CommitteePrediction, force_sigma_hat

Source = Literal["training", "md"]
Strategy = Literal["random", "max_uncertainty"]
SOURCES: tuple[str, ...] = ("training", "md")
STRATEGIES: tuple[str, ...] = ("random", "max_uncertainty")


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


def structure_force_uncertainty(prediction: CommitteePrediction) -> np.ndarray:
    """(S,) per-structure force uncertainty: RMS over atoms of σ̂_F_i (eq. 9), eV/Å."""
    sigma = np.asarray(force_sigma_hat(np.asarray(prediction.forces, dtype=float)))
    natoms = np.asarray(prediction.natoms, dtype=int)
    owner = np.repeat(np.arange(len(natoms)), natoms)
    sums = np.bincount(owner, weights=sigma**2, minlength=len(natoms))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sums / natoms)


def cago_source(iteration: int, first_md_iteration: int) -> Source:
    """Where CAGO starts in ``iteration``: training structures before ``first_md_iteration``, then MD.

    In the paper (iterations counted from 1) ``first_md_iteration`` is 3.
    """
    return "training" if iteration < first_md_iteration else "md"


def select_cago_starts(
    source: Source,
    candidates: int | Sequence[object],
    k: int,
    seed: int,
    strategy: Strategy = "random",
    uncertainties: Sequence[float] | np.ndarray | None = None,
) -> list[int]:
    """Indices of the candidates (training structures or MD frames) CAGO starts from.

    ``candidates``: the candidate structures or their number. ``strategy="random"`` picks ``k``
    at random (sorted indices, see :func:`random_frames`); ``"max_uncertainty"`` picks the ``k``
    most uncertain (``uncertainties``, one per candidate, e.g. from
    :func:`structure_force_uncertainty`; largest first). ``source`` is validated and recorded
    by callers in the provenance; it does not change the pick.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    n_candidates = candidates if isinstance(candidates, (int, np.integer)) else len(candidates)
    if strategy == "random":
        return random_frames(int(n_candidates), k, seed)
    if uncertainties is None:
        raise ValueError("strategy 'max_uncertainty' needs one uncertainty per candidate")
    if len(uncertainties) != n_candidates:
        raise ValueError(f"got {len(uncertainties)} uncertainties for {n_candidates} {source} candidates")
    return max_uncertainty_frames(uncertainties, k)


def _check_counts(n: int, k: int) -> None:
    if n < 0:
        raise ValueError(f"number of frames must be >= 0, got {n}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
