"""Tests of cagoflow.analysis and cagoflow.analysis_plots with synthetic data of known answers."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import _amu

from cagoflow.analysis import (
    A2_PER_PS_IN_CM2_PER_S,
    ModelErrors,
    coordination_number,
    density,
    diffusion_fit,
    first_minimum,
    mean_squared_displacement,
    model_errors,
    rdf,
    self_diffusion,
    stability,
    unwrapped_positions,
)
from cagoflow.analysis_plots import plot_msd, plot_rdf, plot_summary, summary_figure
from cagoflow.committee import CommitteePrediction
from cagoflow.engines.ase_md import MDResult
from cagoflow.structures import water_box

#: Random walk: the fitted D may differ from the exact one by this fraction (the brief's 10 %).
DIFFUSION_RTOL = 0.10
#: Ideal gas: g(r) = (N − 1)/N ≈ 1 up to counting noise (~2 % per bin beyond 1.5 Å here).
IDEAL_GAS_MAX_DEVIATION = 0.12
IDEAL_GAS_MEAN_DEVIATION = 0.03

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_walk(n_atoms=100, n_frames=400, step_A=0.3, edge=10.0, seed=0, symbol="O") -> tuple[list[Atoms], np.ndarray]:
    """Frames of independent Gaussian random walkers wrapped into a cubic box, and the true path."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, edge, size=(n_atoms, 3))
    path = start + np.concatenate([np.zeros((1, n_atoms, 3)), np.cumsum(rng.normal(0, step_A, (n_frames - 1, n_atoms, 3)), 0)])
    frames = []
    for positions in path:
        atoms = Atoms(symbol * n_atoms, positions=positions, cell=[edge] * 3, pbc=True)
        atoms.wrap()
        frames.append(atoms)
    return frames, path


# --- diffusion ----------------------------------------------------------------------------------


def test_unwrapping_recovers_the_true_path():
    frames, path = random_walk(n_atoms=20, n_frames=50)
    assert np.ptp(path) > 10.0  # walkers did cross the boundaries
    np.testing.assert_allclose(unwrapped_positions(frames), path, atol=1e-9)


def test_random_walk_diffusion_coefficient():
    """Per-frame Gaussian steps of σ per component: MSD = 3σ² t/Δt, so D = σ²/(2Δt)."""
    step, dt_fs = 0.3, 10.0
    frames, _ = random_walk(n_atoms=300, step_A=step)  # 300 walkers: ±3 % between seeds
    exact = step**2 / (2 * dt_fs * 1e-3)  # Å²/ps
    estimate = self_diffusion(frames, dt_fs, species="O")
    assert estimate == pytest.approx(exact, rel=DIFFUSION_RTOL)
    fit = diffusion_fit(frames, dt_fs)
    assert fit.diffusion_cm2_per_s == pytest.approx(estimate * A2_PER_PS_IN_CM2_PER_S)
    assert fit.fit_from_ps == pytest.approx(0.1 * 399 * dt_fs * 1e-3, abs=dt_fs * 1e-3)
    # without unwrapping, displacements would saturate near the box size
    wrapped = np.array([frame.positions for frame in frames])
    assert ((wrapped[-1] - wrapped[0]) ** 2).sum(-1).mean() < 0.6 * 6 * exact * (399 * dt_fs * 1e-3)


def test_diffusion_of_one_species_only_and_drift_removal():
    frames, _ = random_walk(n_atoms=60, n_frames=200, step_A=0.2)
    mixed = []
    for atoms in frames:  # every second atom becomes a fixed-in-place hydrogen
        atoms = atoms.copy()
        atoms.numbers[::2] = 1
        atoms.positions[::2] = frames[0].positions[::2]
        mixed.append(atoms)
    assert self_diffusion(mixed, 5.0, species="H") == pytest.approx(0.0, abs=1e-12)
    assert self_diffusion(mixed, 5.0, species="O") > 1.0
    # a uniform drift of all atoms disappears with remove_drift
    drifting = []
    for k, atoms in enumerate(mixed):
        atoms = atoms.copy()
        atoms.positions += [0.5 * k, 0.0, 0.0]
        atoms.wrap()
        drifting.append(atoms)
    assert self_diffusion(drifting, 5.0, species="H", remove_drift=True) == pytest.approx(0.0, abs=1e-9)
    assert self_diffusion(drifting, 5.0, species="H") > 100.0


def test_msd_fft_matches_the_direct_sum():
    frames, path = random_walk(n_atoms=5, n_frames=30, seed=3)
    lags, msd = mean_squared_displacement(frames, 2.0, species=None)
    direct = [0.0] + [((path[m:] - path[:-m]) ** 2).sum(-1).mean() for m in range(1, 30)]
    np.testing.assert_allclose(msd, direct, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lags, np.arange(30) * 2e-3)


