"""The analytic backend: Morse pair potentials fitted to labelled structures, in seconds.

It runs the same train → load path as DeePMD-kit and NequIP: :class:`AnalyticBackend` writes
``input.json`` into a work directory and names the trainer's command
(``python -m cagoflow.backends.analytic_train input.json``), which fits one member and writes
``model.json``; :meth:`AnalyticBackend.load` turns trained member files into one
:class:`~cagoflow.morse_committee.MorseCommittee`.

A trained member is a Morse model (:class:`cagoflow.morse_committee.MorseModel`) plus one reference
energy per species, so that total energies of any reference method can be fitted::

    E = Σ_i e_ref[Z_i] + Σ_{i<j} D_ij [e^{−2α_ij (r−r0_ij)} − 2 e^{−α_ij (r−r0_ij)}] · f_c(r)

The model file (JSON, eV, 1/Å, Å)::

    {"format": "cagoflow-analytic-morse", "version": 1,
     "species": ["H", "O"], "cutoff": 5.0, "switch_width": 1.0,
     "pairs": {"H-H": {"D": .., "alpha": .., "r0": ..}, "H-O": {..}, "O-O": {..}},
     "reference_energies": {"H": .., "O": ..},
     "metrics": {"train_energy_per_atom": .., "train_forces": ..,
                 "validation_energy_per_atom": .., "validation_forces": ..},
     "training": {"seed": .., "steps": .., "iterations": .., "converged": .., "init_model": ..}}

Metrics are root-mean-square errors: energy per atom in eV/atom, force components in eV/Å.

Both files the backend shares with its trainer are described here, once, as pydantic models:
``input.json`` (:class:`TrainingInput`, with :class:`AnalyticHyperparameters`) and ``model.json``
(:class:`ModelFile`); the trainer imports them from here. A committee file of trained members::

    backend: analytic
    models: [member-00/model.json, member-01/model.json]
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, TypeVar

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from pydantic import AfterValidator, Field, StrictFloat, StrictInt, ValidationInfo, field_validator, model_validator

from cagoflow.morse_committee import MorseCommittee, MorseModel
from cagoflow.backends import TrainingResult, TrainingSettings
from cagoflow.committee import CommitteePrediction
from cagoflow.errors import InputError
from cagoflow.inputs import Count, FieldError, Finite, InputModel, NonNegative, Positive, validate_input
from cagoflow.geometry import pair_name
from cagoflow.io import atomic_write_json, log_tail, read_json

#: Value of the model file's ``format`` key, and the version this module reads and writes.
MODEL_FORMAT = "cagoflow-analytic-morse"
MODEL_VERSION = 1
#: File names inside a training work directory.
INPUT_FILE = "input.json"
MODEL_FILE = "model.json"
LOG_FILE = "train.log"
#: Metric names of a trained member (eV/atom for energies, eV/Å for forces).
METRICS = ("train_energy_per_atom", "train_forces", "validation_energy_per_atom", "validation_forces")


# --- the model: Morse pairs plus per-species reference energies --------------------------------


@dataclass(frozen=True)
class ReferencedMorseModel(MorseModel):
    """A :class:`MorseModel` plus per-species reference energies.

    ``reference_energies`` has shape (M, Z), eV per atom of each of the ``species``; ``None``
    means zeros (the plain Morse model).
    """

    reference_energies: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.reference_energies is None:
            object.__setattr__(self, "reference_energies", np.zeros((self.n_members, len(self.species))))

    def members(self, indices: Sequence[int]) -> "ReferencedMorseModel":
        idx = np.asarray(indices, dtype=int)
        return replace(
            self, D=self.D[idx], alpha=self.alpha[idx], r0=self.r0[idx], reference_energies=self.reference_energies[idx]
        )

    def composition(self, structures: Sequence[Atoms]) -> np.ndarray:
        """(S, Z) number of atoms of each species in each structure (unknown species: ValueError)."""
        return np.stack([np.bincount(self.type_indices(a.numbers), minlength=len(self.species)) for a in structures])

    def reference_energy(self, structures: Sequence[Atoms]) -> np.ndarray:
        """(M, S) sum of the atoms' reference energies, eV."""
        return self.reference_energies @ self.composition(structures).T.astype(float)


