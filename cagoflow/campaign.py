"""The campaign schema: what a campaign computes, validated on load.

A *campaign* file says what to compute: systems, committee, MD, sampling, CAGO, filters,
reference, dataset split, evaluation and when to stop. Each science module owns its settings
(:class:`~cagoflow.cago.CagoSettings`, :class:`~cagoflow.filters.FilterSettings`,
:class:`~cagoflow.engines.md_settings.MDStage`, ...); this schema composes them. Where it runs
is the site's business (:mod:`cagoflow.executors.site`).

Iterations count from 0. Where a setting may change during a campaign it is a *schedule*: a
list of entries with strictly increasing ``from_iteration`` starting at 0; the entry in force
at iteration ``i`` is the last one with ``from_iteration <= i`` (:func:`schedule_at`). A plain
value or a single mapping means "the same for all iterations".

Units: eV, Å, eV/Å, fs, K, bar.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from cagoflow.backends import BackendName
from cagoflow.cago import CagoSettings
from cagoflow.convergence import StopSettings
from cagoflow.engines import REFERENCE_ENGINES, REFERENCE_PROGRAMS
from cagoflow.engines.md_settings import MDStage, StabilityChecks
from cagoflow.errors import InputError
from cagoflow.evaluation import EvaluationSettings
from cagoflow.filters import FilterSettings
from cagoflow.sampling import UncertaintyReduction
from cagoflow.inputs import (
    IMPORT_PATH, FieldError, InputModel, Name, ScheduleEntry, check_schedule, located_error, read_yaml_mapping,
    resolve_file, schedule_at, schedule_input, validate_input,
)  # fmt: skip

__all__ = [
    "CagoConfig", "CagoSource", "CalibrationConfig", "CampaignConfig", "CommitteeConfig", "DatasetConfig", "MDConfig",
    "ReferenceConfig", "SamplingConfig", "SystemConfig", "TrainingStage", "load_campaign",
]  # fmt: skip


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

    backend: BackendName = Field(
        "deepmd", description="MLIP backend ('analytic': trainable Morse pairs, a cheap stand-in for tests and demos)"
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


class MDConfig(StabilityChecks):
    """Committee-driven MD that explores configurations to sample from; a trajectory stops at the
    first failed stability check (:class:`~cagoflow.engines.md_settings.StabilityChecks`)."""

    engine: Literal["ase", "lammps"] = Field("ase", description="MD engine")
    schedule: MDSchedule = Field((MDStage(),), description="MD settings per iteration")
    replicas: int = Field(1, ge=1, description="independent trajectories per system and iteration")


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
    uncertainty: UncertaintyReduction = Field(
        "max_atom", description="max_uncertainty ranks frames by the largest atom's σ̂_F (the paper) or the RMS over atoms"
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


#: The system a program engine's settings are checked for (only its charge and multiplicity are read).
_NEUTRAL = SimpleNamespace(charge=0, multiplicity=1)


class ReferenceConfig(InputModel):
    """The reference method that labels new structures (energies eV, forces eV/Å, stress)."""

    engine: Literal[REFERENCE_ENGINES] = Field("tblite", description="reference engine")  # type: ignore[valid-type]
    method: str | None = Field(
        None, description=f"tblite: one of {', '.join(TBLITE_METHODS)} (default GFN1-xTB); a program's: a label for records"
    )
    calculator: str | None = Field(None, description="engine 'ase': import path 'module:Class' of an ASE calculator")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the engine or calculator (espresso: EspressoSettings)"
    )
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
        templated = [name for name, program in REFERENCE_PROGRAMS.items() if program.templates]
        if self.template is not None and self.engine not in templated:
            raise FieldError(f"template applies to engine {', '.join(templated)} only, found engine '{self.engine}'", "template")
        if self.engine in REFERENCE_PROGRAMS:
            self._check_program_settings()
        return self

    def _check_program_settings(self) -> None:
        """A program engine's settings, checked now rather than at its first calculation."""
        from pydantic import ValidationError

        try:
            REFERENCE_PROGRAMS[self.engine].build(self, _NEUTRAL)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise FieldError(f"{error['msg']} (engine '{self.engine}')", "settings", *error["loc"]) from None
        except (TypeError, ValueError) as exc:
            raise FieldError(f"{exc} (engine '{self.engine}')", "settings") from None

    @property
    def method_name(self) -> str | None:
        """The method with the engine's default filled in (tblite: GFN1-xTB)."""
        return self.method or ("GFN1-xTB" if self.engine == "tblite" else None)


class DatasetConfig(InputModel):
    """Split of the dataset (see :func:`cagoflow.dataset.make_splits_for_hashes`).

    A test set of ``test_fraction`` of all structures and ``cago_to_test`` of every
    iteration's labelled CAGO structures, at least ``min_test`` in all, the routed CAGO
    structures included (the test set is also the calibration's data, judged out of sample by
    cross-validation over structures: early iterations need more than 10 % of a dozen
    structures; counting only the others was measured on the main job and rejected, see the
    README); per member a
    bootstrap training sample and a validation set, as fractions of the structures outside the
    test set (the paper: 10 % test, then 80 %/10 % train/validation of the rest).
    """

    test_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of all structures held out (test, calibration)")
    train_fraction: float = Field(0.8, gt=0, le=1, description="per member: training sample, fraction of the rest")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="per member: validation set, fraction of the rest")
    min_test: int = Field(
        8, ge=1,
        description="test structures at least, the routed CAGO structures included (the calibration's data, judged out "
        "of sample; at most half of the dataset)",
    )
    cago_to_test: float = Field(
        0.25, ge=0, lt=1,
        description="share of each iteration's labelled CAGO structures (at least one, spread over walk lengths) that "
        "joins the test set, so the next calibration covers where CAGO goes; never trained on",
    )  # fmt: skip

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
        if generate is not None and generate.calculator is None and self.reference.engine in REFERENCE_PROGRAMS:
            program = REFERENCE_PROGRAMS[self.reference.engine].program
            raise FieldError(
                f"the benchmark MD runs in-process and {program} does not: name an ASE calculator for it "
                f"(e.g. 'tblite.ase:TBLite'); its frames are then labelled with {program}",
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


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file.

    Structure paths are resolved relative to the file's folder and stored absolute; each
    structure file must hold atoms without overlaps (and reference labels where ``labelled``).
    Any problem raises one :class:`InputError` naming the file and the field path.
    """
    path = Path(path)
    data, text = read_yaml_mapping(path, "campaign", "name its systems", "systems")
    context = {"base_dir": path.resolve().parent}
    config = validate_input(CampaignConfig, data, file=path, text=text, context=context)
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
            raise located_error(f"structure file {system.structures}: {exc.detail}", loc, file, text) from None
        if all(atoms.pbc.all() for atoms in structures):
            continue
        if npt is not None:
            raise located_error(
                f"system '{name}' is not periodic in all directions ({system.structures}), "
                "but the MD schedule runs NPT", ("md", "schedule", npt, "ensemble"), file, text,
            )  # fmt: skip
        if config.cago.optimize_cell:
            raise located_error(
                f"system '{name}' is not periodic in all directions ({system.structures}), but cago.optimize_cell "
                "is true; set it to false for molecules and clusters", ("cago", "optimize_cell"), file, text,
            )  # fmt: skip
