"""Tests of cagoflow.sampling: reproducible picks, ordering, per-structure uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from cagoflow.committee import CommitteePrediction, committee_statistics
from cagoflow.sampling import (
    cago_source,
    max_uncertainty_frames,
    random_frames,
    select_cago_starts,
    structure_force_uncertainty,
)


def test_random_frames_reproducible_sorted_distinct():
    picks = random_frames(500, 20, seed=4)
    assert picks == random_frames(500, 20, seed=4)
    assert picks != random_frames(500, 20, seed=5)
    assert len(picks) == 20 and len(set(picks)) == 20
    assert picks == sorted(picks) and 0 <= picks[0] and picks[-1] < 500


def test_random_frames_edge_cases():
    assert random_frames(5, 5, seed=0) == [0, 1, 2, 3, 4]
    assert random_frames(3, 10, seed=0) == [0, 1, 2]
    assert random_frames(10, 0, seed=0) == []
    assert random_frames(0, 3, seed=0) == []
    with pytest.raises(ValueError, match="k must be"):
        random_frames(10, -1, seed=0)


def test_max_uncertainty_frames_order_and_ties():
    sigma = [0.1, 0.5, 0.5, 0.3, np.nan, 0.9]
    assert max_uncertainty_frames(sigma, 3) == [5, 1, 2]
    assert max_uncertainty_frames(np.array(sigma), 6) == [5, 1, 2, 3, 0, 4]  # NaN last
    assert max_uncertainty_frames(sigma, 100) == [5, 1, 2, 3, 0, 4]
    assert max_uncertainty_frames([], 2) == []


def test_structure_force_uncertainty_by_hand():
    # 2 members; structure 0 has 1 atom, structure 1 has 2 atoms (forces concatenated, eV/Å).
    forces = np.array(
        [
            [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 2.0, 0.0]],
            [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 2.0, 0.0]],
        ]
    )
    prediction = CommitteePrediction(energies=np.zeros((2, 2)), forces=forces, natoms=np.array([1, 2]))

    rms = structure_force_uncertainty(prediction)

    # σ̂²_|F| (ddof 1): atom 0: |Fx| 1, 3 → 2; atom 1: |Fy| 0, 2 → 2; atom 2: |Fx| 1, 1 → 0
    np.testing.assert_allclose(rms, [np.sqrt(2.0), np.sqrt((2.0 + 0.0) / 2)], rtol=1e-10)
    sigma = committee_statistics(prediction).force_sigma
    np.testing.assert_allclose(rms[1], np.sqrt(np.mean(sigma[1:] ** 2)))


def test_structure_force_uncertainty_ranks_frames():
    rng = np.random.default_rng(0)
    spread = np.array([0.01, 0.3, 0.1])  # eV/Å per structure
    forces = rng.normal(size=(4, 3 * 5, 3)) * np.repeat(spread, 5)[None, :, None] + 10.0
    prediction = CommitteePrediction(np.zeros((4, 3)), forces, np.array([5, 5, 5]))
    assert max_uncertainty_frames(structure_force_uncertainty(prediction), 3) == [1, 2, 0]


def test_select_cago_starts():
    candidates = [f"frame-{i}" for i in range(50)]
    assert select_cago_starts("training", candidates, 5, seed=9) == random_frames(50, 5, seed=9)
    assert select_cago_starts("md", 50, 5, seed=9) == random_frames(50, 5, seed=9)
    sigma = np.linspace(0.0, 1.0, 50)
    assert select_cago_starts("md", candidates, 3, seed=9, strategy="max_uncertainty", uncertainties=sigma) == [
        49,
        48,
        47,
    ]
    with pytest.raises(ValueError, match="needs one uncertainty"):
        select_cago_starts("md", candidates, 3, seed=9, strategy="max_uncertainty")
    with pytest.raises(ValueError, match="3 uncertainties for 50 md candidates"):
        select_cago_starts("md", candidates, 3, seed=9, strategy="max_uncertainty", uncertainties=[1, 2, 3])
    with pytest.raises(ValueError, match="source"):
        select_cago_starts("lammps", candidates, 3, seed=9)  # type: ignore[arg-type]


def test_cago_source_follows_the_paper_protocol():
    assert [cago_source(i, first_md_iteration=3) for i in (1, 2, 3, 4)] == ["training", "training", "md", "md"]
