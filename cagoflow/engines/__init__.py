"""Engines behind small protocols: reference calculations and molecular dynamics.

Reference engines come in two kinds (:mod:`cagoflow.engines.reference`): in-process
(:data:`IN_PROCESS_REFERENCES`: tblite, any ASE calculator) and external programs
(:data:`REFERENCE_PROGRAMS`: CP2K, Quantum ESPRESSO), each a template that writes its inputs
into a task directory and parses its outputs, while the site-config says how this machine
starts its program (``engines.<name>`` of the site). Every list of engines elsewhere — the
campaign's ``reference.engine``, the site's ``engines`` block, which reference tasks run a
program — derives from these two tables; adding a code is one module and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from cagoflow.campaign import ReferenceConfig, SystemConfig
    from cagoflow.engines.reference import FileReference, InProcessReference


@dataclass(frozen=True)
class ReferenceProgram:
    """A reference code that runs as an external program.

    Attributes:
        engine: its name in a campaign (``reference.engine``) and in the site's ``engines`` block.
        program: the program's usual name, the site's default command (``cp2k.psmp``, ``pw.x``).
        build: the engine of a campaign's ``reference`` block for one system (its charge and
            multiplicity), a :class:`~cagoflow.engines.reference.FileReference`.
        description: one line for the site-config's documentation.
        templates: whether ``reference.template`` (an input file of the user's) applies.
    """

    engine: str
    program: str
    build: Callable[["ReferenceConfig", "SystemConfig"], "FileReference"]
    description: str
    templates: bool = False


def _cp2k(config: "ReferenceConfig", system: "SystemConfig") -> "FileReference":
    from cagoflow.engines.cp2k import Cp2kReference, Cp2kSettings

    settings = dict(config.settings)
    settings.setdefault("stress", config.stress)
    settings.update(charge=system.charge, multiplicity=system.multiplicity)
    if config.template is not None:
        return Cp2kReference(Cp2kSettings.from_template_file(config.template, **settings))
    return Cp2kReference(Cp2kSettings(**settings))


def _espresso(config: "ReferenceConfig", system: "SystemConfig") -> "FileReference":
    from cagoflow.engines.espresso import EspressoReference, EspressoSettings

    settings = {"stress": config.stress, **config.settings}
    return EspressoReference(EspressoSettings(**settings), charge=system.charge, multiplicity=system.multiplicity)


#: The reference codes that run as programs, by engine name.
REFERENCE_PROGRAMS: dict[str, ReferenceProgram] = {
    program.engine: program
    for program in (
        ReferenceProgram("cp2k", "cp2k.psmp", _cp2k, "CP2K (reference)", templates=True),
        ReferenceProgram("espresso", "pw.x", _espresso, "Quantum ESPRESSO pw.x (reference)"),
    )
}
#: The reference engines that run inside Python.
IN_PROCESS_REFERENCES: tuple[str, ...] = ("tblite", "ase")
#: Every reference engine a campaign may name.
REFERENCE_ENGINES: tuple[str, ...] = (*IN_PROCESS_REFERENCES, *REFERENCE_PROGRAMS)


def make_reference(config: "ReferenceConfig", system: "SystemConfig") -> "InProcessReference":
    """The in-process reference engine a campaign's ``reference`` block describes."""
    if config.engine == "tblite":
        from cagoflow.engines.tblite import TbliteReference

        return TbliteReference(
            method=config.method_name, charge=system.charge, multiplicity=system.multiplicity, stress=config.stress,
            **config.settings,
        )  # fmt: skip
    if config.engine == "ase":
        from cagoflow.engines.ase_reference import AseCalculatorReference

        return AseCalculatorReference(config.calculator, config.settings, stress=config.stress)
    raise ValueError(f"engine {config.engine!r} runs as an external program, not in-process")


def make_file_reference(config: "ReferenceConfig", system: "SystemConfig") -> "FileReference":
    """The external-program reference engine a campaign's ``reference`` block describes."""
    return REFERENCE_PROGRAMS[config.engine].build(config, system)
