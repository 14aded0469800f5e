"""Tests of cagoflow.sampling: reproducible picks, ordering, per-structure uncertainty, member subsets."""

from __future__ import annotations

import numpy as np
import pytest

from cagoflow.committee import CommitteePrediction, committee_statistics
from cagoflow.sampling import (
    CagoSubsets,
    cago_subsets,
    max_uncertainty_frames,
    random_frames,
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

    rms = structure_force_uncertainty(prediction, "rms")
    largest = structure_force_uncertainty(prediction)

    # σ̂²_|F| (ddof 1): atom 0: |Fx| 1, 3 → 2; atom 1: |Fy| 0, 2 → 2; atom 2: |Fx| 1, 1 → 0
    np.testing.assert_allclose(rms, [np.sqrt(2.0), np.sqrt((2.0 + 0.0) / 2)], rtol=1e-10)
    np.testing.assert_allclose(largest, [np.sqrt(2.0), np.sqrt(2.0)], rtol=1e-10)  # the paper's pick: the largest atom
    sigma = committee_statistics(prediction).force_sigma
    np.testing.assert_allclose(rms[1], np.sqrt(np.mean(sigma[1:] ** 2)))


def test_structure_force_uncertainty_ranks_frames():
    rng = np.random.default_rng(0)
    spread = np.array([0.01, 0.3, 0.1])  # eV/Å per structure
    forces = rng.normal(size=(4, 3 * 5, 3)) * np.repeat(spread, 5)[None, :, None] + 10.0
    prediction = CommitteePrediction(np.zeros((4, 3)), forces, np.array([5, 5, 5]))
    assert max_uncertainty_frames(structure_force_uncertainty(prediction), 3) == [1, 2, 0]


def test_max_uncertainty_frames_of_a_ramp():
    assert max_uncertainty_frames(np.linspace(0.0, 1.0, 50), 3) == [49, 48, 47]


def inline_subsets(n_models: int, subset_size: int, seeds: dict[str, int]) -> tuple[dict[str, int], list[tuple]]:
    """The subset choice as apps/training_tasks.py _calibrate wrote it inline (the reference)."""
    tasks, subsets = {}, []
    for key, seed in seeds.items():
        rng = np.random.default_rng(seed)
        subset = tuple(sorted(rng.choice(n_models, size=subset_size, replace=False).tolist()))
        if subset not in subsets:
            subsets.append(subset)
        tasks[key] = subsets.index(subset)
    return tasks, subsets


SEEDS = {f"{system}/{k}": 1000 * n + 7 * k for n, system in enumerate(("water", "ice")) for k in range(12)}


@pytest.mark.parametrize("n_models, subset_size", [(8, 4), (3, 2), (5, 5), (6, 1)])
def test_cago_subsets_as_drawn_inline(n_models, subset_size):
    chosen = cago_subsets(n_models, subset_size, SEEDS)

    assert (chosen.tasks, chosen.subsets) == inline_subsets(n_models, subset_size, SEEDS)
    assert chosen == cago_subsets(n_models, subset_size, dict(SEEDS))  # deterministic
    assert list(chosen.tasks) == list(SEEDS)
    for subset in chosen.subsets:
        assert len(subset) == subset_size and len(set(subset)) == subset_size  # distinct members
        assert list(subset) == sorted(subset) and 0 <= subset[0] and subset[-1] < n_models
    assert len(set(chosen.subsets)) == len(chosen.subsets)  # each subset once
    used = list(dict.fromkeys(chosen.tasks.values()))
    assert used == list(range(len(chosen.subsets)))  # numbered in order of first use


def test_cago_subsets_share_and_differ():
    few = cago_subsets(3, 2, SEEDS)  # 3 possible pairs for 24 tasks: tasks share subsets
    assert len(few.subsets) <= 3 < len(few.tasks)
    assert cago_subsets(5, 5, SEEDS).subsets == [(0, 1, 2, 3, 4)]
    assert len(cago_subsets(20, 3, SEEDS).subsets) > 1
    assert cago_subsets(8, 4, {}) == CagoSubsets({}, [])
    with pytest.raises(ValueError, match="subset_size"):
        cago_subsets(4, 5, SEEDS)
    with pytest.raises(ValueError, match="subset_size"):
        cago_subsets(4, 0, SEEDS)


def test_max_atom_and_rms_rank_differently():
    """One atom far off in structure 0, a broad spread in structure 1: the largest atom picks 0,
    the RMS over atoms picks 1."""
    forces = np.zeros((2, 8, 3))
    forces[1, 0, 0] = 1.0  # structure 0 (atoms 0-3): one atom, spread 0.71
    forces[1, 4:, 0] = 0.6  # structure 1 (atoms 4-7): every atom, spread 0.42
    prediction = CommitteePrediction(np.zeros((2, 2)), forces, np.array([4, 4]))
    assert max_uncertainty_frames(structure_force_uncertainty(prediction), 1) == [0]
    assert max_uncertainty_frames(structure_force_uncertainty(prediction, "rms"), 1) == [1]


def test_starts_with_room_redraws_in_order():
    """A pick without room is replaced by the first unused alternate with room in its slot."""
    from cagoflow.sampling import StartChoice, starts_with_room

    room = {0: {0, 5}, 1: {6}, 2: set()}  # slot → candidates with room
    choices = starts_with_room([0, 1, 2], [5, 6, 7], lambda slot, c: c in room[slot])
    assert choices == [StartChoice(0, "drawn"), StartChoice(6, "redrawn"), StartChoice(2, "no_room")]
