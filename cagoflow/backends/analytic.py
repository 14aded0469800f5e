"""The analytic backend: Morse pair potentials fitted to labelled structures, in seconds.

It runs the same train → load path as DeePMD-kit and NequIP: :class:`AnalyticBackend` writes
``input.json`` into a work directory and names the trainer's command
(``python -m cagoflow.backends.analytic_train input.json``), which fits one member and writes
``model.json``; :meth:`AnalyticBackend.load` turns trained member files into one
:class:`~cagoflow.analytic.MorseCommittee`.

A trained member is a Morse model (:class:`cagoflow.analytic.MorseModel`) plus one reference
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
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols
from pydantic import Field, ValidationInfo, field_validator

from cagoflow.analytic import MorseCommittee, MorseModel
from cagoflow.backends import TrainingResult, TrainingSettings, tail
from cagoflow.committee import CommitteePrediction
from cagoflow.inputs import InputModel, resolve_file
from cagoflow.errors import InputError
from cagoflow.geometry import pair_name
from cagoflow.io import atomic_write_json, read_json

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


# --- the model file ------------------------------------------------------------------------


def species_symbols(species: Sequence[int]) -> list[str]:
    return [chemical_symbols[z] for z in species]


def model_data(model: ReferencedMorseModel, member: int = 0) -> dict[str, Any]:
    """The parameters of one member as the model file's mapping (without metrics)."""
    symbols = species_symbols(model.species)
    pairs = {}
    for ia, sa in enumerate(symbols):
        for ib in range(ia, len(symbols)):
            pairs[pair_name(sa, symbols[ib])] = {
                name: float(getattr(model, name)[member, ia, ib]) for name in ("D", "alpha", "r0")
            }
    return {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "species": symbols,
        "cutoff": float(model.cutoff),
        "switch_width": float(model.switch_width),
        "pairs": pairs,
        "reference_energies": {s: float(model.reference_energies[member, k]) for k, s in enumerate(symbols)},
    }


def write_model_file(
    path: str | Path, model: ReferencedMorseModel, metrics: Mapping[str, float], training: Mapping[str, Any]
) -> Path:
    """Write one member (member 0 of ``model``), its final errors and training notes, atomically."""
    data = model_data(model)
    data["metrics"] = {name: float(value) for name, value in metrics.items()}
    data["training"] = dict(training)
    return atomic_write_json(path, data)


