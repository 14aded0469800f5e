"""Where along CAGO walks the calibration holds: the trust radius from labelled walks."""

import numpy as np
import pytest

from cagoflow.errors import InputError
from cagoflow.walk_validity import WalkCheck, check_walks, displacement_bins, displacement_limit


def walks(limit: float, beyond: float, n: int = 64, atoms: int = 1, seed: int = 0, bad: tuple[float, float] | None = None):
    """Per sample (``atoms`` per walk): displacement (Å), σ_cal, true error (eV/Å), walk. Error /
    σ_cal is 1 (±5 % noise) up to ``limit`` Å and ``beyond`` after it; ``bad`` = (from, to) Å: a
    stretch of walks at 1.8 whatever the limit."""
    rng = np.random.default_rng(seed)
    shifts = np.repeat(np.linspace(0.01, 0.8, n), atoms)
    factor = np.where(shifts <= limit, 1.0, beyond)
    if bad is not None:
        factor = np.where((shifts >= bad[0]) & (shifts <= bad[1]), 1.8, factor)
    sigma = np.full(shifts.size, 0.2)
    return shifts, sigma, sigma * factor * rng.normal(1.0, 0.05, shifts.size), np.repeat(np.arange(n), atoms)


def test_known_limit_recovered_within_one_bin():
    """Known limit 0.3 Å; bins of 8 of 64 walks over 0.01-0.8 Å are 0.1 Å wide."""
    for atoms in (1, 6):  # one sample per walk, or per atom
        radius = check_walks(*walks(0.3, 2.0, atoms=atoms)).radius
        assert radius is not None and 0.2 <= radius <= 0.3


def test_calibrated_everywhere_gives_the_largest_displacement_and_under_confidence_does_not_stop_it():
    assert check_walks(*walks(1.0, 2.0)).radius == pytest.approx(0.8)
    assert check_walks(*walks(0.3, 0.5)).radius == pytest.approx(0.8)


def test_over_confident_from_the_first_bin_fails_closed():
    check = check_walks(*walks(0.0, 2.0))
    assert check.judged and check.radius is None


def test_one_bad_bin_does_not_move_the_radius():
    """Seven walks at 1.8 in the middle, calibrated on either side: the increasing fit pools them
    with the calibrated bins above, and the radius is the largest displacement."""
    shifts, sigma, error, walk = walks(1.0, 1.0, bad=(0.3, 0.39))
    assert np.unique(walk[(shifts >= 0.3) & (shifts <= 0.39)]).size == 7
    assert check_walks(shifts, sigma, error, walk).radius == pytest.approx(0.8)


def test_too_few_walks_are_not_judged():
    check = check_walks(*walks(1.0, 1.0, n=7, atoms=3))
    assert check.walks == 7 and not check.judged and check.radius is None
    assert displacement_limit([]) is None


def test_bins_follow_displacement_and_the_bootstrap_groups():
    """Bins run from small to large displacement; a group spanning walks is resampled as one."""
    shifts, sigma, error, walk = walks(1.0, 1.0, n=16, atoms=2)
    bins = displacement_bins(shifts, sigma, error, walk, group=walk // 2)
    assert [b.walks for b in bins] == [8, 8] and bins[0].high < bins[1].low
    assert all(0.9 < b.ratio < 1.1 for b in bins)


def test_round_trip_and_bad_input():
    check = check_walks(*walks(0.3, 2.0))
    assert WalkCheck.from_dict(check.to_dict()) == check
    with pytest.raises(InputError, match="one of each per sample"):
        displacement_bins([0.1, 0.2], [0.2], [0.2])


def test_test_split_walks_judged_out_of_sample_and_only_the_walks():
    """Among a test split of plain structures and labelled walks (``cago_displacement`` in their
    info), only the walks are binned, with the σ_cal of the law fitted without their fold: walks
    whose error matches the plain structures' hold up to their largest displacement, walks with
    three times the error hold nowhere, and seven walks are not judged."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from cagoflow.committee import force_sigma_hat
    from cagoflow.morse_committee import MorseCommittee, MorseModel
    from cagoflow.structures import water_box
    from cagoflow.walk_validity import DISPLACEMENT_KEY, check_test_walks

    committee = MorseCommittee(MorseModel.for_symbols(["O", "H"], n_members=3, spread=0.05, seed=1))
    rng = np.random.default_rng(0)

    def split(walks: int, factor: float) -> tuple:
        structures = []
        for k in range(16 + walks):
            atoms = water_box(4, seed=k)
            atoms.rattle(0.03, seed=k)
            structures.append(atoms)
        prediction = committee.predict(structures)
        for k, atoms in enumerate(structures):
            forces = prediction.structure_forces(k)
            sigma = force_sigma_hat(forces)[:, None]
            scale = factor if k >= 16 else 1.0
            reference = forces.mean(0) + scale * sigma * rng.normal(size=forces.shape[1:])
            atoms.calc = SinglePointCalculator(atoms, forces=reference, energy=0.0)
            if k >= 16:
                atoms.info[DISPLACEMENT_KEY] = 0.01 * (k - 15)
        return prediction, structures

    calibrated = check_test_walks(*split(8, 1.0))
    assert calibrated.walks == 8 and calibrated.judged and calibrated.radius == pytest.approx(0.08)
    assert 0.7 < calibrated.bins[0].ratio < 1.3
    fooled = check_test_walks(*split(8, 3.0))
    assert fooled.judged and fooled.radius is None and fooled.bins[0].ratio > 1.5
    assert not check_test_walks(*split(7, 1.0)).judged
