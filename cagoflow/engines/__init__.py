"""Engines behind small protocols: reference calculations and molecular dynamics."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cagoflow.campaign import ReferenceConfig, SystemConfig
    from cagoflow.engines.reference import InProcessReference


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


def make_file_reference(config: "ReferenceConfig", system: "SystemConfig"):
    """The external-program reference engine (CP2K) a campaign's ``reference`` block describes."""
    from cagoflow.engines.cp2k import Cp2kReference, Cp2kSettings

    settings = dict(config.settings)
    settings.setdefault("stress", config.stress)
    settings.update(charge=system.charge, multiplicity=system.multiplicity)
    if config.template is not None:
        return Cp2kReference(Cp2kSettings.from_template_file(config.template, **settings))
    return Cp2kReference(Cp2kSettings(**settings))