class ReferencedMorseCommittee(MorseCommittee):
    """A :class:`MorseCommittee` whose energies include the per-species reference energies.

    Forces and virials are those of the Morse pairs (the reference energies are constants).
    """

    model: ReferencedMorseModel

    def subset(self, members: Sequence[int]) -> "ReferencedMorseCommittee":
        return ReferencedMorseCommittee(self.model.members(members))

    def predict(self, structures: Sequence[Atoms]) -> CommitteePrediction:
        structures = list(structures)
        pairs = super().predict(structures)
        energies = pairs.energies + self.model.reference_energy(structures)
        return CommitteePrediction(energies, pairs.forces, pairs.natoms, pairs.virials)

    def torch_energy(self, structures: Sequence[Atoms]):
        import torch

        pair_energy = super().torch_energy(structures)
        offset = torch.as_tensor(self.model.reference_energy(list(structures)), dtype=torch.float64)

        def energy(positions, cells):
            return pair_energy(positions, cells) + offset

        return energy


# --- the files: hyperparameters, the trainer's input, the model -------------------------------



def _distinct_symbols(symbols: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in symbols if s not in atomic_numbers or s == "X"]
    if unknown:
        raise ValueError(f"not chemical symbols: {unknown}")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"expected distinct chemical symbols, found {list(symbols)}")
    return symbols


#: Distinct chemical symbols, at least one.
Symbols = Annotated[tuple[str, ...], Field(min_length=1), AfterValidator(_distinct_symbols)]


class AnalyticHyperparameters(InputModel):
    """The hyperparameters of the analytic trainer (:mod:`cagoflow.backends.analytic_train`);
    a campaign's ``committee.hyperparameters`` may set any of them."""

    cutoff: Positive = Field(5.0, description="pair cutoff, Å")
    switch_width: Positive = Field(1.0, description="width of the smooth switch-off below the cutoff, Å")
    energy_weight: NonNegative = Field(1.0, description="w_E of the energy-per-atom term of the loss, per (eV/atom)²")
    force_weight: NonNegative = Field(1.0, description="w_F of the force term of the loss, per (eV/Å)²")
    perturbation: NonNegative = Field(0.1, description="relative (log-normal) spread of a fresh member's start")
    log_every: StrictInt = Field(10, ge=1, description="iterations between log lines")
    tolerance: Positive = Field(
        1e-10, description="L-BFGS's tolerance_change: an iteration that changes the loss or θ by less ends the fit"
    )

    @model_validator(mode="after")
    def _consistent(self) -> AnalyticHyperparameters:
        if self.switch_width > self.cutoff:
            raise FieldError(f"switch_width ({self.switch_width}) exceeds cutoff ({self.cutoff})", "switch_width")
        if self.energy_weight == 0 and self.force_weight == 0:
            raise FieldError("energy_weight and force_weight are both zero: nothing to fit", "force_weight")
        return self


class TrainingInput(InputModel):
    """``input.json``: what the trainer fits, written by :meth:`AnalyticBackend.write_training_input`.

    Relative paths start at the file's folder; read (with ``base_dir`` in the context) they are
    joined to it. ``hyperparameters.model_fields_set`` tells which were given.
    """

    train_file: Path = Field(..., description="labelled training structures (extxyz; energy eV, forces eV/Å)")
    validation_file: Path = Field(..., description="labelled validation structures")
    type_map: Symbols = Field(..., description="the species the model knows (every species of the data must be in it)")
    seed: StrictInt = Field(..., description="the member's seed (perturbs the starting parameters)")
    steps: Count = Field(..., description="the most L-BFGS iterations (0: the starting model)")
    preset: Literal["tiny", "paper"] = Field("tiny", description="recorded; changes nothing")
    hyperparameters: AnalyticHyperparameters = Field(default_factory=AnalyticHyperparameters)
    init_model: Path | None = Field(None, description="a previous model.json to start from (fine-tuning)")
    model_file: Path = Field(Path(MODEL_FILE), validate_default=True, description="the trained member's file")
    log_file: Path = Field(Path(LOG_FILE), validate_default=True, description="the trainer's log")

    @field_validator("train_file", "validation_file", "init_model", "model_file", "log_file")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        return value if value is None or base is None else Path(base) / value


def _species_pairs(symbols: Sequence[str]) -> list[tuple[int, int, str]]:
    """(i, j, "A-B") of every species pair i ≤ j of ``symbols`` (ordered by atomic number)."""
    return [(i, j, pair_name(a, symbols[j])) for i, a in enumerate(symbols) for j in range(i, len(symbols))]


