"""tblite (GFN1-xTB, GFN2-xTB, IPEA1-xTB) as an in-process reference engine.

:class:`TbliteReference` labels a structure with energy (eV), forces (eV/Å) and, for
structures periodic along all three axes, the stress (eV/Å³) of ``tblite.ase.TBLite``. It is a
cheap stand-in for DFT in tests and demonstrations. Failures are results (see
:func:`cagoflow.engines.ase_reference.label_with_calculator`): an SCF that does not converge
within ``max_iterations`` gives NOT_CONVERGED, any other error of the library (e.g. an element
the method has no parameters for) FAILED, both with tblite's message.

The number of OpenMP threads is not set here: it comes from the environment
(``OMP_NUM_THREADS``), i.e. from the site configuration.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ase import Atoms

from cagoflow.campaign import TBLITE_METHODS
from cagoflow.engines.ase_reference import label_with_calculator
from cagoflow.engines.reference import ReferenceResult
from cagoflow.errors import InputError

__all__ = ["TbliteReference"]


class TbliteReference:
    """Reference engine on tblite's ASE calculator.

    Args:
        method: one of :data:`cagoflow.campaign.TBLITE_METHODS` ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB").
        accuracy: tblite's numerical accuracy (smaller is tighter; 1.0 is tblite's default).
        electronic_temperature: Fermi smearing temperature, K.
        max_iterations: SCF iterations before the calculation counts as not converged.
        charge: total charge, e (None: the sum of the structure's initial charges).
        multiplicity: spin multiplicity 2S+1 (None: from the initial magnetic moments).
        stress: also compute the stress of structures periodic along all three axes.
        options: further keyword arguments of ``tblite.ase.TBLite`` (``mixer_damping``,
            ``solvation``, ...); an unknown one is an :class:`InputError`.

    Attributes:
        name: "tblite/<method>".
    """

    def __init__(
        self,
        method: str = "GFN1-xTB",
        *,
        accuracy: float = 1.0,
        electronic_temperature: float = 300.0,
        max_iterations: int = 250,
        charge: int | None = None,
        multiplicity: int | None = None,
        stress: bool = True,
        **options: Any,
    ):
        if method not in TBLITE_METHODS:
            raise InputError(f"expected one of {', '.join(TBLITE_METHODS)}, found {method!r}", field="reference.method")
        checks = {
            "accuracy": (accuracy, accuracy > 0, "a positive number"),
            "electronic_temperature": (electronic_temperature, electronic_temperature >= 0, "a temperature >= 0 K"),
            "max_iterations": (max_iterations, max_iterations >= 1, "at least 1"),
            "multiplicity": (multiplicity, multiplicity is None or multiplicity >= 1, "at least 1"),
        }
        for name, (value, ok, expected) in checks.items():
            if not ok:
                raise InputError(f"expected {expected}, found {value!r}", field=f"reference.settings.{name}")
        if importlib.util.find_spec("tblite") is None:
            raise InputError(
                "engine 'tblite' needs the tblite Python package (pip install 'cagoflow[xtb]')",
                field="reference.engine",
            )
        from tblite.ase import TBLite

        managed = {"method", "accuracy", "electronic_temperature", "max_iterations", "charge", "multiplicity", "verbosity"}
        for key in options:
            if key not in TBLite.default_parameters or key in managed:
                allowed = sorted(set(TBLite.default_parameters) - managed)
                raise InputError(
                    f"tblite setting {key!r} is unknown or set by cagoflow; besides accuracy, "
                    f"electronic_temperature and max_iterations it accepts: {', '.join(allowed)}",
                    field=f"reference.settings.{key}",
                )
        self.options = dict(options)
        self.method = method
        self.accuracy = float(accuracy)
        self.electronic_temperature = float(electronic_temperature)
        self.max_iterations = int(max_iterations)
        self.charge = charge
        self.multiplicity = multiplicity
        self.stress = stress
        self.name = f"tblite/{method}"

    def calculator_parameters(self) -> dict[str, Any]:
        """Keyword arguments of ``tblite.ase.TBLite`` (quiet: ``verbosity=0``)."""
        return {
            "method": self.method,
            "accuracy": self.accuracy,
            "electronic_temperature": self.electronic_temperature,
            "max_iterations": self.max_iterations,
            "charge": self.charge,
            "multiplicity": self.multiplicity,
            "verbosity": 0,
            **self.options,
        }

    def calculator(self):
        """A fresh ``tblite.ase.TBLite`` calculator with these settings (e.g. to drive MD)."""
        from tblite.ase import TBLite

        return TBLite(**self.calculator_parameters())

    def compute(self, atoms: Atoms) -> ReferenceResult:
        """Label one structure with a fresh calculator; failures come back as a result."""
        return label_with_calculator(atoms, self.calculator(), self.name, stress=self.stress)

    def __repr__(self) -> str:
        return f"TbliteReference({self.method!r}, accuracy={self.accuracy}, max_iterations={self.max_iterations})"
