"""The reference-engine protocol: a labelled structure or a failure record, never an exception.

An engine either runs in-process (tblite, any ASE calculator: :class:`InProcessReference`) or
as an external program (CP2K: :class:`FileReference`, a pure template that writes inputs into
a directory and parses the outputs; the command that runs it comes from the site-config).
Either way one calculation gives a :class:`ReferenceResult`, so one failed calculation never
breaks the gathering of many.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ase import Atoms

from cagoflow.filters import REFERENCE_STATUS_KEY


class ReferenceStatus(str, enum.Enum):
    """Outcome of one reference calculation."""

    CONVERGED = "converged"
    NOT_CONVERGED = "not_converged"
    FAILED = "failed"


@dataclass(frozen=True)
class ReferenceResult:
    """One reference calculation.

    Attributes:
        atoms: the structure with its labels (SinglePointCalculator: ``energy`` eV, ``forces``
            eV/Å, ``stress`` eV/Å³ when periodic) and ``info["reference_status"]``; the bare
            input structure when the calculation failed.
        status: converged, not converged or failed.
        engine: the engine's name and method, e.g. "tblite/GFN1-xTB".
        message: why it failed or did not converge ("" on success).
        wall_time: seconds.
    """

    atoms: Atoms
    status: ReferenceStatus
    engine: str
    message: str = ""
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is ReferenceStatus.CONVERGED

    def labelled(self) -> Atoms:
        """The structure with the status recorded in ``info`` (what the post-filter reads)."""
        atoms = self.atoms.copy()
        atoms.calc = self.atoms.calc
        atoms.info[REFERENCE_STATUS_KEY] = self.status.value
        if self.message:
            atoms.info["reference_message"] = self.message
        return atoms


@runtime_checkable
class InProcessReference(Protocol):
    """A reference engine that runs inside Python (tblite, an ASE calculator)."""

    name: str

    def compute(self, atoms: Atoms) -> ReferenceResult:
        """Label one structure; failures come back as a result, not an exception."""
        ...

    def calculator(self):
        """A fresh ASE calculator of this engine (e.g. to drive the benchmark MD)."""
        ...


@runtime_checkable
class FileReference(Protocol):
    """A reference engine that runs as an external program in its own directory."""

    name: str

    def write_input(self, atoms: Atoms, directory: Path) -> None:
        """Write every input file the program needs into ``directory``."""
        ...

    def arguments(self, directory: Path) -> list[str]:
        """Arguments after the site's command (e.g. ``-i cp2k.inp -o cp2k.out``)."""
        ...

    def read_result(self, atoms: Atoms, directory: Path, returncode: int) -> ReferenceResult:
        """Parse the program's outputs; a crash or non-convergence is a result, not an exception."""
        ...