class PairParameters(InputModel):
    """One species pair's Morse parameters in the model file."""

    D: Positive = Field(..., description="well depth, eV")
    alpha: Positive = Field(..., description="width, 1/Å")
    r0: Positive = Field(..., description="equilibrium distance, Å")


class ModelFile(InputModel):
    """``model.json``: one trained member (see the module's docstring)."""

    format: Literal[MODEL_FORMAT] = Field(..., description=f"'{MODEL_FORMAT}' for an analytic Morse model file")
    version: Literal[MODEL_VERSION] = Field(..., description=f"the format's version (this cagoflow reads {MODEL_VERSION})")
    species: Symbols = Field(..., description="the species the model knows")
    cutoff: Positive = Field(..., description="pair cutoff, Å")
    switch_width: Positive = Field(..., description="width of the switch-off below the cutoff, Å")
    pairs: dict[str, PairParameters] = Field(..., description='parameters by species pair, e.g. "H-O"')
    reference_energies: dict[str, Finite] = Field(default_factory=dict, description="eV per atom (missing: 0)")
    metrics: dict[str, StrictFloat] = Field(default_factory=dict, description="final RMSEs")
    training: dict[str, Any] = Field(default_factory=dict, description="how the member was trained (notes)")

    @model_validator(mode="after")
    def _consistent(self) -> ModelFile:
        if self.switch_width > self.cutoff:
            raise FieldError(f"switch_width ({self.switch_width}) exceeds cutoff ({self.cutoff})", "switch_width")
        missing = [pair for _, _, pair in _species_pairs(self._symbols()) if pair not in self.pairs]
        if missing:
            raise FieldError(f"no parameters for the pairs {missing}", "pairs")
        unknown = sorted(set(self.reference_energies) - set(self.species))
        if unknown:
            raise FieldError(f"species {unknown} are not among the species {list(self.species)}", "reference_energies")
        return self

    def _symbols(self) -> list[str]:
        return sorted(self.species, key=lambda s: atomic_numbers[s])

    @classmethod
    def of(cls, model: ReferencedMorseModel, metrics: Mapping[str, float], training: Mapping[str, Any]) -> ModelFile:
        """Member 0 of ``model`` (parameters as Python floats), with its metrics and training notes."""
        symbols = species_symbols(model.species)
        pairs = {
            pair: {name: float(getattr(model, name)[0, i, j]) for name in PairParameters.model_fields}
            for i, j, pair in _species_pairs(symbols)
        }
        return cls(
            format=MODEL_FORMAT,
            version=MODEL_VERSION,
            species=tuple(symbols),
            cutoff=float(model.cutoff),
            switch_width=float(model.switch_width),
            pairs=pairs,
            reference_energies={s: float(model.reference_energies[0, k]) for k, s in enumerate(symbols)},
            metrics={name: float(value) for name, value in metrics.items()},
            training=dict(training),
        )

    def model(self) -> ReferencedMorseModel:
        """The member as a model of M = 1, species in order of atomic number."""
        symbols = self._symbols()
        n = len(symbols)
        arrays = {name: np.zeros((1, n, n)) for name in PairParameters.model_fields}
        for i, j, pair in _species_pairs(symbols):
            for name in arrays:
                arrays[name][0, i, j] = arrays[name][0, j, i] = getattr(self.pairs[pair], name)
        return ReferencedMorseModel(
            species=tuple(atomic_numbers[s] for s in symbols),
            cutoff=self.cutoff,
            switch_width=self.switch_width,
            reference_energies=np.array([[self.reference_energies.get(s, 0.0) for s in symbols]]),
            **arrays,
        )


_FileT = TypeVar("_FileT", bound=InputModel)


