"""What the paper's Figs. 4 and 5 measure: MD stability, density, diffusion, RDFs, model errors.

Pure functions on lists of frames (ASE ``Atoms`` with cells) and on committee predictions.

Units: lengths Å, times ps (arguments in fs where they describe an MD setting), densities
g/cm³, number densities atoms/Å³, self-diffusion coefficients Å²/ps
(1 Å²/ps = 1e-4 cm²/s; liquid water at 300 K: about 0.23 Å²/ps), energies eV, forces eV/Å.

Conventions:

- Stability follows the paper's benchmark: a model is stable only if every replica passes
  (:func:`stability` over :class:`~cagoflow.engines.ase_md.MDResult`).
- Mean squared displacements use positions unwrapped by minimum-image displacements between
  consecutive frames (in the later frame's cell, so NPT trajectories work too); frames must be
  close enough in time that no atom moves half a box length between two of them. All time
  origins are averaged (FFT algorithm). No finite-size (Yeh–Hummer) correction is applied.
- RDFs count all periodic images within ``r_max`` (ASE's neighbour list), so ``r_max`` may
  exceed half the box. Normalisation as in LAMMPS ``compute rdf`` and ASE ≥ 3.27:
  g(r) = n(r) / (N_centre · ρ_partner · shell volume) with ρ_partner = N_partner / V, averaged
  over frames; then ∫ 4π r² ρ_partner g(r) dr up to r is the mean number of partners within r.
  (``ase.geometry.analysis.Analysis.get_rdf`` refuses partial RDFs in ASE 3.29, and
  ``ase.geometry.rdf.get_rdf`` needs ``r_max`` below half the box; hence the neighbour list.)
- Model errors are those of the committee MEAN against reference labels: force RMSE over all
  Cartesian components (eV/Å; the RMS of per-atom error vectors |ΔF_i| is √3 times larger),
  energy RMSE per atom (eV/atom), virial RMSE per atom over the 9 components (eV/atom) of
  periodic structures whose reference has a stress (virial W = −V·stress).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list
from ase.units import _amu

from cagoflow.committee import CommitteePrediction, virial_from_stress
from cagoflow.io import structure_labels

if TYPE_CHECKING:
    from cagoflow.engines.ase_md import MDResult

__all__ = [
    "A2_PER_PS_IN_CM2_PER_S",
    "DiffusionFit",
    "ModelErrors",
    "RadialDistribution",
    "StabilityReport",
    "coordination_number",
    "density",
    "diffusion_fit",
    "first_minimum",
    "mean_squared_displacement",
    "model_errors",
    "rdf",
    "self_diffusion",
    "stability",
    "unwrapped_positions",
]

#: 1 Å²/ps expressed in cm²/s.
A2_PER_PS_IN_CM2_PER_S = 1e-4
_G_PER_AMU = _amu * 1e3
_CM3_PER_A3 = 1e-24


# --- stability ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StabilityReport:
    """Stability of a model over its MD replicas (the paper's benchmark).

    Attributes:
        stable: True only if every replica is stable.
        n_replicas: replicas run.
        n_stable: replicas that completed every step and passed every check.
        fraction_stable: ``n_stable / n_replicas``.
        reasons: why each unstable replica stopped, in replica order.
        steps_done: MD steps of each replica.
    """

    stable: bool
    n_replicas: int
    n_stable: int
    fraction_stable: float
    reasons: tuple[str, ...]
    steps_done: tuple[int, ...]


def stability(results: Sequence["MDResult"]) -> StabilityReport:
    """Summarise replicas: stable only if all replicas are stable."""
    if len(results) == 0:
        raise ValueError("stability needs at least one MD result")
    n_stable = sum(1 for result in results if result.stable)
    return StabilityReport(
        stable=n_stable == len(results),
        n_replicas=len(results),
        n_stable=n_stable,
        fraction_stable=n_stable / len(results),
        reasons=tuple(result.reason for result in results if not result.stable),
        steps_done=tuple(int(result.steps_done) for result in results),
    )


# --- density --------------------------------------------------------------------------------------


def density(frames: Sequence[Atoms]) -> np.ndarray:
    """(F,) mass density of each frame, g/cm³ (needs a cell of non-zero volume)."""
    values = []
    for index, atoms in enumerate(frames):
        volume = abs(atoms.cell.volume)
        if volume <= 0:
            raise ValueError(f"frame {index} has no cell volume: a density needs a 3D cell")
        values.append(atoms.get_masses().sum() * _G_PER_AMU / (volume * _CM3_PER_A3))
    return np.asarray(values, dtype=float)


def number_density(atoms: Atoms, species: str | None = None) -> float:
    """Atoms (of ``species``, or all) per Å³."""
    count = len(atoms) if species is None else int(np.count_nonzero(atoms.numbers == _number(species)))
    return count / abs(atoms.cell.volume)


def _number(symbol: str) -> int:
    try:
        return atomic_numbers[symbol]
    except KeyError:
        raise ValueError(f"unknown chemical symbol {symbol!r}") from None


# --- diffusion ------------------------------------------------------------------------------------


def unwrapped_positions(frames: Sequence[Atoms], species: str | None = None) -> np.ndarray:
    """(F, N, 3) positions (Å) of all atoms, or those of ``species``, made continuous in time.

    Each displacement between consecutive frames is reduced to its minimum image in the later
    frame's cell (periodic directions only) and accumulated from the first frame's positions.
    """
    if len(frames) == 0:
        raise ValueError("no frames")
    first = frames[0]
    mask = np.ones(len(first), dtype=bool) if species is None else first.numbers == _number(species)
    if not mask.any():
        raise ValueError(f"the frames hold no {species} atoms")
    for index, atoms in enumerate(frames):
        if len(atoms) != len(first) or not np.array_equal(atoms.numbers, first.numbers):
            raise ValueError(f"frame {index} has different atoms than frame 0")
    positions = np.empty((len(frames), int(mask.sum()), 3))
    positions[0] = first.positions[mask]
    for k in range(1, len(frames)):
        atoms = frames[k]
        step = atoms.positions[mask] - frames[k - 1].positions[mask]
        pbc = atoms.pbc
        if pbc.any():
            cell = np.asarray(atoms.cell)
            fractional = np.linalg.solve(cell.T, step.T).T
            fractional[:, pbc] -= np.round(fractional[:, pbc])
            step = fractional @ cell
        positions[k] = positions[k - 1] + step
    return positions


def _msd_fft(positions: np.ndarray) -> np.ndarray:
    """(F,) MSD for lags 0..F-1 averaged over all time origins and atoms (Calandrini et al. 2011)."""
    n_frames = positions.shape[0]
    squares = (positions**2).sum(-1)  # (F, N)
    squares = np.concatenate([squares, np.zeros((1, squares.shape[1]))])
    total = 2.0 * squares.sum(0)
    s1 = np.empty((n_frames, positions.shape[1]))
    for m in range(n_frames):
        total = total - squares[m - 1] - squares[n_frames - m]
        s1[m] = total / (n_frames - m)
    spectrum = np.fft.rfft(positions, n=2 * n_frames, axis=0)
    autocorrelation = np.fft.irfft(spectrum * spectrum.conj(), axis=0)[:n_frames].sum(-1)
    s2 = autocorrelation / (n_frames - np.arange(n_frames))[:, None]
    return (s1 - 2.0 * s2).mean(-1)


def mean_squared_displacement(
    frames: Sequence[Atoms],
    timestep_between_frames_fs: float,
    species: str | None = "O",
    *,
    remove_drift: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Lag times (ps) and MSD (Å²) of ``species`` (None: all atoms), all time origins averaged.

    ``remove_drift`` subtracts the mean displacement of the selected atoms at every frame.
    """
    if not timestep_between_frames_fs > 0:
        raise ValueError(f"timestep_between_frames_fs must be positive, got {timestep_between_frames_fs}")
    positions = unwrapped_positions(frames, species)
    if remove_drift:
        positions = positions - (positions - positions[0]).mean(1, keepdims=True)
    msd = np.clip(_msd_fft(positions), 0.0, None)
    lags = np.arange(len(frames)) * timestep_between_frames_fs * 1e-3
    return lags, msd


@dataclass(frozen=True)
class DiffusionFit:
    """A linear fit MSD(t) ≈ slope·t + intercept and D = slope / 6.

    Attributes:
        lag_ps, msd_A2: the full MSD curve, ps and Å².
        fit_from_ps, fit_to_ps: the lag window of the fit, ps.
        slope_A2_per_ps, intercept_A2: fit parameters.
        diffusion_A2_per_ps: self-diffusion coefficient, Å²/ps (× 1e-4 for cm²/s).
    """

    lag_ps: np.ndarray = field(repr=False)
    msd_A2: np.ndarray = field(repr=False)
    fit_from_ps: float
    fit_to_ps: float
    slope_A2_per_ps: float
    intercept_A2: float
    diffusion_A2_per_ps: float

    @property
    def diffusion_cm2_per_s(self) -> float:
        return self.diffusion_A2_per_ps * A2_PER_PS_IN_CM2_PER_S


def diffusion_fit(
    frames: Sequence[Atoms],
    timestep_between_frames_fs: float,
    species: str | None = "O",
    *,
    fit_window: tuple[float, float] = (0.1, 0.5),
    remove_drift: bool = False,
) -> DiffusionFit:
    """Self-diffusion from the slope of the MSD (Einstein relation in 3D, MSD = 6 D t).

    The fit uses lags between ``fit_window`` fractions of the trajectory's time span: the
    default skips the first 10 % (ballistic regime) and the last half (few time origins).
    """
    low, high = fit_window
    if not 0 <= low < high <= 1:
        raise ValueError(f"fit_window must satisfy 0 <= low < high <= 1, got {fit_window}")
    lags, msd = mean_squared_displacement(frames, timestep_between_frames_fs, species, remove_drift=remove_drift)
    last = len(lags) - 1
    start, stop = int(np.floor(low * last)), int(np.ceil(high * last))
    if stop - start < 2:
        raise ValueError(f"{len(frames)} frames are too few for a diffusion fit over {fit_window} of the trajectory")
    slope, intercept = np.polyfit(lags[start : stop + 1], msd[start : stop + 1], 1)
    return DiffusionFit(
        lag_ps=lags,
        msd_A2=msd,
        fit_from_ps=float(lags[start]),
        fit_to_ps=float(lags[stop]),
        slope_A2_per_ps=float(slope),
        intercept_A2=float(intercept),
        diffusion_A2_per_ps=float(slope) / 6.0,
    )


def self_diffusion(
    frames: Sequence[Atoms],
    timestep_between_frames_fs: float,
    species: str | None = "O",
    **kwargs,
) -> float:
    """Self-diffusion coefficient of ``species`` in Å²/ps (multiply by 1e-4 for cm²/s).

    See :func:`diffusion_fit` for the fit window and options.
    """
    return diffusion_fit(frames, timestep_between_frames_fs, species, **kwargs).diffusion_A2_per_ps


# --- radial distribution ------------------------------------------------------------------------


@dataclass(frozen=True)
class RadialDistribution:
    """A partial radial distribution function g_AB(r) averaged over frames.

    Attributes:
        r_A: (n_bins,) bin centres, Å (uniform bins from 0 to r_max).
        g: (n_bins,) g(r).
        pair: (centre species, partner species).
        partner_density_per_A3: mean number density of the partner species, atoms/Å³.
        n_frames: frames averaged.
    """

    r_A: np.ndarray = field(repr=False)
    g: np.ndarray = field(repr=False)
    pair: tuple[str, str]
    partner_density_per_A3: float
    n_frames: int

    def first_minimum(self) -> float:
        return first_minimum(self.r_A, self.g)

    def coordination_number(self, r_cut: float | None = None) -> float:
        return coordination_number(self.r_A, self.g, self.partner_density_per_A3, r_cut)


def rdf(
    frames: Sequence[Atoms],
    pair: tuple[str, str] = ("O", "O"),
    r_max: float = 6.0,
    n_bins: int = 120,
) -> RadialDistribution:
    """The partial RDF of ``pair`` over periodic ``frames`` (see the module docstring)."""
    if not r_max > 0 or n_bins < 1:
        raise ValueError(f"need r_max > 0 and n_bins >= 1, got {r_max}, {n_bins}")
    if len(frames) == 0:
        raise ValueError("no frames")
    centre, partner = (_number(symbol) for symbol in pair)
    edges = np.linspace(0.0, r_max, n_bins + 1)
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    total = np.zeros(n_bins)
    densities = []
    for index, atoms in enumerate(frames):
        if not atoms.pbc.all() or abs(atoms.cell.volume) <= 0:
            raise ValueError(f"frame {index} is not periodic in 3D: an RDF needs a volume")
        n_centre = int(np.count_nonzero(atoms.numbers == centre))
        rho = int(np.count_nonzero(atoms.numbers == partner)) / abs(atoms.cell.volume)
        if n_centre == 0 or rho == 0:
            raise ValueError(f"frame {index} holds no {pair[0]}–{pair[1]} pairs")
        i, j, d = neighbor_list("ijd", atoms, r_max)
        keep = (atoms.numbers[i] == centre) & (atoms.numbers[j] == partner)
        counts, _ = np.histogram(d[keep], bins=edges)
        total += counts / (n_centre * rho * shells)
        densities.append(rho)
    return RadialDistribution(
        r_A=0.5 * (edges[1:] + edges[:-1]),
        g=total / len(frames),
        pair=(pair[0], pair[1]),
        partner_density_per_A3=float(np.mean(densities)),
        n_frames=len(frames),
    )


def first_minimum(r: np.ndarray, g: np.ndarray) -> float:
    """Position (Å) of the first minimum of g(r) after its first peak.

    The first peak is the highest one; the minimum is the lowest point between where g first
    drops below 1 after the peak and where it next rises above 1 (first such point on a tie,
    e.g. a gap of zeros in a crystal).
    """
    r, g = np.asarray(r, dtype=float), np.asarray(g, dtype=float)
    peak = int(np.argmax(g))
    below = np.nonzero(g[peak:] < 1.0)[0]
    if below.size == 0:
        raise ValueError("g(r) does not drop below 1 after its first peak: increase r_max")
    start = peak + int(below[0])
    above = np.nonzero(g[start:] > 1.0)[0]
    stop = start + int(above[0]) if above.size else len(g)
    return float(r[start + int(np.argmin(g[start:stop]))])


def coordination_number(
    r: np.ndarray,
    g: np.ndarray,
    density_of_species: float,
    r_cut: float | None = None,
) -> float:
    """Mean number of partners within ``r_cut`` (Å; default: :func:`first_minimum`).

    n = ρ ∫_0^{r_cut} g(r) 4π r² dr, summed over the uniform bins whose centre is at most
    ``r_cut``, each with its exact shell volume; ``density_of_species``: partner atoms per Å³.
    """
    r, g = np.asarray(r, dtype=float), np.asarray(g, dtype=float)
    if r.size < 2:
        raise ValueError("need at least two bins")
    if r_cut is None:
        r_cut = first_minimum(r, g)
    width = float(r[1] - r[0])
    shells = 4.0 * np.pi * (r**2 * width + width**3 / 12.0)
    inside = r <= r_cut + 1e-9 * width
    return float(density_of_species * np.sum(g[inside] * shells[inside]))


# --- model errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelErrors:
    """Errors of the committee mean on a held-out set.

    Attributes:
        energy_rmse_per_atom: RMSE of E/N, eV/atom.
        force_rmse: RMSE over all Cartesian force components, eV/Å.
        virial_rmse_per_atom: RMSE of W/N over the 9 components, eV/atom (None without any
            periodic structure whose reference has a stress, or without predicted virials).
        n_structures, n_atoms: size of the set.
        n_virials: structures that entered the virial RMSE.
    """

    energy_rmse_per_atom: float
    force_rmse: float
    virial_rmse_per_atom: float | None
    n_structures: int
    n_atoms: int
    n_virials: int


def model_errors(prediction: CommitteePrediction, references: Sequence[Atoms]) -> ModelErrors:
    """Errors of the committee-mean prediction against the references' labels (same order)."""
    if prediction.n_structures != len(references):
        raise ValueError(f"{prediction.n_structures} predicted structures but {len(references)} references")
    natoms = np.asarray(prediction.natoms, dtype=int)
    energy_errors, force_errors, virial_errors = [], [], []
    mean_energy = prediction.energies.mean(0)
    mean_forces = prediction.forces.mean(0)
    mean_virials = None if prediction.virials is None else prediction.virials.mean(0)
    offsets = prediction.offsets
    for s, atoms in enumerate(references):
        if len(atoms) != natoms[s]:
            raise ValueError(f"reference {s} has {len(atoms)} atoms, the prediction {natoms[s]}")
        labels = structure_labels(atoms)
        if "energy" not in labels or "forces" not in labels:
            raise ValueError(f"reference {s} has no energy and forces")
        energy_errors.append((mean_energy[s] - labels["energy"]) / natoms[s])
        force_errors.append(mean_forces[offsets[s] : offsets[s + 1]] - np.asarray(labels["forces"]))
        if mean_virials is not None and "stress" in labels and atoms.pbc.all():
            stress, volume = np.asarray(labels["stress"], dtype=float), atoms.get_volume()
            reference_virial = -volume * stress if stress.shape == (3, 3) else virial_from_stress(stress, volume)
            virial_errors.append((mean_virials[s] - reference_virial) / natoms[s])
    return ModelErrors(
        energy_rmse_per_atom=_rms(energy_errors),
        force_rmse=_rms(np.concatenate(force_errors)),
        virial_rmse_per_atom=_rms(virial_errors) if virial_errors else None,
        n_structures=len(references),
        n_atoms=int(natoms.sum()),
        n_virials=len(virial_errors),
    )


def _rms(values) -> float:
    return float(np.sqrt(np.mean(np.square(values))))
