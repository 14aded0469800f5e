"""Quantum ESPRESSO (``pw.x``) as a reference engine, through ASE's Espresso template.

A :class:`~cagoflow.engines.reference.FileReference`: :meth:`EspressoReference.write_input`
writes ``espresso.pwi`` with ASE's own writer (:class:`ase.calculators.espresso.EspressoTemplate`),
the site's command runs ``pw.x -in espresso.pwi`` in the task directory (its standard output is
the task's ``engine.log``), and :meth:`EspressoReference.read_result` reads that output with
ASE's ``espresso-out`` reader: energy (eV), forces (eV/Å) and, with ``stress``, the stress
(eV/Å³, ASE's sign). A crash, a missing output or an SCF that did not converge is a result
with its reason, never an exception.

Units of the settings are pw.x's own: cutoffs in Ry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from pydantic import Field

from cagoflow.engines.reference import ReferenceResult, ReferenceStatus
from cagoflow.filters import REFERENCE_STATUS_KEY
from cagoflow.inputs import InputModel
from cagoflow.io import last_lines

INPUT_FILE = "espresso.pwi"
#: What the task's shell writes the program's standard output to (see :mod:`cagoflow.apps.commands`).
OUTPUT_FILE = "engine.log"
#: Where Debian's quantum-espresso-data puts its pseudopotentials.
DEBIAN_PSEUDO_DIR = Path("/usr/share/espresso/pseudo")


class EspressoSettings(InputModel):
    """pw.x settings of a campaign's ``reference.settings`` (engine ``espresso``)."""

    pseudopotentials: dict[str, str] = Field(..., description="element → pseudopotential file in pseudo_dir")
    pseudo_dir: Path = Field(DEBIAN_PSEUDO_DIR, description="folder of the pseudopotential files")
    ecutwfc: float = Field(30.0, gt=0, description="wave-function cutoff, Ry")
    ecutrho: float | None = Field(None, gt=0, description="density cutoff, Ry (null: pw.x's default, 4 × ecutwfc)")
    kpts: tuple[int, int, int] | None = Field(None, description="Monkhorst-Pack grid (null: the Γ point only)")
    conv_thr: float = Field(1e-8, gt=0, description="SCF convergence threshold, Ry")
    electron_maxstep: int = Field(100, ge=1, description="most SCF iterations")
    stress: bool = Field(True, description="compute the stress (tstress)")
    input_data: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="more pw.x namelist entries, e.g. {system: {occupations: smearing}}"
    )


@dataclass(frozen=True)
class EspressoReference:
    """pw.x reference engine: a :class:`~cagoflow.engines.reference.FileReference` template."""

    settings: EspressoSettings
    charge: float = 0.0
    multiplicity: int = 1
    name: str = "espresso/pw.x"

    def parameters(self, atoms: Atoms) -> dict[str, Any]:
        """The keyword arguments of ASE's pw.x writer for ``atoms``.

        Raises ValueError for an element without a pseudopotential or a structure without a cell.
        """
        settings = self.settings
        missing = sorted(set(atoms.get_chemical_symbols()) - set(settings.pseudopotentials))
        if missing:
            raise ValueError(f"no pseudopotential for {', '.join(missing)} (reference.settings.pseudopotentials)")
        if atoms.cell.rank < 3:
            raise ValueError("pw.x needs a cell with three lattice vectors")
        system: dict[str, Any] = {"ecutwfc": settings.ecutwfc, "tot_charge": self.charge}
        if settings.ecutrho is not None:
            system["ecutrho"] = settings.ecutrho
        if self.multiplicity > 1:
            system.update(nspin=2, tot_magnetization=self.multiplicity - 1)
        namelists = {
            "control": {"calculation": "scf", "tprnfor": True, "tstress": settings.stress, "pseudo_dir": str(settings.pseudo_dir)},
            "system": system,
            "electrons": {"conv_thr": settings.conv_thr, "electron_maxstep": settings.electron_maxstep},
        }  # fmt: skip
        for name, entries in settings.input_data.items():
            namelists.setdefault(name, {}).update(entries)
        return {"input_data": namelists, "pseudopotentials": dict(settings.pseudopotentials), "kpts": settings.kpts}

    def write_input(self, atoms: Atoms, directory: Path) -> None:
        """Write ``espresso.pwi`` into ``directory`` (an earlier run's output removed first)."""
        from ase.calculators.espresso import EspressoProfile, EspressoTemplate

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / OUTPUT_FILE).unlink(missing_ok=True)
        parameters = self.parameters(atoms)
        properties = ["energy", "forces"] + (["stress"] if self.settings.stress else [])
        profile = EspressoProfile(command="pw.x", pseudo_dir=self.settings.pseudo_dir)
        EspressoTemplate().write_input(profile, directory, atoms, parameters, properties)

    def arguments(self, directory: Path) -> list[str]:
        """``-in espresso.pwi`` (relative: the command runs in ``directory``)."""
        return ["-in", INPUT_FILE]

    def read_result(self, atoms: Atoms, directory: Path, returncode: int) -> ReferenceResult:
        """Parse ``engine.log``; a crash, no output or an unconverged SCF is a result with its reason."""
        from ase.io import read

        path = Path(directory) / OUTPUT_FILE
        text = path.read_text(errors="replace") if path.exists() else ""
        if "convergence NOT achieved" in text:
            return self._failed(atoms, f"SCF not converged in {self.settings.electron_maxstep} steps", ReferenceStatus.NOT_CONVERGED, text)
        if returncode != 0 or "JOB DONE" not in text:
            reason = f"pw.x exited with code {returncode}" if returncode != 0 else "pw.x did not finish (no JOB DONE)"
            return self._failed(atoms, reason, ReferenceStatus.FAILED, text)
        try:
            parsed = read(path, format="espresso-out")
        except Exception as exc:  # a truncated or foreign output: a failed calculation, recorded
            return self._failed(atoms, f"unreadable output: {exc}", ReferenceStatus.FAILED, text)
        results = parsed.calc.results
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(
            labelled, energy=results["energy"], forces=results["forces"],
            stress=results.get("stress") if self.settings.stress else None,
        )  # fmt: skip
        labelled.info[REFERENCE_STATUS_KEY] = ReferenceStatus.CONVERGED.value
        return ReferenceResult(labelled, ReferenceStatus.CONVERGED, self.name)

    def _failed(self, atoms: Atoms, reason: str, status: ReferenceStatus, text: str) -> ReferenceResult:
        return ReferenceResult(atoms.copy(), status, self.name, reason + last_lines(text, 5, OUTPUT_FILE))