def test_unwrapping_in_a_changing_cell():
    """Atoms fixed in fractional coordinates of a breathing cell have no net displacement jumps."""
    frames = []
    base = np.array([[0.95, 0.5, 0.5], [0.02, 0.98, 0.5]])
    for k in range(20):
        edge = 10.0 * (1 + 0.01 * np.sin(k))
        shift = np.array([0.03 * k, -0.02 * k, 0.0])  # fractional drift across the boundary
        atoms = Atoms("O2", scaled_positions=(base + shift) % 1.0, cell=[edge] * 3, pbc=True)
        frames.append(atoms)
    unwrapped = unwrapped_positions(frames)
    steps = np.linalg.norm(np.diff(unwrapped, axis=0), axis=-1)
    assert steps.max() < 0.5


def test_diffusion_input_errors():
    frames, _ = random_walk(n_atoms=3, n_frames=10)
    with pytest.raises(ValueError, match="no H atoms"):
        self_diffusion(frames, 1.0, species="H")
    with pytest.raises(ValueError, match="too few"):
        self_diffusion(frames[:3], 1.0)
    with pytest.raises(ValueError, match="positive"):
        self_diffusion(frames, 0.0)


# --- RDF --------------------------------------------------------------------------------------------


def test_fcc_first_peak_at_the_nearest_neighbour_distance_with_twelve_neighbours():
    a = 3.61
    crystal = bulk("Cu", "fcc", a=a, cubic=True).repeat(3)
    frames = []
    for seed in range(3):
        atoms = crystal.copy()
        atoms.rattle(0.03, seed=seed)
        frames.append(atoms)
    result = rdf(frames, pair=("Cu", "Cu"), r_max=5.0, n_bins=250)
    nearest = a / np.sqrt(2)
    assert result.r_A[np.argmax(result.g)] == pytest.approx(nearest, abs=0.05)
    r_min = result.first_minimum()
    assert nearest < r_min < a
    assert result.coordination_number() == pytest.approx(12.0, abs=1e-9)
    assert coordination_number(result.r_A, result.g, result.partner_density_per_A3, r_cut=4.0) == pytest.approx(18.0)
    assert result.partner_density_per_A3 == pytest.approx(4 / a**3)


def test_ideal_gas_rdf_is_one():
    rng = np.random.default_rng(1)
    edge, n = 10.0, 200
    frames = [Atoms(f"Ar{n}", positions=rng.uniform(0, edge, (n, 3)), cell=[edge] * 3, pbc=True) for _ in range(12)]
    result = rdf(frames, pair=("Ar", "Ar"), r_max=4.5, n_bins=30)
    deviation = np.abs(result.g[result.r_A > 1.5] - 1.0)
    assert deviation.max() < IDEAL_GAS_MAX_DEVIATION and deviation.mean() < IDEAL_GAS_MEAN_DEVIATION
    rho = n / edge**3
    expected = rho * 4 / 3 * np.pi * 4.05**3 * (n - 1) / n
    assert result.coordination_number(r_cut=4.0) == pytest.approx(expected, rel=0.02)
    with pytest.raises(ValueError, match="does not drop below 1"):
        first_minimum(np.linspace(0, 1, 10), np.full(10, 2.0))


def test_rdf_agrees_with_ase_and_allows_r_max_beyond_half_the_box():
    from ase.geometry.rdf import get_rdf

    box = water_box(32)
    ours = rdf([box], pair=("O", "H"), r_max=4.5, n_bins=45)
    theirs, distances = get_rdf(box, 4.5, 45, elements=[8, 1])
    np.testing.assert_allclose(ours.r_A, distances)
    np.testing.assert_allclose(ours.g, theirs, atol=1e-9)
    small = water_box(8)  # 6.2 Å box: ASE refuses r_max > 3.1 Å
    wide = rdf([small], pair=("O", "O"), r_max=5.0, n_bins=50)
    assert wide.g[wide.r_A > 4.0].mean() > 0.3
    with pytest.raises(ValueError, match="not periodic"):
        rdf([Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.2]])])


# --- density --------------------------------------------------------------------------------------


def test_density_of_known_boxes():
    two_waters = Atoms("OH2OH2", positions=np.random.default_rng(0).uniform(0, 10, (6, 3)), cell=[10.0] * 3, pbc=True)
    mass_g = two_waters.get_masses().sum() * _amu * 1e3
    np.testing.assert_allclose(density([two_waters]), [mass_g / 1e-21])
    assert density([two_waters])[0] == pytest.approx(0.05984, rel=1e-3)
    np.testing.assert_allclose(density([water_box(8, density_g_cm3=0.8), water_box(4)]), [0.8, 1.0])
    with pytest.raises(ValueError, match="no cell volume"):
        density([Atoms("H2O")])


# --- model errors ---------------------------------------------------------------------------------


