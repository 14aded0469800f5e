"""Campaign and site configuration: pydantic schemas and YAML loaders with clear errors.

A *campaign* file says what to compute (systems, committee, MD, sampling, CAGO, filters,
reference, dataset split); a *site* file says where it runs (executors per partition, which
stage runs on which executor, the commands that start each engine). Both are validated on
load; any problem becomes one :class:`~cagoflow.errors.InputError` that names the file, the
dotted field path (``cago.delta``, ``systems.water.structures``), the line, what was expected
and what was found.

Iterations count from 0. Where a setting may change during a campaign it is a *schedule*: a
list of entries with strictly increasing ``from_iteration`` starting at 0; the entry in force
at iteration ``i`` is the last one with ``from_iteration <= i`` (:func:`schedule_at`). A plain
value or a single mapping means "the same for all iterations".

Units: eV, Å, eV/Å, fs, K, bar, GB, s.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cagoflow.cago import CagoSettings
from cagoflow.convergence import StopSettings
from cagoflow.engines.md_settings import MDStage
from cagoflow.evaluation import EvaluationSettings
from cagoflow.filters import FilterSettings
from cagoflow.errors import InputError
from cagoflow.inputs import (
    IMPORT_PATH, FieldError, InputModel, ScheduleEntry, check_schedule, resolve_file, schedule_at, schedule_input,
)  # fmt: skip

__all__ = [
    "STAGES",
    "CagoConfig",
    "CagoSource",
    "CalibrationConfig",
    "CampaignConfig",
    "CommitteeConfig",
    "Cp2kCommand",
    "DatasetConfig",
    "EngineCommand",
    "EnginesConfig",
    "ExecutorConfig",
    "MDConfig",
    "MDStage",
    "ReferenceConfig",
    "SamplingConfig",
    "ScheduleEntry",
    "SiteConfig",
    "SlurmProviderConfig",
    "StageMap",
    "SystemConfig",
    "TrainingStage",
    "default_site",
    "load_campaign",
    "load_site",
    "machine_cores",
    "schedule_at",
]

#: Names used in directory names: systems, executors, campaigns, sites.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

#: The workflow stages, in the order an iteration runs them.
STAGES: tuple[str, ...] = (
    "train", "calibrate", "evaluate", "md", "sample", "cago", "prefilter", "reference", "postfilter", "merge"
)  # fmt: skip
#: Stages that may run on an executor of kind ``mpi``: those that start MPI programs (CP2K).
MPI_STAGES: tuple[str, ...] = ("reference",)


# ---------------------------------------------------------------------------------------------
# Campaign: systems and committee
# ---------------------------------------------------------------------------------------------


class SystemConfig(InputModel):
    """One chemical system: its starting structures and electronic state."""

    structures: Path = Field(
        ..., description="structure file (extxyz, POSCAR, cif, ...), relative to the campaign file; stored absolute"
    )
    labelled: bool = Field(False, description="the file already carries reference energies and forces (eV, eV/Å)")
    charge: int = Field(0, description="total charge, e (for the reference calculation)")
    multiplicity: int = Field(1, ge=1, description="spin multiplicity 2S+1 (for the reference calculation)")
    initial_samples: int = Field(
        0, ge=0, description="rattled copies of the starting structures labelled before iteration 0 (0: none)"
    )
    initial_rattle: float = Field(0.05, gt=0, le=0.5, description="standard deviation of that rattle, Å")

    @model_validator(mode="before")
    @classmethod
    def _path_only(cls, data: Any) -> Any:
        """``water: water.extxyz`` is short for ``water: {structures: water.extxyz}``."""
        return {"structures": data} if isinstance(data, (str, Path)) else data

    @field_validator("structures")
    @classmethod
    def _structure_file(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_file(value, info, "structure file")


class TrainingStage(ScheduleEntry):
    """Training length (and hyperparameters) from ``from_iteration`` on."""

    steps: int = Field(..., ge=1, description="optimiser steps per member (DeePMD: numb_steps)")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="merged over committee.hyperparameters from this iteration on (e.g. a lower learning rate when fine-tuning)",
    )


TrainingSchedule = Annotated[
    tuple[TrainingStage, ...], BeforeValidator(schedule_input("steps")), AfterValidator(check_schedule)
]

#: Training steps per preset when ``training_steps`` is not given. ``paper``: 50k steps in the
#: paper's iterations 1–2, 150k in 3–4 and 400k from 5 on (here counted from 0).
PRESET_TRAINING_STEPS: dict[str, list[dict[str, int]]] = {
    "tiny": [{"from_iteration": 0, "steps": 200}],
    "paper": [
        {"from_iteration": 0, "steps": 50_000},
        {"from_iteration": 2, "steps": 150_000},
        {"from_iteration": 4, "steps": 400_000},
    ],
}


class CommitteeConfig(InputModel):
    """The committee of MLIPs trained each iteration."""

    backend: Literal["analytic", "deepmd", "nequip", "allegro"] = Field(
        "deepmd", description="MLIP backend ('analytic': a cheap stand-in for tests and demos)"
    )
    size: int = Field(4, ge=2, le=256, description="number of members M (the paper: 12)")
    min_trained: int = Field(2, ge=2, description="go on with the iteration when at least this many members trained")
    preset: Literal["tiny", "paper"] = Field(
        "tiny", description="model size: 'tiny' for tests and laptops, 'paper' for the published settings"
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="free mapping passed to the backend's input template"
    )
    training_steps: TrainingSchedule = Field(..., description="steps per member, per iteration (default: preset)")
    fine_tune: bool = Field(False, description="start each iteration from the previous iteration's members")

    @model_validator(mode="before")
    @classmethod
    def _preset_steps(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "training_steps" not in data:
            preset = data.get("preset", "tiny")
            known = isinstance(preset, str) and preset in PRESET_TRAINING_STEPS
            return {**data, "training_steps": PRESET_TRAINING_STEPS[preset if known else "tiny"]}
        return data

    @model_validator(mode="after")
    def _enough_members(self) -> CommitteeConfig:
        if self.min_trained > self.size:
            raise FieldError(
                f"min_trained ({self.min_trained}) exceeds the committee size ({self.size})", "min_trained"
            )
        return self

    def steps_at(self, iteration: int) -> int:
        """Training steps per member at ``iteration``."""
        return schedule_at(self.training_steps, iteration).steps

    def hyperparameters_at(self, iteration: int) -> dict[str, Any]:
        """The backend's hyperparameters at ``iteration``: the schedule entry's over the committee's."""
        from cagoflow.backends import deep_merge

        return deep_merge(self.hyperparameters, schedule_at(self.training_steps, iteration).hyperparameters)


