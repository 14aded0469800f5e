"""Committee files: which backend and which parameters or model files make a committee.

A committee file is a small YAML file. For trained members: ``backend: deepmd`` (or nequip,
allegro, analytic-trained) and ``models: [member-00/frozen_model.pth, ...]`` (paths relative
to the file), optionally ``device: cpu | cuda | auto``. The analytic test committee::

    backend: analytic
    members: 4          # committee size M
    species: [O, H]
    spread: 0.05        # relative member-to-member spread of the Morse parameters
    seed: 1

:func:`load_committee` reads one and returns an object of the
:class:`cagoflow.committee.Committee` protocol. Every backend registers one builder here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cagoflow.committee import Committee
from cagoflow.config import _read_yaml_mapping, _validate
from cagoflow.inputs import InputModel
from cagoflow.errors import InputError


class AnalyticCommitteeSpec(InputModel):
    """Morse pair potentials with member-wise perturbed parameters (:mod:`cagoflow.analytic`)."""

    backend: Literal["analytic"] = "analytic"
    members: int = Field(4, ge=2, description="committee size M")
    species: tuple[str, ...] = Field(("O", "H"), min_length=1, description="chemical symbols the model knows")
    spread: float = Field(0.05, gt=0, lt=1, description="relative spread of the Morse parameters across members")
    seed: int = Field(0, description="seed of the member perturbations")
    cutoff: float = Field(5.0, gt=1, description="pair cutoff, Å")

    def build(self) -> Committee:
        from cagoflow.analytic import MorseCommittee, MorseModel

        model = MorseModel.for_symbols(
            list(self.species), n_members=self.members, spread=self.spread, seed=self.seed, cutoff=self.cutoff
        )
        return MorseCommittee(model)

    def truth(self):
        """The unperturbed model as an ASE calculator: the synthetic reference of demos and tests."""
        from cagoflow.analytic import MorseCalculator, MorseModel

        return MorseCalculator(MorseModel.for_symbols(list(self.species), cutoff=self.cutoff))


#: Committee file models by backend name ("module:Class" for those imported on first use).
BACKENDS: dict[str, type[InputModel] | str] = {
    "analytic": AnalyticCommitteeSpec,
    "analytic-trained": "cagoflow.backends.analytic:AnalyticModelsSpec",
    "deepmd": "cagoflow.backends.deepmd:DeepmdCommitteeSpec",
    "nequip": "cagoflow.backends.nequip:NequipCommitteeSpec",
    "allegro": "cagoflow.backends.nequip:AllegroCommitteeSpec",
}


def _spec_class(backend: str) -> type[InputModel]:
    import importlib

    spec = BACKENDS[backend]
    if isinstance(spec, str):
        module, name = spec.split(":")
        spec = getattr(importlib.import_module(module), name)
    return spec


def load_committee_spec(path: str | Path) -> InputModel:
    """Read and validate a committee file (errors name the file and field)."""
    path = Path(path)
    data, text = _read_yaml_mapping(path, "committee", "name its backend", "backend")
    backend = data.get("backend")
    if backend not in BACKENDS:
        expected = ", ".join(sorted(BACKENDS))
        raise InputError(f"unknown backend {backend!r}; expected one of: {expected}", file=path, field="backend")
    return _validate(_spec_class(backend), data, file=path, text=text, context={"base_dir": path.resolve().parent})


def load_committee(path: str | Path) -> Committee:
    """The committee a committee file describes."""
    return load_committee_spec(path).build()
