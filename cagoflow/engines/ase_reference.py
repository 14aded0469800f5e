"""Any ASE calculator as an in-process reference engine (EMT, a Morse member, xtb, an ML model).

:class:`AseCalculatorReference` builds the calculator from an import path
(``"ase.calculators.emt:EMT"``) and keyword arguments; a bad path or bad arguments are input
errors raised when the engine is built, naming the campaign field (``reference.calculator``,
``reference.settings``). Calculations never raise: an exception of the calculator, missing or
non-finite results become a :class:`~cagoflow.engines.reference.ReferenceResult` with status
FAILED (or NOT_CONVERGED when the message says an SCF did not converge) and the message.

:func:`label_with_calculator` is the shared core, also used by the tblite engine.
"""

from __future__ import annotations

import importlib
import re
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.calculators.singlepoint import SinglePointCalculator

from cagoflow.engines.reference import ReferenceResult, ReferenceStatus
from cagoflow.errors import InputError
from cagoflow.inputs import IMPORT_PATH

__all__ = ["AseCalculatorReference", "label_with_calculator", "load_calculator_class", "status_of_exception"]

#: Campaign field paths named by input errors.
CALCULATOR_FIELD = "reference.calculator"
SETTINGS_FIELD = "reference.settings"

_NOT_CONVERGED = re.compile(r"(not|n't|no|failed to|did not)\s+(\w+\s+)?conver", re.IGNORECASE)


def load_calculator_class(import_path: str) -> type:
    """The class named by ``"package.module:Class"``; any problem is an :class:`InputError`
    naming the field ``reference.calculator``."""
    if not isinstance(import_path, str) or not IMPORT_PATH.match(import_path):
        raise InputError(
            f"expected an import path 'module:Class' (e.g. 'ase.calculators.emt:EMT'), found {import_path!r}",
            field=CALCULATOR_FIELD,
        )
    module_name, class_name = import_path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while importing the module
        raise InputError(
            f"cannot import module '{module_name}' of '{import_path}' ({type(exc).__name__}: {exc})",
            field=CALCULATOR_FIELD,
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise InputError(f"module '{module_name}' has no attribute '{class_name}'", field=CALCULATOR_FIELD)
    if not (isinstance(cls, type) and issubclass(cls, BaseCalculator)):
        raise InputError(f"'{import_path}' is not an ASE calculator class", field=CALCULATOR_FIELD)
    return cls


def status_of_exception(exc: BaseException) -> ReferenceStatus:
    """NOT_CONVERGED when the exception says an SCF (or similar) did not converge, else FAILED."""
    return ReferenceStatus.NOT_CONVERGED if _NOT_CONVERGED.search(str(exc)) else ReferenceStatus.FAILED


def label_with_calculator(
    atoms: Atoms,
    calculator: BaseCalculator,
    engine: str,
    *,
    stress: bool = True,
) -> ReferenceResult:
    """Energy (eV), forces (eV/Å) and, for a structure periodic along all three axes and with
    ``stress``, the stress (eV/Å³) of ``atoms`` from ``calculator``; never raises for a failed
    calculation (see the module docstring). ``atoms`` is not modified."""
    start = time.perf_counter()
    bare = atoms.copy()
    work = atoms.copy()
    work.calc = calculator
    want_stress = stress and bool(atoms.pbc.all())

    def failed(status: ReferenceStatus, message: str) -> ReferenceResult:
        return ReferenceResult(bare, status, engine, message, time.perf_counter() - start)

    try:
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
        stress_voigt = np.array(work.get_stress(voigt=True), dtype=float) if want_stress else None
    except Exception as exc:  # the engine's failure is a result, never an exception
        return failed(status_of_exception(exc), f"{type(exc).__name__}: {exc}".strip())
    if forces.shape != (len(atoms), 3):
        return failed(ReferenceStatus.FAILED, f"forces of shape {forces.shape}, expected ({len(atoms)}, 3)")
    bad = [
        name
        for name, value in (("energy", energy), ("forces", forces), ("stress", stress_voigt))
        if value is not None and not np.isfinite(value).all()
    ]
    if bad:
        return failed(ReferenceStatus.FAILED, f"non-finite {' and '.join(bad)} (NaN or inf)")
    labelled = atoms.copy()
    results: dict[str, Any] = {"energy": energy, "free_energy": energy, "forces": forces}
    if stress_voigt is not None:
        results["stress"] = stress_voigt
    labelled.calc = SinglePointCalculator(labelled, **results)
    return ReferenceResult(labelled, ReferenceStatus.CONVERGED, engine, "", time.perf_counter() - start)


class AseCalculatorReference:
    """Reference engine around any ASE calculator, built from ``import_path`` and ``kwargs``.

    The calculator is built once (so a bad path or bad arguments fail early, as
    :class:`InputError`) and reused for every structure, reset before each one; calls are
    serialised by a lock, so one engine may be shared between threads. Pickling (e.g. to send
    the engine to a Parsl worker) keeps only the path and arguments; the calculator is rebuilt
    on first use.

    Attributes:
        name: "ase/<Class>", e.g. "ase/EMT".
    """

    def __init__(
        self,
        import_path: str = "ase.calculators.emt:EMT",
        kwargs: Mapping[str, Any] | None = None,
        *,
        stress: bool = True,
    ):
        self.import_path = import_path
        self.kwargs = dict(kwargs or {})
        self.stress = stress
        self._class = load_calculator_class(import_path)
        self.name = f"ase/{self._class.__name__}"
        self._lock = threading.Lock()
        self._calculator: BaseCalculator | None = self._build()

    def calculator(self) -> BaseCalculator:
        """A fresh calculator with these settings (e.g. to drive MD)."""
        return self._build()

    def _build(self) -> BaseCalculator:
        try:
            return self._class(**self.kwargs)
        except Exception as exc:
            raise InputError(
                f"cannot build {self.import_path} with settings {self.kwargs!r} ({type(exc).__name__}: {exc})",
                field=SETTINGS_FIELD,
            ) from None

    def compute(self, atoms: Atoms) -> ReferenceResult:
        """Label one structure; failures come back as a result, not an exception."""
        with self._lock:
            if self._calculator is None:  # after unpickling
                try:
                    self._calculator = self._build()
                except InputError as exc:
                    return ReferenceResult(atoms.copy(), ReferenceStatus.FAILED, self.name, str(exc))
            reset: Callable[[], None] | None = getattr(self._calculator, "reset", None)
            if reset is not None:
                reset()
            return label_with_calculator(atoms, self._calculator, self.name, stress=self.stress)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_calculator"] = None
        state["_lock"] = None
        state["_class"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._class = load_calculator_class(self.import_path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AseCalculatorReference({self.import_path!r}, {self.kwargs!r}, stress={self.stress})"