def _finite_number(value: Any, what: str, path: Path, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, found {value!r}", file=path)
    if positive and value <= 0:
        raise InputError(f"{what} must be positive, found {value!r}", file=path)
    return float(value)


def read_model_file(path: str | Path) -> tuple[ReferencedMorseModel, dict[str, float]]:
    """One trained member (a model of M = 1) and its metrics; a bad file raises InputError naming it."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise InputError(f"not an analytic Morse model file (expected \"format\": \"{MODEL_FORMAT}\")", file=path)
    if data.get("version") != MODEL_VERSION:
        raise InputError(f"model file version {data.get('version')!r}; this cagoflow reads {MODEL_VERSION}", file=path)
    symbols = data.get("species")
    if (
        not isinstance(symbols, list)
        or not symbols
        or any(s not in atomic_numbers for s in symbols)
        or len(set(symbols)) != len(symbols)
    ):
        raise InputError(f"'species' must be a list of distinct chemical symbols, found {symbols!r}", file=path)
    symbols = sorted(symbols, key=lambda s: atomic_numbers[s])
    cutoff = _finite_number(data.get("cutoff"), "'cutoff'", path, positive=True)
    switch_width = _finite_number(data.get("switch_width"), "'switch_width'", path, positive=True)
    if switch_width > cutoff:
        raise InputError(f"'switch_width' ({switch_width}) exceeds 'cutoff' ({cutoff})", file=path)
    n = len(symbols)
    arrays = {name: np.zeros((1, n, n)) for name in ("D", "alpha", "r0")}
    pairs = data.get("pairs")
    if not isinstance(pairs, dict):
        raise InputError("'pairs' must be a mapping like {\"H-O\": {\"D\": .., \"alpha\": .., \"r0\": ..}}", file=path)
    for ia, sa in enumerate(symbols):
        for ib in range(ia, n):
            name = pair_name(sa, symbols[ib])
            pair = pairs.get(name)
            if not isinstance(pair, dict):
                raise InputError(f"'pairs' has no parameters for the pair {name}", file=path)
            for parameter in ("D", "alpha", "r0"):
                value = _finite_number(pair.get(parameter), f"pairs.{name}.{parameter}", path, positive=True)
                arrays[parameter][0, ia, ib] = arrays[parameter][0, ib, ia] = value
    references = data.get("reference_energies", {})
    if not isinstance(references, dict) or set(references) - set(symbols):
        raise InputError(f"'reference_energies' must map the species {symbols} to eV, found {references!r}", file=path)
    reference_energies = np.array(
        [[_finite_number(references.get(s, 0.0), f"reference_energies.{s}", path) for s in symbols]]
    )
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise InputError("'metrics' must be a mapping of names to numbers", file=path)
    model = ReferencedMorseModel(
        species=tuple(atomic_numbers[s] for s in symbols),
        D=arrays["D"],
        alpha=arrays["alpha"],
        r0=arrays["r0"],
        cutoff=cutoff,
        switch_width=switch_width,
        reference_energies=reference_energies,
    )
    return model, {str(k): v for k, v in metrics.items()}


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

    ``settings.hyperparameters`` may set ``cutoff`` (Å), ``switch_width`` (Å), ``energy_weight``,
    ``force_weight``, ``perturbation``, ``log_every``, ``tolerance`` (see
    :mod:`cagoflow.backends.analytic_train`); the preset is recorded but changes nothing.
    ``python`` is the interpreter that runs the trainer (the site-config may replace it).
    """

    name = "analytic"

    def __init__(self, python: str = sys.executable):
        self.python = python

    def write_training_input(
        self, train_file: Path, validation_file: Path, workdir: Path, settings: TrainingSettings
    ) -> list[list[str]]:
        """Write ``workdir/input.json``; unknown or invalid hyperparameters raise InputError."""
        from cagoflow.backends.analytic_train import check_hyperparameters

        try:
            hyperparameters = check_hyperparameters(settings.hyperparameters)
        except ValueError as exc:
            raise InputError(f"analytic backend: {exc}", field="hyperparameters") from None
        workdir = Path(workdir)
        data = {
            "train_file": str(Path(train_file).resolve()),
            "validation_file": str(Path(validation_file).resolve()),
            "type_map": list(settings.type_map),
            "seed": settings.seed,
            "steps": settings.steps,
            "preset": settings.preset,
            "hyperparameters": hyperparameters,
            "init_model": None if settings.init_model is None else str(Path(settings.init_model).resolve()),
            "model_file": MODEL_FILE,
            "log_file": LOG_FILE,
        }
        atomic_write_json(workdir / INPUT_FILE, data)
        return [[self.python, "-m", "cagoflow.backends.analytic_train", INPUT_FILE]]

    def read_training_result(self, workdir: Path) -> TrainingResult:
        """``model.json`` and its metrics; missing, malformed or non-finite: failed, with the log's tail."""
        workdir = Path(workdir)
        path = workdir / MODEL_FILE

        def failed(reason: str) -> TrainingResult:
            logs = [tail(log) for log in (workdir / LOG_FILE, *sorted(workdir.glob("step-*.log")))]
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

    def load(self, models: Sequence[Path], device: str | None = None) -> ReferencedMorseCommittee:
        """A committee of the given ``model.json`` files (evaluated on the CPU; ``device`` is ignored)."""
        files = [Path(m) for m in models]
        if not files:
            raise InputError("a committee needs at least one model file")
        return ReferencedMorseCommittee(combine_members([read_model_file(f)[0] for f in files], files))


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- committee file ------------------------------------------------------------------------


class AnalyticModelsSpec(InputModel):
    """A committee of trained analytic members (``model.json`` files of :class:`AnalyticBackend`)."""

    backend: Literal["analytic-trained"] = "analytic-trained"
    models: tuple[Path, ...] = Field(
        ..., min_length=2, description="member model files (model.json), relative to the committee file"
    )

    @field_validator("models")
    @classmethod
    def _model_files(cls, value: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
        return tuple(resolve_file(path, info, "model file") for path in value)

    def build(self) -> ReferencedMorseCommittee:
        return AnalyticBackend().load(self.models)
