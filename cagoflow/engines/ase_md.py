"""Committee MD through ASE's integrators: the embedded MD engine for local runs.

The committee MEAN drives the dynamics (:class:`~cagoflow.engines.committee_mean_calculator.CommitteeMeanCalculator`):

- NVT: Nosé–Hoover chain (:class:`ase.md.nose_hoover_chain.NoseHooverChainNVT`), chain length
  and damping time from the stage;
- NPT: isotropic Martyna–Tobias–Klein barostat with Nosé–Hoover chains on particles and cell
  (:class:`ase.md.nose_hoover_chain.IsotropicMTKNPT`), the ensemble of the paper's LAMMPS runs
  (``fix npt ... iso``, barostat chain 3, damping 1 ps); needs a cell periodic in all directions;
- NVE: velocity Verlet.

Velocities start from a Maxwell–Boltzmann distribution at the stage temperature drawn from
``seed`` (rescaled to exactly that temperature, centre-of-mass motion removed), so a run
depends only on its inputs.

Every ``dump_interval`` steps a frame is saved: a copy of the atoms (positions NOT wrapped
into the cell, momenta kept, no calculator attached, so a frame is never mistaken for a
labelled structure) with the committee statistics of that configuration in ``info``
(:data:`FRAME_INFO_KEYS`) and the per-atom force uncertainty σ̂_F_i in
``arrays["md_force_sigma"]`` (eV/Å).

Stability is checked on the fly with the paper's benchmark criteria: every ``check_interval``
steps, at every saved frame and at the last step, the smallest interatomic distance must stay at
or above ``min_distance`` (Å) and the density within ``density_range`` times the initial
density; non-finite committee energies or forces are checked at every step. A run that fails a
check ends early and says why in :attr:`MDResult.reason`; frames already saved are kept, the
failing configuration is not saved. An exception raised by the committee during the run (e.g.
on exploded coordinates) ends the run the same way. Problems with the inputs (a committee that
cannot evaluate the starting structure, NPT without a periodic cell) raise as usual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from ase import Atoms, units
from ase.md.md import MolecularDynamics
from ase.md import velocitydistribution
from ase.md.velocitydistribution import Stationary, ZeroRotation

from cagoflow.committee import Committee
from cagoflow.engines.md_settings import DEFAULT_CHECKS, MDStage
from cagoflow.engines.committee_mean_calculator import CommitteeMeanCalculator
from cagoflow.geometry import min_interatomic_distance

__all__ = ["FRAME_INFO_KEYS", "MDResult", "make_integrator", "run_md"]

#: ``info`` keys of every saved frame (units in the names' descriptions).
FRAME_INFO_KEYS: dict[str, str] = {
    "md_step": "MD step of the frame (0 = start)",
    "md_time_fs": "simulated time, fs",
    "md_temperature_K": "instantaneous kinetic temperature, K",
    "md_energy_mean": "committee-mean potential energy, eV",
    "md_energy_std": "committee spread of the potential energy, eV",
    "md_force_sigma_rms": "RMS over atoms of the per-atom force uncertainty σ̂_F_i (eq. 9), eV/Å",
    "md_force_sigma_max": "largest per-atom force uncertainty σ̂_F_i, eV/Å",
    "md_min_distance": "smallest interatomic distance (minimum image), Å",
    "md_density_ratio": "density / initial density (1 for non-periodic structures)",
}

#: Per-atom array of every saved frame: σ̂_F_i, eV/Å.
FRAME_SIGMA_ARRAY = "md_force_sigma"

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class MDResult:
    """One committee-MD trajectory.

    Attributes:
        frames: saved frames, one every ``dump_interval`` steps (step 0 is not saved), with
            committee statistics in ``info`` (:data:`FRAME_INFO_KEYS`).
        stable: True when the run completed every step and passed every check.
        reason: why the run ended early ("" when it is stable), e.g.
            "min interatomic distance 0.31 Å < 0.4 Å at step 300".
        steps_done: MD steps integrated (equals the stage's steps when stable).
        wall_time: seconds.
    """

    frames: list[Atoms] = field(repr=False)
    stable: bool
    reason: str
    steps_done: int
    wall_time: float


def make_integrator(atoms: Atoms, stage: MDStage) -> MolecularDynamics:
    """The ASE integrator of ``stage`` for ``atoms`` (which carry calculator and momenta)."""
    timestep = stage.timestep * units.fs
    if stage.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=timestep)
    from ase.md.nose_hoover_chain import IsotropicMTKNPT, NoseHooverChainNVT

    thermostat = {
        "temperature_K": stage.temperature,
        "tdamp": stage.thermostat_damping * units.fs,
        "tchain": stage.thermostat_chain,
    }
    if stage.ensemble == "nvt":
        return NoseHooverChainNVT(atoms, timestep=timestep, **thermostat)
    if not atoms.pbc.all():
        raise ValueError("NPT needs a structure periodic along all three axes")
    if stage.pressure is None:
        raise ValueError("NPT needs a pressure (bar)")
    return IsotropicMTKNPT(
        atoms,
        timestep=timestep,
        pressure_au=stage.pressure * units.bar,
        pdamp=stage.barostat_damping * units.fs,
        pchain=stage.barostat_chain,
        **thermostat,
    )


def initial_velocities(atoms: Atoms, temperature_K: float, seed: int) -> None:
    """Maxwell–Boltzmann momenta at exactly ``temperature_K``, no centre-of-mass motion
    (and, for a non-periodic structure, no rotation), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    if hasattr(velocitydistribution, "thermalize_momenta"):  # ase >= 3.29
        velocitydistribution.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        velocitydistribution.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    current = atoms.get_temperature()
    if current > 0:
        atoms.set_momenta(atoms.get_momenta() * np.sqrt(temperature_K / current))


def run_md(
    atoms: Atoms,
    committee: Committee,
    stage: MDStage,
    *,
    seed: int,
    check_interval: int = DEFAULT_CHECKS.check_interval,
    min_distance: float | None = DEFAULT_CHECKS.min_distance,
    density_range: tuple[float, float] | None = DEFAULT_CHECKS.density_range,
    progress: ProgressCallback | None = None,
) -> MDResult:
    """Run committee-mean MD of ``stage`` from ``atoms`` (not modified) and return its frames.

    Args:
        atoms: starting structure.
        committee: drives the dynamics with its mean; its spread is recorded in every frame.
        stage: ensemble, temperature (K), pressure (bar), steps, timestep (fs), dump
            interval, thermostat/barostat chains and damping times (fs).
        seed: seed of the initial velocities.
        check_interval: steps between stability checks.
        min_distance: smallest allowed interatomic distance, Å (None: no check).
        density_range: allowed density / initial density (None: no check; only periodic
            structures are checked).
        progress: called as ``progress(step, total_steps)`` after every check.
    """
    if check_interval < 1:
        raise ValueError(f"check_interval must be at least 1, got {check_interval}")
    atoms = atoms.copy()
    atoms.calc = CommitteeMeanCalculator(committee)
    initial_velocities(atoms, stage.temperature, seed)
    atoms.get_forces()  # a committee that cannot evaluate the start is an input problem: raise
    dynamics = make_integrator(atoms, stage)
    periodic = bool(atoms.pbc.all())
    initial_volume = atoms.get_volume() if periodic else None

    start = time.perf_counter()
    frames: list[Atoms] = []
    reason = ""
    runner = dynamics.irun(stage.steps)
    next(runner)  # step 0: already evaluated
    while True:
        try:
            next(runner)
        except StopIteration:
            break
        except Exception as exc:  # a committee failing on a blown-up configuration: a result
            reason = f"committee evaluation failed at step {dynamics.nsteps + 1}: {type(exc).__name__}: {exc}"
            break
        step = dynamics.nsteps
        reason = _finite_check(atoms, step)
        if reason:
            break
        dump = step % stage.dump_interval == 0
        if not (dump or step % check_interval == 0 or step == stage.steps):
            continue
        distance = min_interatomic_distance(atoms)
        ratio = initial_volume / atoms.get_volume() if periodic else 1.0
        reason = _stability_check(distance, ratio, step, min_distance, density_range if periodic else None)
        if reason:
            break
        if dump:
            frames.append(_frame(atoms, step, stage.timestep, distance, ratio))
        if progress is not None and (step % check_interval == 0 or step == stage.steps):
            progress(step, stage.steps)
    steps_done = dynamics.nsteps
    return MDResult(
        frames=frames,
        stable=not reason,
        reason=reason,
        steps_done=int(steps_done),
        wall_time=time.perf_counter() - start,
    )


def _finite_check(atoms: Atoms, step: int) -> str:
    """Why the committee's current energy or forces cannot be trusted ("" when finite)."""
    results = atoms.calc.results
    energy = results.get("energy", np.nan)
    forces = results.get("forces")
    if not np.isfinite(energy) or forces is None or not np.isfinite(forces).all():
        return f"non-finite committee energy or forces (NaN/inf) at step {step}"
    return ""


def _stability_check(
    distance: float,
    density_ratio: float,
    step: int,
    min_distance: float | None,
    density_range: tuple[float, float] | None,
) -> str:
    """The paper's stability criteria; the reason for failing ("" when passed)."""
    if min_distance is not None and distance < min_distance:
        return f"min interatomic distance {distance:.3f} Å < {min_distance} Å at step {step}"
    if density_range is not None:
        low, high = density_range
        if not low <= density_ratio <= high:
            return f"density {density_ratio:.3f} × initial outside [{low}, {high}] × initial at step {step}"
    return ""


def _frame(atoms: Atoms, step: int, timestep_fs: float, distance: float, density_ratio: float) -> Atoms:
    """A copy of the current configuration with the committee statistics in ``info``/``arrays``."""
    calculator: CommitteeMeanCalculator = atoms.calc
    atoms.get_potential_energy()  # make sure the statistics belong to these positions
    statistics = calculator.statistics
    frame = atoms.copy()  # no calculator: a frame is not a labelled structure
    sigma = np.asarray(statistics.force_sigma, dtype=float)
    frame.info.update(
        md_step=int(step),
        md_time_fs=float(step * timestep_fs),
        md_temperature_K=float(atoms.get_temperature()),
        md_energy_mean=float(statistics.energy_mean[0]),
        md_energy_std=float(statistics.energy_std[0]),
        md_force_sigma_rms=float(np.sqrt(np.mean(sigma**2))),
        md_force_sigma_max=float(sigma.max()),
        md_min_distance=float(distance),
        md_density_ratio=float(density_ratio),
    )
    frame.arrays[FRAME_SIGMA_ARRAY] = sigma.copy()
    return frame