class CalibrationConfig(InputModel):
    """Power-law calibration σ_cal = a·σ̂^b of the committee spread, fitted on the test set."""

    subset_calibration: bool = Field(
        True, description="also calibrate the spread of CAGO's member subsets (their σ̂ differs from the committee's)"
    )
    n_bins: int = Field(10, ge=2, description="bins of σ̂ for the calibration diagnostics (reliability curve)")
    quantities: tuple[Literal["forces", "energy", "virial"], ...] = Field(
        ("forces", "energy", "virial"), description="quantities to calibrate; CAGO needs 'forces'"
    )

    @field_validator("quantities")
    @classmethod
    def _forces_included(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "forces" not in value:
            raise ValueError(
                f"CAGO needs the force calibration: 'forces' must be among the quantities, found {list(value)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"quantities must not repeat, found {list(value)}")
        return value


# ---------------------------------------------------------------------------------------------
# Campaign: MD, sampling, CAGO, filters
# ---------------------------------------------------------------------------------------------


MDSchedule = Annotated[tuple[MDStage, ...], BeforeValidator(schedule_input(None)), AfterValidator(check_schedule)]


class MDConfig(InputModel):
    """Committee-driven MD that explores configurations to sample from."""

    engine: Literal["ase", "lammps"] = Field("ase", description="MD engine")
    schedule: MDSchedule = Field((MDStage(),), description="MD settings per iteration")
    replicas: int = Field(1, ge=1, description="independent trajectories per system and iteration")
    check_interval: int = Field(100, ge=1, description="steps between stability checks")
    stop_min_distance: float | None = Field(
        0.4, gt=0, description="stop a trajectory when two atoms come closer than this, Å (null: never)"
    )
    stop_density_ratio: tuple[float, float] | None = Field(
        (0.25, 2.0), description="stop a trajectory when density/initial density leaves [low, high] (null: never)"
    )

    @field_validator("stop_density_ratio")
    @classmethod
    def _ratio_bracket(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] < 1 < value[1]:
            raise ValueError(f"expected [low, high] with 0 < low < 1 < high, found {list(value)}")
        return value


class CagoSource(ScheduleEntry):
    """Where the structures that CAGO starts from come from, from ``from_iteration`` on."""

    source: Literal["training", "md"] = Field("md", description="draw from the training set or from committee MD")
    subset: int | Literal["all"] = Field(
        "all", description="committee members CAGO uses (a random subset of this size; the paper: 3 early on), or 'all'"
    )
    n_structures: int | None = Field(
        None, ge=1, description="structures per system and iteration (default: sampling.per_iteration)"
    )
    optimize: bool = Field(
        True, description="run CAGO; false sends the sampled frames to the reference as they are (baselines)"
    )

    @field_validator("subset", mode="before")
    @classmethod
    def _subset_value(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
            return value
        raise ValueError(f"expected a number of committee members (at least 2) or 'all', found {value!r}")


CagoSchedule = Annotated[
    tuple[CagoSource, ...], BeforeValidator(schedule_input("source")), AfterValidator(check_schedule)
]


class SamplingConfig(InputModel):
    """How many structures each iteration adds and how they are picked."""

    per_iteration: int = Field(4, ge=1, description="structures per system and iteration (the paper: 20)")
    strategy: Literal["random", "max_uncertainty"] = Field(
        "random", description="how frames are picked from the source: at random or by largest committee spread"
    )
    cago_from: CagoSchedule = Field((CagoSource(),), description="source of CAGO's starting structures per iteration")


class CagoConfig(CagoSettings):
    """CAGO as a campaign runs it: the settings of :mod:`cagoflow.cago` (the same model and
    defaults as ``cagoflow cago``) plus how many structures one task optimises together."""

    structures_per_task: int = Field(
        4, ge=1, description="structures of one system and iteration optimised together in one task (one committee call per round; GPUs want many)"
    )


# ---------------------------------------------------------------------------------------------
# Campaign: reference, dataset, top level
# ---------------------------------------------------------------------------------------------

TBLITE_METHODS = ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB")


class ReferenceConfig(InputModel):
    """The reference method that labels new structures (energies eV, forces eV/Å, stress)."""

    engine: Literal["tblite", "cp2k", "ase"] = Field("tblite", description="reference engine")
    method: str | None = Field(
        None, description=f"tblite: one of {', '.join(TBLITE_METHODS)} (default GFN1-xTB); cp2k: a label for records"
    )
    calculator: str | None = Field(None, description="engine 'ase': import path 'module:Class' of an ASE calculator")
    settings: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the engine or calculator")
    template: Path | None = Field(None, description="cp2k: input template, relative to the campaign file")
    stress: bool = Field(True, description="also compute the stress of periodic structures")

    @field_validator("template")
    @classmethod
    def _template_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_file(value, info, "template file")

    @model_validator(mode="after")
    def _engine_fields(self) -> ReferenceConfig:
        if self.engine == "tblite" and self.method is not None and self.method not in TBLITE_METHODS:
            suggestion = difflib.get_close_matches(self.method, TBLITE_METHODS, n=1)
            hint = f" (did you mean '{suggestion[0]}'?)" if suggestion else ""
            raise FieldError(f"expected one of {', '.join(TBLITE_METHODS)}, found '{self.method}'{hint}", "method")
        if self.engine == "ase" and self.calculator is None:
            raise FieldError(
                "engine 'ase' needs calculator: 'module:Class' (e.g. 'ase.calculators.emt:EMT')", "calculator"
            )
        if self.calculator is not None:
            if self.engine != "ase":
                raise FieldError(f"calculator applies to engine 'ase' only, found engine '{self.engine}'", "calculator")
            if not IMPORT_PATH.match(self.calculator):
                raise FieldError(f"expected an import path 'module:Class', found '{self.calculator}'", "calculator")
        if self.template is not None and self.engine != "cp2k":
            raise FieldError(f"template applies to engine 'cp2k' only, found engine '{self.engine}'", "template")
        return self

    @property
    def method_name(self) -> str | None:
        """The method with the engine's default filled in (tblite: GFN1-xTB)."""
        return self.method or ("GFN1-xTB" if self.engine == "tblite" else None)


class DatasetConfig(InputModel):
    """Split of the dataset (see :func:`cagoflow.dataset.make_splits_for_hashes`).

    A test set of ``test_fraction`` of all structures, at least ``min_test`` (also used for
    calibration: early iterations need more than 10 % of a dozen structures); per member a
    bootstrap training sample and a validation set, as fractions of the structures outside the
    test set (the paper: 10 % test, then 80 %/10 % train/validation of the rest).
    """

    test_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of all structures held out (test, calibration)")
    train_fraction: float = Field(0.8, gt=0, le=1, description="per member: training sample, fraction of the rest")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="per member: validation set, fraction of the rest")
    min_test: int = Field(
        1, ge=1, description="test structures at least (the calibration's data; at most half of the dataset)"
    )

    @model_validator(mode="after")
    def _fractions_fit(self) -> DatasetConfig:
        total = self.train_fraction + self.validation_fraction
        if total > 1 + 1e-9:
            raise ValueError(
                "train_fraction + validation_fraction (both of the structures outside the test set) must not "
                f"exceed 1, found {self.train_fraction} + {self.validation_fraction} = {total:g}"
            )
        return self


class CampaignConfig(InputModel):
    """A whole active-learning campaign (the top level of a campaign YAML file)."""

    name: Name = Field("campaign", description="campaign name (letters, digits, '_', '-', '.')")
    seed: int = Field(0, ge=0, description="seed of every random choice (splits, subsets, sampling, MD velocities)")
    iterations: int = Field(..., ge=1, le=10_000, description="number of active-learning iterations")
    systems: dict[Name, SystemConfig] = Field(..., description="mapping system name → system")
    committee: CommitteeConfig = Field(CommitteeConfig(), description="MLIP committee")
    calibration: CalibrationConfig = Field(CalibrationConfig(), description="uncertainty calibration")
    md: MDConfig = Field(MDConfig(), description="committee MD")
    sampling: SamplingConfig = Field(SamplingConfig(), description="structure selection")
    cago: CagoConfig = Field(CagoConfig(), description="CAGO optimisation")
    filters: FilterSettings = Field(FilterSettings(), description="filters around the reference")
    reference: ReferenceConfig = Field(ReferenceConfig(), description="reference method")
    dataset: DatasetConfig = Field(DatasetConfig(), description="dataset split")
    evaluation: EvaluationSettings | None = Field(
        None, description="per-iteration evaluation: held-out errors, production MD per member, properties (null: off)"
    )
    stop: StopSettings | None = Field(None, description="end the campaign early when a criterion holds (needs evaluation)")

    @field_validator("systems")
    @classmethod
    def _some_systems(cls, value: dict[str, SystemConfig]) -> dict[str, SystemConfig]:
        if not value:
            raise ValueError("a campaign must name its systems (found an empty mapping)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> CampaignConfig:
        self._check_subsets()
        self._check_md_frames()
        self._check_evaluation()
        return self

    def _check_evaluation(self) -> None:
        """A stop criterion needs the evaluation; generating a benchmark needs an in-process calculator."""
        if self.stop is not None and self.evaluation is None:
            raise FieldError("stopping early judges the evaluation of every iteration: add an 'evaluation' block", "stop")
        generate = None if self.evaluation is None else self.evaluation.benchmark.generate
        if generate is not None and generate.calculator is None and self.reference.engine == "cp2k":
            raise FieldError(
                "the benchmark MD runs in-process and CP2K does not: name an ASE calculator for it "
                "(e.g. 'tblite.ase:TBLite'); its frames are then labelled with CP2K",
                "evaluation", "benchmark", "generate", "calculator",
            )  # fmt: skip

    def _check_subsets(self) -> None:
        """Every CAGO subset fits in the committee."""
        for index, entry in enumerate(self.sampling.cago_from):
            if entry.subset != "all" and entry.subset > self.committee.size:
                raise FieldError(
                    f"a CAGO subset of {entry.subset} members exceeds the committee size ({self.committee.size})",
                    "sampling", "cago_from", index, "subset",
                )  # fmt: skip

    def _check_md_frames(self) -> None:
        """Every iteration that samples from MD asks for no more frames than its MD saves."""
        for iteration in range(self.iterations):
            entry, stage = self.cago_source(iteration), self.md_stage(iteration)
            wanted, available = self.n_samples(iteration), self.md.replicas * stage.frames
            if entry.source != "md" or wanted <= available:
                continue
            index = self.sampling.cago_from.index(entry)
            where = ("cago_from", index, "n_structures") if entry.n_structures else ("per_iteration",)
            raise FieldError(
                f"iteration {iteration} samples {wanted} frames per system from MD, but its MD saves only "
                f"{available} ({self.md.replicas} replica(s) × {stage.steps} steps / dump_interval "
                f"{stage.dump_interval})",
                "sampling", *where,
            )  # fmt: skip

    def md_stage(self, iteration: int) -> MDStage:
        """MD settings at ``iteration``."""
        return schedule_at(self.md.schedule, iteration)

    def cago_source(self, iteration: int) -> CagoSource:
        """Source of CAGO's starting structures at ``iteration``."""
        return schedule_at(self.sampling.cago_from, iteration)

    def training_steps(self, iteration: int) -> int:
        """Training steps per member at ``iteration``."""
        return self.committee.steps_at(iteration)

    def n_samples(self, iteration: int) -> int:
        """Structures drawn per system at ``iteration``."""
        return self.cago_source(iteration).n_structures or self.sampling.per_iteration

    def cago_subset(self, iteration: int) -> int:
        """Committee members CAGO uses at ``iteration`` (``all`` resolved to the committee size)."""
        subset = self.cago_source(iteration).subset
        return self.committee.size if subset == "all" else subset


# ---------------------------------------------------------------------------------------------
# Site
# ---------------------------------------------------------------------------------------------

_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
#: Workers of an executor of kind ``threads`` without ``max_workers`` (Parsl's ``max_threads`` default).
PARSL_DEFAULT_THREADS = 2


def machine_cores() -> int:
    """Cores this process may run on: its CPU affinity (the CPU count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


class SlurmProviderConfig(InputModel):
    """A SLURM partition that blocks of workers are submitted to."""

    partition: str | None = Field(None, description="SLURM partition (default: the cluster's default)")
    account: str | None = Field(None, description="account to charge")
    qos: str | None = Field(None, description="quality of service")
    walltime: str = Field("01:00:00", description="wall time per block, HH:MM:SS (hours may exceed 24)")
    nodes_per_block: int = Field(1, ge=1, description="nodes per job")
    cores_per_node: int | None = Field(None, ge=1, description="cores to request per node (default: the partition's)")
    gpus_per_node: int = Field(0, ge=0, description="GPUs to request per node")
    mem_per_node: float | None = Field(None, gt=0, description="memory per node, GB")
    init_blocks: int = Field(1, ge=0, description="jobs submitted at start")
    min_blocks: int = Field(0, ge=0, description="jobs kept while idle")
    max_blocks: int = Field(1, ge=1, description="most jobs at once")
    scheduler_options: str = Field("", description="extra '#SBATCH ...' lines")
    worker_init: str = Field("", description="shell lines run in the job before workers start (module load, venv)")
    launcher: Literal["srun", "single_node", "simple"] | None = Field(
        None, description="how workers start in a job (default: single_node for htex_slurm, simple for mpi)"
    )
    exclusive: bool = Field(True, description="request whole nodes (false on a shared or one-node test cluster)")
    cmd_timeout: int = Field(30, ge=1, description="timeout of sbatch/squeue/scancel calls, s")
    cmd_retries: int = Field(
        3, ge=0, description="retries of a scheduler call that timed out or could not reach the controller (backoff 2, 4, 8 s, ...)"
    )

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime_format(cls, value: Any) -> Any:
        match = _WALLTIME.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"expected a wall time as 'HH:MM:SS', found {value!r}")
        if not any(int(part) for part in match.groups()):
            raise ValueError("the wall time must be longer than 00:00:00")
        return value

    @model_validator(mode="after")
    def _blocks(self) -> SlurmProviderConfig:
        if self.min_blocks > self.max_blocks:
            raise FieldError(f"min_blocks ({self.min_blocks}) exceeds max_blocks ({self.max_blocks})", "min_blocks")
        if self.init_blocks > self.max_blocks:
            raise FieldError(f"init_blocks ({self.init_blocks}) exceeds max_blocks ({self.max_blocks})", "init_blocks")
        return self

    @property
    def walltime_seconds(self) -> int:
        """Wall time per block, s."""
        hours, minutes, seconds = (int(part) for part in self.walltime.split(":"))
        return 3600 * hours + 60 * minutes + seconds


class ExecutorConfig(InputModel):
    """One Parsl executor: a pool of workers on this machine or on a SLURM partition."""

    kind: Literal["threads", "htex_local", "htex_slurm", "mpi"] = Field(
        "threads", description="thread pool, local HighThroughputExecutor, HTEX on SLURM, or MPIExecutor"
    )
    max_workers: int | None = Field(
        None, ge=1, description="workers (threads; per node for HTEX; per block for mpi); default: Parsl's"
    )
    cores_per_worker: float = Field(1.0, gt=0, description="cores per HTEX worker")
    available_accelerators: int | list[str] = Field(
        0,
        description="accelerators: a count or device ids; one HTEX worker per entry, pinned to it "
        "(repeat an id to pack several workers on one GPU: small models do not fill one)",
    )
    interface: str | None = Field(None, description="network interface workers reach the interchange on (e.g. 'ib0')")
    worker_init: str = Field(
        "", description="shell lines run before local HTEX/mpi workers start (with SLURM: provider.worker_init)"
    )
    mpi_launcher: Literal["srun", "mpiexec", "aprun"] = Field("srun", description="mpi: launcher in $PARSL_MPI_PREFIX")
    provider: SlurmProviderConfig | None = Field(
        None, description="SLURM settings (htex_slurm: required; mpi: optional)"
    )

    @field_validator("available_accelerators", mode="before")
    @classmethod
    def _accelerators(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, list) and all(type(item) in (int, str) for item in value):
            return [str(item) for item in value]
        raise ValueError(f"expected a count ≥ 0 or a list of device ids, found {value!r}")

    @model_validator(mode="after")
    def _kind_fields(self) -> ExecutorConfig:
        if self.kind == "htex_slurm" and self.provider is None:
            raise FieldError("kind 'htex_slurm' needs a provider block (partition, walltime, ...)", "provider")
        if self.kind in ("threads", "htex_local") and self.provider is not None:
            raise FieldError(f"kind '{self.kind}' runs on this machine and takes no provider block", "provider")
        if self.kind == "threads" and self.n_accelerators:
            raise FieldError(
                "kind 'threads' cannot pin accelerators; use htex_local or htex_slurm", "available_accelerators"
            )
        if self.kind == "threads" and self.worker_init:
            raise FieldError("kind 'threads' starts no workers, so worker_init would never run", "worker_init")
        if self.provider is None:
            return self
        if self.worker_init:
            raise FieldError("with a provider block, put worker_init into the provider", "worker_init")
        if self.kind == "mpi" and self.launcher != "simple":
            raise FieldError("kind 'mpi' needs launcher 'simple' (Parsl's MPIExecutor)", "provider", "launcher")
        if self.kind == "htex_slurm" and self.provider.nodes_per_block > 1 and self.launcher != "srun":
            raise FieldError(
                f"nodes_per_block {self.provider.nodes_per_block} with launcher '{self.launcher}' starts workers on "
                "the first node only; use launcher 'srun'",
                "provider", "launcher",
            )  # fmt: skip
        gpus = self.provider.gpus_per_node
        if gpus and self.n_devices > gpus:
            raise FieldError(
                f"{self.n_devices} accelerators per node but the job requests gpus_per_node {gpus}",
                "available_accelerators",
            )
        return self

    @property
    def n_accelerators(self) -> int:
        """Workers pinned to accelerators: one per entry (a device id given twice: two workers share it)."""
        value = self.available_accelerators
        return len(value) if isinstance(value, list) else value

    @property
    def n_devices(self) -> int:
        """Distinct accelerators the workers are pinned to."""
        value = self.available_accelerators
        return len(set(value)) if isinstance(value, list) else value

    @property
    def launcher(self) -> str | None:
        """The provider's launcher with the kind's default filled in (None without a provider)."""
        if self.provider is None:
            return None
        return self.provider.launcher or ("simple" if self.kind == "mpi" else "single_node")

    def worker_cores(self, machine: int | None = None) -> int | None:
        """Cores of one worker's share as this site-config gives them (None: it does not say).

        ``machine`` is the number of cores of this machine (default: :func:`machine_cores`).

        - ``threads``: machine / ``max_workers`` (Parsl's default: 2 threads).
        - ``htex_local``, ``htex_slurm``: a node's cores (this machine's; on SLURM
          ``provider.cores_per_node``) over the workers Parsl starts per node, min(``max_workers``,
          cores / ``cores_per_worker``, accelerators); with ``cores_per_node`` unknown,
          ``cores_per_worker``.
        - ``mpi``: a node's cores for the ranks of one calculation there: ``provider.cores_per_node``
          (None without it), or machine / ``max_workers`` without a provider block.
        """
        machine = machine_cores() if machine is None else machine
        if self.kind == "threads":
            return machine // (self.max_workers or PARSL_DEFAULT_THREADS)
        if self.kind == "mpi":
            return machine // (self.max_workers or 1) if self.provider is None else self.provider.cores_per_node
        node = machine if self.provider is None else self.provider.cores_per_node
        if node is None:
            return int(self.cores_per_worker)
        limits = (math.floor(node / self.cores_per_worker), self.max_workers, self.n_accelerators or None)
        return node // max(1, min(limit for limit in limits if limit is not None))

    def task_threads(self, ranks_per_node: int = 1, machine: int | None = None) -> int:
        """OpenMP/torch threads of one task (per MPI rank): :meth:`worker_cores` / ``ranks_per_node``,
        at least 1 (1 where the cores are unknown: the ranks fill the node)."""
        cores = self.worker_cores(machine)
        return 1 if cores is None else max(1, cores // ranks_per_node)


class StageMap(InputModel):
    """Executor label per workflow stage; ``default`` covers stages not named."""

    default: str | None = Field(None, description="executor of every stage not named here")
    train: str | None = Field(None, description="training the committee (GPU)")
    calibrate: str | None = Field(None, description="calibration on the test set")
    evaluate: str | None = Field(None, description="held-out errors and production MD per member (GPU)")
    md: str | None = Field(None, description="committee MD (GPU)")
    sample: str | None = Field(None, description="picking frames")
    cago: str | None = Field(None, description="CAGO optimisation (GPU)")
    prefilter: str | None = Field(None, description="filters before the reference")
    reference: str | None = Field(None, description="reference calculations (CPU partition)")
    postfilter: str | None = Field(None, description="filters after the reference")
    merge: str | None = Field(None, description="appending to the dataset")


class EngineCommand(InputModel):
    """How this site starts an external program (the engine's input comes from cagoflow's template)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    command: str = Field(..., min_length=1, description="command line, e.g. 'srun -n 16 cp2k.psmp' or 'lmp'")
    ranks: int = Field(1, ge=1, description="MPI ranks")
    threads: int | None = Field(
        None, ge=1, description="OpenMP threads per rank (null: the cores of the executor's worker / ranks per node)"
    )
    setup: str = Field("", description="shell lines run first (module load ..., source ...)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables (win over derived ones)")

    @property
    def ranks_per_node(self) -> int:
        """MPI ranks of one run that share a node."""
        return self.ranks


class Cp2kCommand(EngineCommand):
    """How this site starts CP2K."""

    command: str = Field("cp2k.psmp", min_length=1, description="CP2K command line")
    omp_proc_bind: Literal["close", "spread", "master", "primary", "true", "false"] | None = Field(
        "close", description="OMP_PROC_BIND (null: leave unset)"
    )
    cpu_bind: str | None = Field("cores", description="srun --cpu-bind value (null: leave unset)")
    nodes: int = Field(1, ge=1, description="nodes per calculation (on an executor of kind 'mpi')")

    @model_validator(mode="after")
    def _ranks_fill_nodes(self) -> Cp2kCommand:
        if self.ranks % self.nodes:
            raise FieldError(f"ranks {self.ranks} do not divide evenly over nodes {self.nodes}", "ranks")
        return self

    @property
    def ranks_per_node(self) -> int:
        """MPI ranks of one calculation that share a node."""
        return self.ranks // self.nodes


_DEFAULT_COMMANDS = {"cp2k": "cp2k.psmp", "lammps": "lmp", "deepmd": "dp", "nequip": "nequip-train"}


class EnginesConfig(InputModel):
    """Commands of the external engines on this site (defaults: the programs on PATH)."""

    cp2k: Cp2kCommand = Field(Cp2kCommand(), description="CP2K (reference)")
    lammps: EngineCommand = Field(EngineCommand(command="lmp"), description="LAMMPS (MD)")
    deepmd: EngineCommand = Field(EngineCommand(command="dp"), description="DeePMD-kit trainer")
    nequip: EngineCommand = Field(EngineCommand(command="nequip-train"), description="NequIP/Allegro trainer")

    @model_validator(mode="before")
    @classmethod
    def _default_commands(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        filled = dict(data)
        for engine, command in _DEFAULT_COMMANDS.items():
            entry = filled.get(engine)
            if isinstance(entry, Mapping) and "command" not in entry:
                filled[engine] = {**entry, "command": command}
        return filled


class SiteConfig(InputModel):
    """Where a campaign runs: executors, the stage → executor map, engine commands."""

    name: Name = Field("site", description="site name")
    executors: dict[Name, ExecutorConfig] = Field(..., description="mapping executor label → executor")
    stages: StageMap = Field(StageMap(), description="executor per stage (omitted: all on the first executor)")
    engines: EnginesConfig = Field(EnginesConfig(), description="engine commands")
    retries: int = Field(0, ge=0, description="times Parsl retries a failed task")

    @field_validator("executors")
    @classmethod
    def _some_executors(cls, value: dict[str, ExecutorConfig]) -> dict[str, ExecutorConfig]:
        if not value:
            raise ValueError("a site must define at least one executor (found an empty mapping)")
        return value

    @model_validator(mode="after")
    def _stages_known(self) -> SiteConfig:
        labels = list(self.executors)
        for key in ("default", *STAGES):
            label = getattr(self.stages, key)
            if label is not None and label not in self.executors:
                suggestion = difflib.get_close_matches(label, labels, n=1)
                hint = f" (did you mean '{suggestion[0]}'?)" if suggestion else ""
                raise FieldError(
                    f"stage '{key}' is mapped to executor '{label}', which is not defined{hint}; "
                    f"defined executors: {', '.join(labels)}",
                    "stages", key,
                )  # fmt: skip
        named = self.stages.model_fields_set
        missing = [stage for stage in STAGES if getattr(self.stages, stage) is None]
        if named and self.stages.default is None and missing:
            raise FieldError(
                f"stages not mapped to an executor: {', '.join(missing)} (map them, or add 'default: LABEL')", "stages"
            )
        for stage in STAGES:
            label = self.executor_for(stage)
            if self.executors[label].kind == "mpi" and stage not in MPI_STAGES:
                raise FieldError(
                    f"stage '{stage}' runs Python on executor '{label}' of kind 'mpi', whose tasks are MPI programs; "
                    f"only {', '.join(MPI_STAGES)} may go there (map the others to a threads or htex executor)",
                    "stages", stage if getattr(self.stages, stage) is not None else "default",
                )  # fmt: skip
        if all(executor.kind == "mpi" for executor in self.executors.values()):
            raise FieldError("every executor is of kind 'mpi'; the Python stages need a threads or htex one", "executors")
        return self

    def executor_for(self, stage: str) -> str:
        """Label of the executor that runs ``stage``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")
        return getattr(self.stages, stage) or self.stages.default or next(iter(self.executors))

    @property
    def stage_executors(self) -> dict[str, str]:
        """Mapping stage → executor label, every stage resolved."""
        return {stage: self.executor_for(stage) for stage in STAGES}

    def python_executor_for(self, stage: str) -> str:
        """Label of the executor for the Python parts of ``stage`` (preparing inputs, parsing
        outputs, in-process engines): the stage's own executor, or — when that is of kind
        ``mpi``, which runs MPI programs only — the default executor (else the first non-mpi one)."""
        label = self.executor_for(stage)
        if self.executors[label].kind != "mpi":
            return label
        default = self.stages.default
        if default is not None and self.executors[default].kind != "mpi":
            return default
        return next(name for name, executor in self.executors.items() if executor.kind != "mpi")

    def is_mpi(self, stage: str) -> bool:
        """Whether ``stage``'s programs start through Parsl's MPIExecutor (``$PARSL_MPI_PREFIX``)."""
        return self.executors[self.executor_for(stage)].kind == "mpi"

    def program_threads(self, stage: str, engine: EngineCommand | None = None) -> int:
        """OpenMP threads per rank of an external program of ``stage``: the engine's ``threads``,
        else the cores of one worker of the stage's executor / the engine's ranks per node
        (:meth:`ExecutorConfig.task_threads`; a program that is no engine: one rank)."""
        if engine is not None and engine.threads is not None:
            return engine.threads
        ranks = 1 if engine is None else engine.ranks_per_node
        return self.executors[self.executor_for(stage)].task_threads(ranks)

    def python_threads(self, stage: str) -> int:
        """Threads of an in-process task of ``stage`` (CAGO, ASE MD, tblite, ...): the cores of
        one worker of the executor that runs its Python (:meth:`python_executor_for`)."""
        return self.executors[self.python_executor_for(stage)].task_threads()


def default_site() -> SiteConfig:
    """The site used when none is given: one thread pool of 2 workers for every stage
    (the same as ``site-configs/local-threads.yaml``)."""
    return SiteConfig(name="local-threads", executors={"local": ExecutorConfig(kind="threads", max_workers=2)})


# ---------------------------------------------------------------------------------------------
# Loading YAML with errors for people
# ---------------------------------------------------------------------------------------------


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no arbitrary objects) with three YAML 1.1 traps removed.

    - a key given twice in one mapping is an error (safe_load silently keeps the last);
    - ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3`` and reads ``1e-3`` as a string);
    - ``48:00:00`` stays a string and ``010`` is ten (YAML 1.1: base-60 172800 and octal 8).
    """


_INT = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


def _construct_int(loader: _ConfigLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    bases = {"0x": 16, "0o": 8, "0b": 2}
    base = bases.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _construct_unique_mapping(loader: _ConfigLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, typing.Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found the key '{key}' twice", key_node.start_mark
            )
        if isinstance(key, typing.Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
_ConfigLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))
_ConfigLoader.add_constructor(_INT_TAG, _construct_int)
_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_yaml_mapping(path: Path, what: str, required: str, field: str) -> tuple[dict[str, Any], str]:
    """Text and top-level mapping of a YAML file; every problem is an InputError naming the file."""
    if not path.exists():
        raise InputError(f"{what} file does not exist", file=path)
    if path.is_dir():
        raise InputError(f"expected a {what} YAML file, found a directory", file=path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is dropped
    except PermissionError:
        raise InputError(f"{what} file is not readable (permission denied)", file=path) from None
    except UnicodeDecodeError as exc:
        message = f"expected a text (UTF-8) YAML file, found binary data at byte {exc.start}"
        raise InputError(message, file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read the {what} file ({exc.strerror or exc})", file=path) from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a yaml.SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"malformed YAML{where}: {exc.problem or exc.context}", file=path) from None
    except yaml.YAMLError as exc:
        raise InputError(f"malformed YAML: {exc}", file=path) from None
    if data is None or data == {}:
        found = "the file is empty" if data is None else "the file holds an empty mapping"
        raise InputError(f"a {what} must {required}, but {found}", file=path, field=field)
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of {what} settings at the top level, found {_kind(data)}", file=path)
    return data, text


def _kind(value: Any) -> str:
    """Words for the type of a YAML value."""
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false", dict: "a mapping"}
    return names.get(type(value), type(value).__name__)


_ModelT = TypeVar("_ModelT", bound=BaseModel)


def _validate(model: type[_ModelT], data: dict[str, Any], *, file: Path, text: str, context: dict[str, Any]) -> _ModelT:
    """``model.model_validate(data)`` with a ValidationError turned into one InputError."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise _input_error(exc, model, file, text) from None


def _input_error(exc: ValidationError, root: type[BaseModel], file: Path, text: str) -> InputError:
    """One InputError for the first failing field of ``exc``; counts the other fields."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for error in exc.errors():
        extra = getattr((error.get("ctx") or {}).get("error"), "loc", ())
        loc, field = _clean_loc(root, (*error["loc"], *extra))
        groups.setdefault(loc, []).append({**error, "field_info": field})
    (loc, errors), *others = groups.items()
    message = _describe(loc, errors)
    if others:
        message += f" (and {len(others)} more error(s), the next at '{_dotted(others[0][0])}')"
    return _located(message, loc, file, text)


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _strip(annotation: Any) -> Any:
    """``annotation`` without Annotated[...] and without an Optional's None."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (Union, types.UnionType):
            arms = [arm for arm in typing.get_args(annotation) if arm is not type(None)]
            if len(arms) == 1:
                annotation = arms[0]
                continue
        return annotation


def _clean_loc(root: type[BaseModel], loc: Sequence[Any]) -> tuple[tuple[Any, ...], Any]:
    """pydantic's error location as a field path (union tags and '[key]' dropped), and the
    model class (for an unknown key) or (field name, FieldInfo) of the last field on the way."""
    kept: list[Any] = []
    current: Any = root
    last: Any = None
    for part in loc:
        if part == "[key]":
            continue
        current = _strip(current)
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            kept.append(part)
            info = current.model_fields.get(part) if isinstance(part, str) else None
            last = (part, info) if info is not None else current
            current = info.annotation if info is not None else None
        elif origin in (dict, Mapping):
            kept.append(part)
            current = typing.get_args(current)[1]
        elif origin in (tuple, list) and isinstance(part, int):
            kept.append(part)
            current = typing.get_args(current)[0]
        elif origin in (Union, types.UnionType):  # part is the tag of a union arm
            arms = typing.get_args(current)
            current = next((arm for arm in arms if getattr(arm, "__name__", str(arm)) == part or str(arm) == part), Any)
        elif current is None:
            kept.append(part)
        # anything else is a type tag below a plain value: dropped
    return tuple(kept), last


def _describe(loc: tuple[Any, ...], errors: list[dict[str, Any]]) -> str:
    """Words for the errors of one field: what was expected, what was found."""
    first = errors[0]
    info = first["field_info"]
    note = f" — {info[0]}: {info[1].description}" if isinstance(info, tuple) and info[1].description else ""
    if first["type"] == "missing":
        return f"missing required key '{loc[-1]}'{note}"
    if first["type"] == "extra_forbidden":
        allowed = list(info.model_fields) if isinstance(info, type) and issubclass(info, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{loc[-1]}'{hint}; allowed keys here: {', '.join(allowed)}"
    texts: list[str] = []
    for error in errors:
        cause = (error.get("ctx") or {}).get("error")
        text = str(cause) if isinstance(cause, ValueError) else _expected(error)
        if text not in texts:
            texts.append(text)
    return " or ".join(texts) + note


def _expected(error: dict[str, Any]) -> str:
    """pydantic's message rewritten as 'expected ..., found ...'."""
    if error["type"] == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == NAME_PATTERN:
        rule = "letters, digits, '_', '-' and '.', starting with a letter or digit"
        return f"expected a name of {rule}, found {error['input']!r}"
    message = re.sub(r"^Input should be (?=greater|less|a multiple)", "expected a value ", error["msg"])
    message = re.sub(r"a valid dictionary or instance of \w+", "a mapping", message)
    message = re.sub(r"^Input should (be|have) ", lambda m: "expected " + ("" if m[1] == "be" else "to have "), message)
    found = repr(error["input"])
    found = found if len(found) <= 60 else found[:57] + "..."
    return f"{message}, found {found}"


def _yaml_line(text: str, loc: Sequence[Any]) -> int | None:
    """1-based line of the deepest node of ``loc`` present in the YAML ``text``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((key, value) for key, value in node.value if key.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file.

    Structure paths are resolved relative to the file's folder and stored absolute; each
    structure file must hold atoms without overlaps (and reference labels where ``labelled``).
    Any problem raises one :class:`InputError` naming the file and the field path.
    """
    path = Path(path)
    data, text = _read_yaml_mapping(path, "campaign", "name its systems", "systems")
    context = {"base_dir": path.resolve().parent}
    config = _validate(CampaignConfig, data, file=path, text=text, context=context)
    _check_systems(config, path, text)
    return config


def _check_systems(config: CampaignConfig, file: Path, text: str) -> None:
    """Read every system's structures; refuse unreadable files, overlaps and missing cells."""
    from cagoflow.io import check_structures, read_structures

    npt = next((i for i, stage in enumerate(config.md.schedule) if stage.ensemble == "npt"), None)
    for name, system in config.systems.items():
        loc: tuple[Any, ...] = ("systems", name, "structures")
        try:
            structures = read_structures(system.structures, require_labels=system.labelled)
            check_structures(structures, file=system.structures)
        except InputError as exc:
            raise _located(f"structure file {system.structures}: {exc.detail}", loc, file, text) from None
        if all(atoms.pbc.all() for atoms in structures):
            continue
        if npt is not None:
            raise _located(
                f"system '{name}' is not periodic in all directions ({system.structures}), "
                "but the MD schedule runs NPT", ("md", "schedule", npt, "ensemble"), file, text,
            )  # fmt: skip
        if config.cago.optimize_cell:
            raise _located(
                f"system '{name}' is not periodic in all directions ({system.structures}), but cago.optimize_cell "
                "is true; set it to false for molecules and clusters", ("cago", "optimize_cell"), file, text,
            )  # fmt: skip


def _located(message: str, loc: tuple[Any, ...], file: Path, text: str) -> InputError:
    """InputError for ``loc``, the message led by the line number where the YAML has one."""
    line = _yaml_line(text, loc)
    return InputError((f"line {line}: " if line else "") + message, file=file, field=_dotted(loc) or None)


def load_site(path: str | Path) -> SiteConfig:
    """Read and validate a site YAML file; problems raise one :class:`InputError`."""
    path = Path(path)
    data, text = _read_yaml_mapping(path, "site", "define its executors", "executors")
    return _validate(SiteConfig, data, file=path, text=text, context={"base_dir": path.resolve().parent})


def load_settings(model: type[_ModelT], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> _ModelT:
    """A settings model from a YAML file of its fields (optional) with ``overrides`` on top —
    how the command line builds the same settings a campaign block holds (defaults written
    once, in the model). Problems raise one :class:`InputError` naming the file and field."""
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        path = Path(path)
        data, text = _read_yaml_mapping(path, "settings", "hold settings", model.__name__)
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    base = Path(path).resolve().parent if path is not None else Path.cwd()
    return _validate(model, data, file=path, text=text, context={"base_dir": base})