def test_model_errors_by_hand():
    periodic = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1]], cell=[5.0] * 3, pbc=True)
    molecule = Atoms("H", positions=[[0, 0, 0]])
    periodic.calc = SinglePointCalculator(periodic, energy=1.0, forces=[[0.3, 0, 0], [0, 0.4, 0]], stress=np.zeros(6))
    molecule.calc = SinglePointCalculator(molecule, energy=3.5, forces=[[0, 0, 0]])
    spread = np.full((3, 3), 0.7)
    virial = np.eye(3)
    prediction = CommitteePrediction(
        energies=np.array([[1.0, 2.0], [3.0, 4.0]]),  # means 2.0 and 3.0
        forces=np.stack([spread, -spread]),  # mean zero
        natoms=np.array([2, 1]),
        virials=np.stack([np.stack([virial + 0.2, np.full((3, 3), np.nan)]), np.stack([virial - 0.2, np.full((3, 3), np.nan)])]),
    )
    errors = model_errors(prediction, [periodic, molecule])
    assert isinstance(errors, ModelErrors)
    # energy per atom: (2.0 − 1.0)/2 = 0.5 and (3.0 − 3.5)/1 = −0.5
    assert errors.energy_rmse_per_atom == pytest.approx(0.5)
    # forces: errors −0.3 and −0.4 among 9 components
    assert errors.force_rmse == pytest.approx(np.sqrt((0.09 + 0.16) / 9))
    # virial per atom: (I − 0)/2 on the diagonal, only the periodic structure counts
    assert errors.virial_rmse_per_atom == pytest.approx(np.sqrt(3 * 0.25 / 9))
    assert (errors.n_structures, errors.n_atoms, errors.n_virials) == (2, 3, 1)


def test_model_errors_stress_sign_and_missing_virials():
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=[2.0] * 3, pbc=True)
    stress = np.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.0])
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((1, 3)), stress=stress)
    virial = np.zeros((1, 1, 3, 3))
    virial[0, 0, 0, 0] = -8.0 * 0.01  # W = −V·σ: a perfect prediction
    perfect = CommitteePrediction(np.zeros((1, 1)), np.zeros((1, 1, 3)), np.array([1]), virial)
    assert model_errors(perfect, [atoms]).virial_rmse_per_atom == pytest.approx(0.0, abs=1e-15)
    no_virials = CommitteePrediction(np.zeros((1, 1)), np.zeros((1, 1, 3)), np.array([1]), None)
    assert model_errors(no_virials, [atoms]).virial_rmse_per_atom is None
    with pytest.raises(ValueError, match="no energy and forces"):
        model_errors(no_virials, [Atoms("H")])
    with pytest.raises(ValueError, match="references"):
        model_errors(no_virials, [atoms, atoms])


# --- stability ------------------------------------------------------------------------------------


def md_result(stable: bool, reason: str = "", frames=None, steps: int = 100) -> MDResult:
    return MDResult(frames=frames or [], stable=stable, reason=reason, steps_done=steps, wall_time=1.0)


def test_stable_only_if_all_replicas_pass():
    report = stability([md_result(True), md_result(False, "min interatomic distance 0.3 Å", steps=40), md_result(True)])
    assert not report.stable
    assert (report.n_replicas, report.n_stable) == (3, 2)
    assert report.fraction_stable == pytest.approx(2 / 3)
    assert report.reasons == ("min interatomic distance 0.3 Å",)
    assert report.steps_done == (100, 40, 100)
    assert stability([md_result(True)] * 4).stable
    with pytest.raises(ValueError):
        stability([])


# --- plots ------------------------------------------------------------------------------------------


def test_figures_are_written(tmp_path):
    frames, _ = random_walk(n_atoms=30, n_frames=60)
    for k, frame in enumerate(frames):
        frame.info["md_time_fs"] = 10.0 * k
    fit = diffusion_fit(frames, 10.0)
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    distribution = rdf([crystal], pair=("Cu", "Cu"), r_max=5.0, n_bins=100)
    errors = ModelErrors(0.002, 0.05, 0.01, 10, 300, 10)
    results = [md_result(True, frames=frames), md_result(False, "density 2.5 × initial", frames=frames[:20])]
    paths = [
        plot_rdf({"Cu–Cu": distribution}, tmp_path / "rdf.png"),
        plot_msd(fit, tmp_path / "msd.png"),
        plot_summary(tmp_path / "summary.png", results, rdfs=distribution, diffusion={"O": fit}, errors=errors, title="test"),
        plot_summary(tmp_path / "empty.png"),
    ]
    for path in paths:
        assert path.read_bytes().startswith(PNG_MAGIC)
    text = " ".join(t.get_text() for ax in summary_figure(results, errors=errors).axes for t in ax.texts)
    assert "UNSTABLE, 1/2 replicas stable" in text and "force RMSE" in text and "50.0 meV/Å" in text