def read_json_file(schema: type[_FileT], path: str | Path) -> _FileT:
    """A JSON file validated as ``schema`` (relative paths start at its folder); any problem is one
    InputError naming the file and field."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, found {type(data).__name__}", file=path)
    return validate_input(schema, data, file=path, text="", context={"base_dir": path.resolve().parent})


def species_symbols(species: Sequence[int]) -> list[str]:
    return [chemical_symbols[z] for z in species]


def write_model_file(
    path: str | Path, model: ReferencedMorseModel, metrics: Mapping[str, float], training: Mapping[str, Any]
) -> Path:
    """Write one member (member 0 of ``model``), its final errors and training notes, atomically."""
    return atomic_write_json(path, ModelFile.of(model, metrics, training).model_dump())


def read_model_file(path: str | Path) -> tuple[ReferencedMorseModel, dict[str, float]]:
    """One trained member (a model of M = 1) and its metrics; a bad file raises InputError naming it."""
    content = read_json_file(ModelFile, path)
    return content.model(), dict(content.metrics)


def combine_members(models: Sequence[ReferencedMorseModel], files: Sequence[Path]) -> ReferencedMorseModel:
    """One model of all members; they must share species, cutoff and switch width (else InputError)."""
    first = models[0]
    for model, path in zip(models[1:], files[1:]):
        for what in ("species", "cutoff", "switch_width"):
            if getattr(model, what) != getattr(first, what):
                mine = getattr(model, what)
                theirs = getattr(first, what)
                if what == "species":
                    mine, theirs = species_symbols(mine), species_symbols(theirs)
                raise InputError(
                    f"committee members must share {what}: this model has {mine}, {files[0]} has {theirs}",
                    file=path,
                )
    return replace(
        first,
        D=np.concatenate([m.D for m in models]),
        alpha=np.concatenate([m.alpha for m in models]),
        r0=np.concatenate([m.r0 for m in models]),
        reference_energies=np.concatenate([m.reference_energies for m in models]),
    )


# --- the backend ---------------------------------------------------------------------------


class AnalyticBackend:
    """The Morse trainer as a :class:`cagoflow.backends.Backend` (no external program needed).

    ``settings.hyperparameters`` may set any of :class:`AnalyticHyperparameters`; the preset is
    recorded but changes nothing.
    ``python`` is the interpreter that runs the trainer (the site-config may replace it).
    """

    name = "analytic"

    def __init__(self, python: str = sys.executable):
        self.python = python

    def write_training_input(
        self, train_file: Path, validation_file: Path, workdir: Path, settings: TrainingSettings
    ) -> list[list[str]]:
        """Write ``workdir/input.json``; unknown or invalid hyperparameters raise InputError."""
        data = {
            "train_file": Path(train_file).resolve(),
            "validation_file": Path(validation_file).resolve(),
            "type_map": settings.type_map,
            "seed": settings.seed,
            "steps": settings.steps,
            "preset": settings.preset,
            "hyperparameters": dict(settings.hyperparameters),
            "init_model": None if settings.init_model is None else Path(settings.init_model).resolve(),
            "model_file": Path(MODEL_FILE),
            "log_file": Path(LOG_FILE),
        }
        inputs = validate_input(TrainingInput, data, file=None, text="", context={})
        atomic_write_json(Path(workdir) / INPUT_FILE, inputs.model_dump(mode="json", exclude_unset=True))
        return [[self.python, "-m", "cagoflow.backends.analytic_train", INPUT_FILE]]

    def read_training_result(self, workdir: Path) -> TrainingResult:
        """``model.json`` and its metrics; missing, malformed or non-finite: failed, with the log's tail."""
        workdir = Path(workdir)
        path = workdir / MODEL_FILE

        def failed(reason: str) -> TrainingResult:
            logs = [log_tail(log) for log in (workdir / LOG_FILE, *sorted(workdir.glob("step-*.log")))]
            text = "\n".join(log for log in logs if log)
            return TrainingResult("failed", None, message=f"{reason}\n{text}".rstrip())

        if not path.exists():
            return failed(f"the analytic trainer wrote no model file {path}")
        try:
            _, metrics = read_model_file(path)
        except InputError as exc:
            return failed(str(exc))
        numbers = {name: metrics.get(name) for name in METRICS}
        bad = {name: value for name, value in numbers.items() if not _is_finite(value)}
        if bad:
            return failed(f"{path}: missing or non-finite errors {bad}")
        return TrainingResult("success", path, metrics={name: float(value) for name, value in numbers.items()})

    def resume_step(self, workdir: Path) -> int | None:
        """The Morse fit keeps no checkpoint: it always starts from scratch."""
        return None

    def model_files(self, model: Path) -> list[Path]:
        """A ``model.json`` is one file."""
        return [Path(model)]

    def load(self, models: Sequence[Path], device: str | None = None) -> ReferencedMorseCommittee:
        """A committee of the given ``model.json`` files (evaluated on the CPU; ``device`` is ignored)."""
        files = [Path(m) for m in models]
        if not files:
            raise InputError("a committee needs at least one model file")
        return ReferencedMorseCommittee(combine_members([read_model_file(f)[0] for f in files], files))


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
