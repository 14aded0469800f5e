"""What the paper's Figs. 4 and 5 measure, per iteration: held-out errors and production MD.

Each iteration the evaluation stage (i) predicts a fixed, labelled benchmark set that never
enters training and measures the force, energy and virial RMSE of the committee MEAN and of
EACH member alone (:func:`heldout_errors`); (ii) runs production MD with each member alone,
in replicas, and reports its stability (stable only if every replica is, as in the paper) and,
for a stable member, the density, the self-diffusion coefficient and the first-shell
coordination number (:func:`production_md`); (iii) condenses both into one JSON-friendly
:class:`EvaluationSummary` (:func:`summarize`), which :mod:`cagoflow.convergence` reads to
decide when a campaign may stop.

The benchmark set is either a labelled file (:func:`load_benchmark`) or generated once before
iteration 0: MD driven by a given ASE calculator, evenly spaced frames of it
(:func:`benchmark_frames`), which the campaign then labels with its reference engine.

The computations are those of :mod:`cagoflow.analysis`; MD is
:func:`cagoflow.engines.ase_md.run_md` with its on-the-fly stability checks.

Units: eV, Å, eV/Å, fs (settings), ps (diffusion), K, bar, g/cm³, Å²/ps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from pydantic import Field, ValidationInfo, field_validator, model_validator

from cagoflow import analysis
from cagoflow.committee import Committee, CommitteePrediction
from cagoflow.engines.md_settings import MDStage, StabilityChecks
from cagoflow.inputs import IMPORT_PATH, FieldError, InputModel, resolve_file
from cagoflow.io import read_structures

__all__ = [
    "BenchmarkGeneration",
    "BenchmarkSettings",
    "EvaluationSettings",
    "EvaluationSummary",
    "HeldOutErrors",
    "MemberProduction",
    "ProductionSettings",
    "benchmark_frames",
    "heldout_errors",
    "load_benchmark",
    "production_md",
    "summarize",
]



# --- settings ---------------------------------------------------------------------------------------


class BenchmarkGeneration(InputModel):
    """A benchmark set made once before iteration 0: MD with ``calculator``, evenly spaced frames
    of it, each rattled by ``rattle``, then labelled by the campaign's reference engine."""

    frames: int = Field(20, ge=1, description="benchmark structures per system")
    md: MDStage = Field(
        MDStage(steps=400, timestep=0.5, dump_interval=10), description="the MD the frames are taken from"
    )
    calculator: str | None = Field(
        None,
        description="import path 'module:Class' of the ASE calculator driving that MD "
        "(null: the campaign's reference engine, in-process engines only)",
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of that calculator")
    rattle: float = Field(0.0, ge=0, le=0.5, description="standard deviation of a Gaussian rattle of each frame, Å")

    @field_validator("calculator")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not IMPORT_PATH.match(value):
            raise ValueError(
                f"expected an import path 'module:Class' (e.g. 'ase.calculators.emt:EMT'), found '{value}'"
            )
        return value

    @model_validator(mode="after")
    def _enough_frames(self) -> BenchmarkGeneration:
        if self.frames > self.md.frames:
            raise FieldError(
                f"{self.frames} frames wanted, but the MD saves only {self.md.frames} "
                f"({self.md.steps} steps / dump_interval {self.md.dump_interval})",
                "frames",
            )
        return self


class BenchmarkSettings(InputModel):
    """Where the fixed, labelled held-out benchmark set comes from: exactly one of ``file`` or
    ``generate``. It never enters training."""

    file: Path | None = Field(
        None, description="labelled structure file (extxyz with energy and forces), relative to the campaign file"
    )
    generate: BenchmarkGeneration | None = Field(None, description="generate the set once before iteration 0")

    @field_validator("file")
    @classmethod
    def _benchmark_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_file(value, info, "benchmark file")

    @model_validator(mode="after")
    def _exactly_one(self) -> BenchmarkSettings:
        if (self.file is None) == (self.generate is None):
            found = "both" if self.file is not None else "neither"
            raise ValueError(f"give exactly one of 'file' or 'generate', found {found}")
        return self


class ProductionSettings(StabilityChecks):
    """Production MD of each member alone (the paper's benchmark) and the properties measured;
    a member is unstable at its first failed stability check."""

    replicas: int = Field(2, ge=1, description="independent trajectories per member (stable only if all are)")
    md: MDStage = Field(MDStage(), description="ensemble (NVT or NPT), temperature, length, dump interval")
    diffusion_species: str = Field("O", description="species whose self-diffusion coefficient is measured")
    coordination_pair: tuple[str, str] = Field(
        ("O", "O"), description="(centre, partner) of the first-shell coordination number"
    )
    rdf_r_max: float = Field(6.0, gt=0, description="range of the RDF the first shell is found in, Å")

    @property
    def frame_interval_fs(self) -> float:
        """Simulated time between saved frames, fs."""
        return self.md.dump_interval * self.md.timestep


class EvaluationSettings(InputModel):
    """The per-iteration evaluation: held-out errors on a benchmark set and production MD."""

    benchmark: BenchmarkSettings = Field(
        BenchmarkSettings(generate=BenchmarkGeneration()), description="the held-out benchmark set"
    )
    production: ProductionSettings = Field(ProductionSettings(), description="production MD per member")


# --- benchmark set ----------------------------------------------------------------------------------


def load_benchmark(path: str | Path) -> list[Atoms]:
    """The labelled structures of a benchmark file (energy and forces required)."""
    return read_structures(path, require_labels=True)


def benchmark_frames(start: Atoms, calculator: BaseCalculator, settings: BenchmarkGeneration, seed: int) -> list[Atoms]:
    """``settings.frames`` unlabelled structures from MD of ``start`` driven by ``calculator``.

    The MD is :func:`~cagoflow.engines.ase_md.run_md` with the calculator as a committee of one
    and run_md's stability checks (min distance 0.4 Å, density within 0.25–2 × initial); the
    calculator must give a stress for NPT. The frames are the last saved
    one and every ``k``-th before it (``k`` = saved frames // wanted frames: evenly spaced, the
    later, equilibrated part preferred), each rattled by a seeded Gaussian of standard deviation
    ``settings.rattle`` (Å). Returned as bare copies: positions, numbers, cell and pbc, no
    calculator, ``info["system"]`` of ``start`` if present.

    Raises ValueError when the MD is unstable: frames of a blown-up run are no benchmark.
    """
    from cagoflow.calculator_committee import CalculatorCommittee
    from cagoflow.engines.ase_md import run_md

    result = run_md(start, CalculatorCommittee([calculator]), settings.md, seed=seed)
    if not result.stable:
        raise ValueError(f"the benchmark MD is unstable: {result.reason}")
    stride = len(result.frames) // settings.frames
    picked = result.frames[len(result.frames) - 1 - stride * (settings.frames - 1) :: stride]
    rng = np.random.default_rng((seed, 1))
    structures = []
    for frame in picked:
        atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        if settings.rattle > 0:
            atoms.positions += rng.normal(scale=settings.rattle, size=atoms.positions.shape)
        if "system" in start.info:
            atoms.info["system"] = start.info["system"]
        structures.append(atoms)
    return structures


# --- held-out errors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutErrors:
    """Errors on the benchmark set (see :class:`~cagoflow.analysis.ModelErrors` for units),
    JSON-friendly via :func:`dataclasses.asdict`.

    Attributes:
        mean: errors of the committee-mean prediction.
        members: errors of each member alone, in member order.
    """

    mean: analysis.ModelErrors
    members: tuple[analysis.ModelErrors, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldOutErrors:
        """The inverse of :func:`dataclasses.asdict` (after a JSON round trip)."""
        return cls(
            mean=analysis.ModelErrors(**data["mean"]),
            members=tuple(analysis.ModelErrors(**member) for member in data["members"]),
        )


def heldout_errors(prediction: CommitteePrediction, references: Sequence[Atoms]) -> HeldOutErrors:
    """Errors of the committee mean and of each member against the references' labels."""
    return HeldOutErrors(
        mean=analysis.model_errors(prediction, references),
        members=tuple(analysis.model_errors(prediction.members([m]), references) for m in range(prediction.n_members)),
    )


# --- production MD ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberProduction:
    """Production MD of one member over its replicas (JSON-friendly via :func:`dataclasses.asdict`).

    Attributes:
        stability: stability over the replicas (stable only if every replica is).
        n_frames: saved frames of all replicas together.
        density: mean mass density over all frames, g/cm³ (None when unstable or not computable).
        diffusion: self-diffusion coefficient of the settings' species, mean over replicas,
            Å²/ps (None as for ``density``).
        coordination: first-shell coordination number of the settings' pair, r_cut at the first
            minimum of the RDF over all frames (None as for ``density``).
        notes: why a property of a stable member is None.
    """

    stability: analysis.StabilityReport
    n_frames: int
    density: float | None
    diffusion: float | None
    coordination: float | None
    notes: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberProduction:
        """The inverse of :func:`dataclasses.asdict` (after a JSON round trip)."""
        stability = data["stability"]
        return cls(
            stability=analysis.StabilityReport(
                **{**stability, "reasons": tuple(stability["reasons"]), "steps_done": tuple(stability["steps_done"])}
            ),
            n_frames=data["n_frames"],
            density=data["density"],
            diffusion=data["diffusion"],
            coordination=data["coordination"],
            notes=tuple(data["notes"]),
        )


def production_md(committee: Committee, start: Atoms, settings: ProductionSettings, seed: int) -> MemberProduction:
    """Run ``settings.replicas`` MD replicas of ``start`` driven by ``committee`` and measure it.

    ``committee`` is one member (``committee.subset([m])``; a larger committee runs on its mean).
    Each replica starts from velocities of its own seed, derived from ``seed`` and the replica
    index. The properties of a stable member need a structure periodic in 3D (density, RDF) and:

    - diffusion: at least 4 saved frames per replica (the MSD is fitted between 10 % and 50 % of
      each replica's time span, :func:`~cagoflow.analysis.diffusion_fit`). A meaningful value
      needs far more: the fit window must lie beyond the ballistic regime (≳ 1 ps for water),
      i.e. runs of tens of ps, and frames close enough that no atom moves half a box between two;
    - coordination: an RDF of ``coordination_pair`` whose first peak falls below 1 within
      ``rdf_r_max``.

    What cannot be computed is None, with the reason in :attr:`MemberProduction.notes`.
    """
    from cagoflow.engines.ase_md import run_md

    results = [
        run_md(
            start,
            committee,
            settings.md,
            seed=int(np.random.SeedSequence((seed, replica)).generate_state(1)[0]),
            **settings.check_arguments(),
        )
        for replica in range(settings.replicas)
    ]
    stability = analysis.stability(results)
    frames = [frame for result in results for frame in result.frames]
    if not stability.stable:
        return MemberProduction(stability, len(frames), None, None, None, ())
    notes: list[str] = []

    def diffusion() -> float:
        values = [
            analysis.self_diffusion(result.frames, settings.frame_interval_fs, settings.diffusion_species)
            for result in results
        ]
        return float(np.mean(values))

    def coordination() -> float:
        return analysis.rdf(frames, settings.coordination_pair, settings.rdf_r_max).coordination_number()

    return MemberProduction(
        stability=stability,
        n_frames=len(frames),
        density=_computed("density", lambda: float(analysis.density(frames).mean()), notes),
        diffusion=_computed("diffusion", diffusion, notes),
        coordination=_computed("coordination", coordination, notes),
        notes=tuple(notes),
    )


def _computed(name: str, compute: Callable[[], float], notes: list[str]) -> float | None:
    """``compute()``, or None with a note when the analysis says it cannot be done (ValueError)."""
    try:
        return compute()
    except ValueError as exc:
        notes.append(f"{name}: {exc}")
        return None


# --- summary ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationSummary:
    """One iteration's evaluation, JSON-friendly (:func:`dataclasses.asdict`; ``EvaluationSummary(**data)``
    reads it back).

    Attributes:
        force_rmse: held-out force RMSE of the committee mean, eV/Å (all Cartesian components).
        energy_rmse_per_atom: held-out energy RMSE of the committee mean, eV/atom.
        virial_rmse_per_atom: held-out virial RMSE of the committee mean, eV/atom (None without
            periodic references with a stress, or without predicted virials).
        member_force_rmse, member_energy_rmse_per_atom, member_virial_rmse_per_atom: the same of
            each member alone, in member order (the virial list None as above).
        benchmark_structures: structures of the benchmark set.
        members: committee size M.
        stable_members: members whose production MD was stable in every replica.
        stable: per member, whether it was stable.
        density_mean, density_std: over the stable members, g/cm³ (None when no stable member
            has a value); std is the population standard deviation (0 for one member).
        diffusion_mean, diffusion_std: likewise, Å²/ps.
        coordination_mean, coordination_std: likewise, partners in the first shell.
        reasons: why each unstable member failed, "member m: <reason of each failed replica>".
    """

    force_rmse: float
    energy_rmse_per_atom: float
    virial_rmse_per_atom: float | None
    member_force_rmse: list[float]
    member_energy_rmse_per_atom: list[float]
    member_virial_rmse_per_atom: list[float] | None
    benchmark_structures: int
    members: int
    stable_members: int
    stable: list[bool]
    density_mean: float | None
    density_std: float | None
    diffusion_mean: float | None
    diffusion_std: float | None
    coordination_mean: float | None
    coordination_std: float | None
    reasons: list[str]


def summarize(errors: HeldOutErrors, members: Sequence[MemberProduction]) -> EvaluationSummary:
    """One summary of the held-out errors and of every member's production MD (member order)."""
    if len(members) != len(errors.members):
        raise ValueError(f"held-out errors of {len(errors.members)} members but production MD of {len(members)}")
    stable = [member for member in members if member.stability.stable]
    density, diffusion, coordination = (
        _mean_std([getattr(member, name) for member in stable]) for name in ("density", "diffusion", "coordination")
    )
    virials = [member.virial_rmse_per_atom for member in errors.members]
    return EvaluationSummary(
        force_rmse=errors.mean.force_rmse,
        energy_rmse_per_atom=errors.mean.energy_rmse_per_atom,
        virial_rmse_per_atom=errors.mean.virial_rmse_per_atom,
        member_force_rmse=[member.force_rmse for member in errors.members],
        member_energy_rmse_per_atom=[member.energy_rmse_per_atom for member in errors.members],
        member_virial_rmse_per_atom=None if errors.mean.virial_rmse_per_atom is None else virials,
        benchmark_structures=errors.mean.n_structures,
        members=len(members),
        stable_members=len(stable),
        stable=[member.stability.stable for member in members],
        density_mean=density[0],
        density_std=density[1],
        diffusion_mean=diffusion[0],
        diffusion_std=diffusion[1],
        coordination_mean=coordination[0],
        coordination_std=coordination[1],
        reasons=[
            f"member {index}: {'; '.join(member.stability.reasons)}"
            for index, member in enumerate(members)
            if not member.stability.stable
        ],
    )


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and population standard deviation of the values that are not None (None, None if none)."""
    present = [value for value in values if value is not None]
    if not present:
        return None, None
    return float(np.mean(present)), float(np.std(present))
