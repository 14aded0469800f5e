"""Committee files: which backend and which model files (or test parameters) make a committee.

A committee file is a small YAML file. Trained members, of any backend of
:data:`cagoflow.backends.BACKENDS` (the names a campaign's ``committee.backend`` takes)::

    backend: deepmd     # analytic, deepmd, nequip or allegro
    models: [member-00/frozen_model.pth, member-01/frozen_model.pth]   # relative to this file
    device: auto        # auto (CUDA when available), cpu or cuda

The untrained Morse test committee (:mod:`cagoflow.morse_committee`), the synthetic model of demos
and tests::

    backend: morse
    members: 4          # committee size M
    species: [O, H]
    spread: 0.05        # relative member-to-member spread of the Morse parameters
    seed: 1

:func:`load_committee` reads one and returns an object of the
:class:`cagoflow.committee.Committee` protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from cagoflow.backends import BACKENDS, BackendName, check_backend_name, get_backend
from cagoflow.committee import Committee
from cagoflow.inputs import InputModel, located_error, read_yaml_mapping, resolve_file, validate_input

#: The ``backend`` of the untrained Morse test committee (a committee-file name only: it trains nothing).
MORSE = "morse"


class MorseCommitteeSpec(InputModel):
    """Morse pair potentials with member-wise perturbed parameters (:mod:`cagoflow.morse_committee`)."""

    backend: Literal["morse"] = MORSE
    members: int = Field(4, ge=2, description="committee size M")
    species: tuple[str, ...] = Field(("O", "H"), min_length=1, description="chemical symbols the model knows")
    spread: float = Field(0.05, gt=0, lt=1, description="relative spread of the Morse parameters across members")
    seed: int = Field(0, description="seed of the member perturbations")
    cutoff: float = Field(5.0, gt=1, description="pair cutoff, Å")

    def build(self) -> Committee:
        from cagoflow.morse_committee import MorseCommittee, MorseModel

        model = MorseModel.for_symbols(
            list(self.species), n_members=self.members, spread=self.spread, seed=self.seed, cutoff=self.cutoff
        )
        return MorseCommittee(model)

    def truth(self):
        """The unperturbed model as an ASE calculator: the synthetic reference of demos and tests."""
        from cagoflow.morse_committee import MorseCalculator, MorseModel

        return MorseCalculator(MorseModel.for_symbols(list(self.species), cutoff=self.cutoff))


class TrainedCommitteeSpec(InputModel):
    """Trained member files of one backend; the backend's ``load`` checks that they are its models."""

    backend: BackendName = Field(..., description="the backend that trained the members")
    models: tuple[Path, ...] = Field(
        ..., min_length=2, description="member model files, relative to the committee file; stored absolute"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to evaluate ('auto': CUDA if available)")

    @field_validator("models")
    @classmethod
    def _model_files(cls, value: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
        return tuple(resolve_file(path, info, "model file") for path in value)

    def build(self) -> Committee:
        return get_backend(self.backend).load(self.models, device=None if self.device == "auto" else self.device)


#: What a committee file holds.
CommitteeSpec = MorseCommitteeSpec | TrainedCommitteeSpec
#: Every ``backend`` a committee file may name.
COMMITTEE_BACKENDS = (*BACKENDS, MORSE)


def _backend_of(data: dict[str, Any]) -> str:
    """The committee file's backend; ValueError for an unknown name, or one of earlier versions
    with the name to write now."""
    backend = data.get("backend")
    if backend == "analytic-trained":
        raise ValueError("'analytic-trained' was renamed: write 'backend: analytic' (trained analytic members)")
    if backend == "analytic" and "models" not in data:
        keys = ", ".join(name for name in MorseCommitteeSpec.model_fields if name != "backend")
        raise ValueError(
            "'backend: analytic' now means trained analytic members listed under 'models'; "
            f"for the untrained Morse test committee ({keys}) write 'backend: morse'"
        )
    return check_backend_name(backend, COMMITTEE_BACKENDS)


def load_committee_spec(path: str | Path) -> CommitteeSpec:
    """Read and validate a committee file (errors name the file and field)."""
    path = Path(path)
    data, text = read_yaml_mapping(path, "committee", "name its backend", "backend")
    try:
        backend = _backend_of(data)
    except ValueError as exc:
        raise located_error(str(exc), ("backend",), path, text) from None
    model = MorseCommitteeSpec if backend == MORSE else TrainedCommitteeSpec
    return validate_input(model, data, file=path, text=text, context={"base_dir": path.resolve().parent})


def load_committee(path: str | Path) -> Committee:
    """The committee a committee file describes."""
    return load_committee_spec(path).build()
