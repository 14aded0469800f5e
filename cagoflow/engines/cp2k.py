"""CP2K as a reference engine: a pure template (inputs in, outputs parsed), never a runner.

:class:`Cp2kReference` implements :class:`~cagoflow.engines.reference.FileReference`: it
writes the inputs for one structure into a directory, says which arguments follow the site's
command (``srun -n 16 cp2k.psmp``, ``mpirun -np 2 cp2k.psmp``, ``cp2k.psmp``) and turns the
outputs into a :class:`~cagoflow.engines.reference.ReferenceResult`. A crash, a missing output
or an unconverged SCF is a result (FAILED / NOT_CONVERGED with the reason), never an exception.
:func:`cagoflow.engines.reference_runner.run_file_reference` runs it locally.

Methods (:attr:`Cp2kSettings.method`):

- ``"dc-r2scan"`` (default; the paper's reference): r²SCAN evaluated on the Hartree-Fock
  density. HF with ADMM (AUX_FIT basis ``admm-dzp`` from BASIS_ADMM_UZH by default; the paper
  does not say which) and the truncated Coulomb operator; the truncation radius is the radius of
  the largest sphere inscribed in the cell (half the smallest perpendicular height, i.e. half the
  shortest edge of an orthorhombic cell) minus :attr:`~Cp2kSettings.truncation_margin`
  (0.5 Å); EPS_SCHWARZ 1e-6; then ``&ENERGY_CORRECTION`` with ``ENERGY_FUNCTIONAL DCDFT`` and
  an r²SCAN ``&XC``. GTH-SCAN pseudopotentials and TZV2P-MOLOPT-SCAN-GTH basis (UZH files),
  plane-wave cutoff 2500 Ry by default. The HF SCF starts from a converged PBE wavefunction:
  ``cp2k.inp`` is a CP2K *farming* input (one group, so every rank runs both jobs, in order)
  that runs ``pbe-guess.inp`` (PBE, same basis and pseudopotentials, writes
  ``pbe-guess-RESTART.wfn``) and then ``dcdft.inp`` (``SCF_GUESS RESTART`` from that file). One
  command, one launcher: ``<site command> -i cp2k.inp -o cp2k.out``; the results are in
  ``dcdft.out`` (``cp2k.out`` is the farming log).
- ``"pbe"``: PBE with DZVP-MOLOPT-PBE-GTH / GTH-PBE (UZH files), one input; cheap, for tests.
- ``"template"``: a user input (:attr:`Cp2kSettings.template`, the text) with ``{placeholders}``
  filled by :meth:`str.format` (write literal braces as ``{{`` ``}}``); the names are in
  :data:`TEMPLATE_FIELDS`. The template must print the energy and ``&PRINT &FORCES ON``; a
  stress block is read when present.

Kinds: one ``&KIND`` per element present, names ``<family>-q<valence>``, the valence from
:data:`VALENCE` (every element H–Rn that has TZV2P/DZVP-MOLOPT-SCAN-GTH, DZVP-MOLOPT-PBE-GTH,
GTH-SCAN, GTH-PBE and admm-dz/dzp/tzp with one common valence in CP2K 2023.1's data files; no
lanthanides) or from :attr:`Cp2kSettings.valence`.

Outputs (CP2K 2023.1), all parsed from the last occurrence:

- energy: ``ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]`` (Hartree → eV). With DCDFT this line
  already carries the corrected total (HF SCF total + "Energy Correction"; checked: -16.84029 +
  (-0.34931) = -17.18960 Ha for one H2O), equal to "Etotal Energy Functional"; a dc-r2scan
  output without the "Energy Correction" line is FAILED, so an HF energy is never taken for
  DC-r²SCAN;
- forces: the ``ATOMIC FORCES in [a.u.]`` block (Hartree/bohr → eV/Å; CP2K prints forces,
  −dE/dR, checked against finite differences in the tests);
- stress: the LAST ``STRESS| Analytical stress tensor [GPa]`` block, negated and converted to
  eV/Å³: ASE stress = (1/V) ∂E/∂ε = −(CP2K tensor) (checked against a finite-difference strain
  derivative of the energy in the tests). DCDFT prints a FIRST such block inside "Energy
  Correction Forces", before the response solver: the explicit part only (one H2O in an 8 Å
  box at 400 Ry: xx = +1.08 GPa, while the final tensor has xx = -0.10 GPa). That early block
  is the likely source of the "one diagonal component far off" of the first trial; it is
  never read.
- SCF: the last "SCF run converged" / "SCF run NOT converged" / outer-loop message; not
  converged → NOT_CONVERGED (labels kept, the post-filter drops it); warnings: "The number of
  warnings for this run is : N" → ``info["cp2k_warnings"]``;
- failures: non-zero return code, a missing or truncated output (no "PROGRAM ENDED"), an
  ``[ABORT]`` box (its message is the reason), missing or non-finite energy/forces, a requested
  stress missing → FAILED with the reason and the last lines of the output.

DC-r²SCAN forces and stress against central finite differences of the DC-r²SCAN energy (CP2K
2023.1; one distorted H2O in a 6 Å box, DZVP-MOLOPT-SCAN-GTH / admm-dz, truncation radius
fixed at 2.5 Å under strain, h = 0.005 Å, ε = ±0.005; analytical vs FD):

- at 300 Ry: yy stress 1.871 vs 1.867 GPa, yz -2.036 vs -2.032 GPa, an H force 3.603 vs
  3.591 eV/Å, but xx stress -0.270 vs -0.025 GPa, zz 0.906 vs 1.041 GPa, the O x force
  +0.350 vs -0.150 eV/Å, and the analytical forces sum to 0.97 eV/Å;
- the same error without HF and DCDFT: self-consistent r²SCAN at 300 Ry, O x force +0.457 vs
  -0.112 eV/Å; DCDFT on HF without ADMM: +0.456 vs -0.116; while the HF-ADMM SCF alone (no
  correction) is consistent: -0.499 vs -0.501 eV/Å. The error comes from r²SCAN (meta-GGA) on
  a coarse grid, not from DCDFT, ADMM or the truncated operator;
- at 800 Ry: the O x force -0.5087 vs -0.5105 eV/Å (forces sum to 0.03 eV/Å), xx stress
  -0.012 vs -0.009 GPa, zz stress 1.054 vs 1.056 GPa.

So the final DCDFT stress is the derivative of the DCDFT energy once the cutoff is converged
for r²SCAN (the paper's 2500 Ry is far above 800 Ry); at low cutoffs (tests, quick looks)
neither its stress nor its forces can be trusted to better than ~0.3 GPa / 0.5 eV/Å. PBE at
250 Ry is consistent (see the tests).

CP2K *appends* to an existing output file: :meth:`Cp2kReference.write_input` removes the
outputs and wavefunction files of an earlier run in the same directory first.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from cagoflow.engines import cp2k_templates as T
from cagoflow.engines.reference import ReferenceResult, ReferenceStatus
from cagoflow.filters import REFERENCE_STATUS_KEY
from cagoflow.io import last_lines

__all__ = [
    "METHODS",
    "TEMPLATE_FIELDS",
    "VALENCE",
    "Cp2kOutput",
    "Cp2kReference",
    "Cp2kSettings",
    "inscribed_radius",
    "parse_cp2k_output",
    "truncation_radius",
]

METHODS = ("dc-r2scan", "pbe", "template")

#: Valence electrons per element of the GTH-SCAN/GTH-PBE pseudopotentials used by default
#: (the one valence for which the MOLOPT-SCAN/PBE and ADMM-UZH bases all exist).
VALENCE: dict[str, int] = {
    "H": 1, "He": 2, "Li": 3, "Be": 4, "B": 3, "C": 4, "N": 5, "O": 6, "F": 7, "Ne": 8,
    "Na": 9, "Mg": 10, "Al": 3, "Si": 4, "P": 5, "S": 6, "Cl": 7, "Ar": 8, "K": 9, "Ca": 10,
    "Sc": 11, "Ti": 12, "V": 13, "Cr": 14, "Mn": 15, "Fe": 16, "Co": 17, "Ni": 18, "Cu": 11,
    "Zn": 12, "Ga": 13, "Ge": 4, "As": 5, "Se": 6, "Br": 7, "Kr": 8, "Rb": 9, "Sr": 10,
    "Y": 11, "Zr": 12, "Nb": 13, "Mo": 14, "Tc": 15, "Ru": 16, "Rh": 17, "Pd": 18, "Ag": 11,
    "Cd": 12, "In": 13, "Sn": 4, "Sb": 5, "Te": 6, "I": 7, "Xe": 8, "Cs": 9, "Ba": 10,
    "Hf": 12, "Ta": 13, "W": 14, "Re": 15, "Os": 16, "Ir": 17, "Pt": 18, "Au": 11, "Hg": 12,
    "Tl": 13, "Pb": 4, "Bi": 5, "Po": 6, "At": 7, "Rn": 8,
}  # fmt: skip

#: Placeholders a ``template`` input may use.
TEMPLATE_FIELDS: dict[str, str] = {
    "project": "CP2K project name ('cp2k')",
    "cell": "the &CELL body: A, B, C vectors in Å and PERIODIC XYZ",
    "coord": "the &COORD body: one 'symbol x y z' line per atom, Å",
    "kinds": "&KIND blocks for the elements present (basis/potential families of the settings)",
    "charge": "total charge",
    "multiplicity": "spin multiplicity",
    "cutoff": "plane-wave cutoff, Ry",
    "rel_cutoff": "relative cutoff, Ry",
    "max_scf": "maximum SCF steps",
    "eps_scf": "SCF convergence threshold",
    "natoms": "number of atoms",
}

INPUT_FILE = "cp2k.inp"
OUTPUT_FILE = "cp2k.out"
PROJECT = "cp2k"
PBE_GUESS = "pbe-guess"
DCDFT = "dcdft"

_DEFAULTS = {  # method: (basis family, potential family, ADMM basis family)
    "dc-r2scan": ("TZV2P-MOLOPT-SCAN-GTH", "GTH-SCAN", "admm-dzp"),
    "pbe": ("DZVP-MOLOPT-PBE-GTH", "GTH-PBE", None),
    "template": ("TZV2P-MOLOPT-SCAN-GTH", "GTH-SCAN", None),
}
_NAMES = {"dc-r2scan": "cp2k/DC-r2SCAN", "pbe": "cp2k/PBE", "template": "cp2k/template"}
_TAIL_LINES = 12


@dataclass(frozen=True)
class Cp2kSettings:
    """What CP2K computes (never how it is launched: that is the site's command).

    Attributes:
        method: "dc-r2scan" (the paper's), "pbe" (cheap) or "template".
        cutoff: plane-wave cutoff, Ry (2500: the paper's).
        rel_cutoff: relative cutoff, Ry.
        max_scf: SCF steps (OT/DIIS) per SCF, for the PBE guess and the HF SCF alike.
        eps_scf: SCF convergence threshold.
        eps_default: QS EPS_DEFAULT.
        charge: total charge.
        multiplicity: spin multiplicity (≠ 1 switches on UKS).
        stress: compute and read the analytical stress tensor (eV/Å³ in the result).
        basis_set: basis family, completed with ``-q<valence>`` (None: the method's default).
        potential: pseudopotential family, completed with ``-q<valence>`` (None: default).
        admm_basis_set: ADMM (AUX_FIT) basis family for dc-r2scan (None: ``admm-dzp``).
        valence: per-element valence overriding :data:`VALENCE`.
        basis_files: BASIS_SET_FILE_NAME entries.
        potential_file: POTENTIAL_FILE_NAME.
        eps_schwarz: HF EPS_SCHWARZ.
        truncation_radius: truncated-Coulomb CUTOFF_RADIUS, Å (None: from the cell, see
            :func:`truncation_radius`).
        truncation_margin: Å subtracted from the inscribed-sphere radius.
        hfx_max_memory: HFX MAX_MEMORY per MPI rank, MiB.
        template: the input text for method "template" (see :meth:`from_template_file`).
    """

    method: str = "dc-r2scan"
    cutoff: float = 2500.0
    rel_cutoff: float = 60.0
    max_scf: int = 50
    eps_scf: float = 1e-6
    eps_default: float = 1e-12
    charge: int = 0
    multiplicity: int = 1
    stress: bool = True
    basis_set: str | None = None
    potential: str | None = None
    admm_basis_set: str | None = None
    valence: Mapping[str, int] = field(default_factory=dict)
    basis_files: tuple[str, ...] = ("BASIS_MOLOPT_UZH", "BASIS_ADMM_UZH")
    potential_file: str = "POTENTIAL_UZH"
    eps_schwarz: float = 1e-6
    truncation_radius: float | None = None
    truncation_margin: float = 0.5
    hfx_max_memory: int = 2000
    template: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, found {self.method!r}")
        if (self.method == "template") != (self.template is not None):
            raise ValueError("method 'template' needs template text, and template text needs method 'template'")
        for name in ("cutoff", "rel_cutoff", "eps_scf", "eps_default", "eps_schwarz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, found {getattr(self, name)!r}")
        if self.max_scf < 1 or self.multiplicity < 1 or self.hfx_max_memory < 1:
            raise ValueError("max_scf, multiplicity and hfx_max_memory must be >= 1")
        if self.truncation_radius is not None and not self.truncation_radius > 0:
            raise ValueError(f"truncation_radius must be > 0 Å, found {self.truncation_radius!r}")
        bad = {symbol: q for symbol, q in self.valence.items() if not (isinstance(q, int) and q > 0)}
        if bad:
            raise ValueError(f"valence: expected positive integers per element, found {bad}")
        if self.truncation_margin < 0:
            raise ValueError(f"truncation_margin must be >= 0 Å, found {self.truncation_margin!r}")
        if self.template is not None:
            unknown = sorted(_template_fields(self.template) - TEMPLATE_FIELDS.keys())
            if unknown:
                raise ValueError(
                    f"template: unknown placeholders {', '.join(unknown)} "
                    f"(known: {', '.join(TEMPLATE_FIELDS)}; write literal braces as {{{{ }}}})"
                )

    @classmethod
    def from_template_file(cls, path: str | Path, **settings) -> Cp2kSettings:
        """Settings for method "template" with the text of the file ``path``."""
        return cls(method="template", template=Path(path).read_text(), **settings)

    @property
    def families(self) -> tuple[str, str, str | None]:
        """(basis, potential, ADMM basis) families after defaults."""
        basis, potential, admm = _DEFAULTS[self.method]
        return self.basis_set or basis, self.potential or potential, self.admm_basis_set or admm


def inscribed_radius(cell: np.ndarray) -> float:
    """Radius of the largest sphere inside the cell, Å: half its smallest perpendicular height.

    The height across the faces spanned by b and c is V/|b×c| (and cyclic); for an orthorhombic
    cell it is the edge length. Every periodic image is at least twice this radius away.
    """
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    volume = abs(float(np.linalg.det(cell)))
    if volume <= 0:
        raise ValueError("the structure has no cell (zero volume)")
    areas = [np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return 0.5 * volume / max(areas)


def truncation_radius(cell: np.ndarray, margin: float = 0.5) -> float:
    """Truncated-Coulomb cutoff radius for ``cell``, Å: :func:`inscribed_radius` − ``margin``."""
    inscribed = inscribed_radius(cell)
    if inscribed <= margin:
        raise ValueError(
            f"cell too small for a truncated Coulomb operator: inscribed radius {inscribed:.3f} Å ≤ margin {margin} Å"
        )
    return inscribed - margin


@dataclass(frozen=True)
class Cp2kOutput:
    """What one CP2K output says, in CP2K's units.

    Attributes:
        energy_hartree: the last ``ENERGY| Total FORCE_EVAL`` value.
        forces_hartree_per_bohr: the last ATOMIC FORCES block, (N, 3).
        stress_gpa: the last analytical stress tensor, 3×3, CP2K's sign.
        scf_converged: the last SCF outcome (None: no SCF message found).
        scf_steps: steps of the last SCF, when printed.
        energy_correction_hartree: the DCDFT/Harris "Energy Correction", when present.
        warnings: CP2K's warning count (None: not printed).
        abort: the message of an [ABORT] box, with its source location.
        ended: "PROGRAM ENDED" was printed.
    """

    energy_hartree: float | None = None
    forces_hartree_per_bohr: np.ndarray | None = None
    stress_gpa: np.ndarray | None = None
    scf_converged: bool | None = None
    scf_steps: int | None = None
    energy_correction_hartree: float | None = None
    warnings: int | None = None
    abort: str | None = None
    ended: bool = False


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?"
_ENERGY = re.compile(r"^\s*ENERGY\| Total FORCE_EVAL \( \w+ \) energy \[a\.u\.\]:\s+(" + _FLOAT + r")\s*$", re.M)
_CORRECTION = re.compile(r"^\s*Energy Correction\s+(" + _FLOAT + r")\s*$", re.M)
_WARNINGS = re.compile(r"The number of warnings for this run is\s*:\s*(\d+)")
_SCF_EVENTS = re.compile(
    r"(?P<inner_ok>\*\*\* SCF run converged in\s+(?P<steps>\d+) steps)"
    r"|(?P<inner_bad>SCF run NOT converged)"
    r"|(?P<outer_ok>outer SCF loop converged in\s+\d+ iterations or\s+(?P<osteps>\d+) steps)"
    r"|(?P<outer_bad>outer SCF loop FAILED to converge)"
)
_ABORT_ART = re.compile(r"^\s*(?:___|/   \\|\[ABORT\]|\\___/|\||O/\||/\| \||/ \\)")


def parse_cp2k_output(text: str) -> Cp2kOutput:
    """Parse the text of one CP2K output (see the module docstring for what is read)."""
    lines = text.splitlines()
    energies = _ENERGY.findall(text)
    corrections = _CORRECTION.findall(text)
    warnings = _WARNINGS.findall(text)
    converged, steps = None, None
    for match in _SCF_EVENTS.finditer(text):
        converged = bool(match.group("inner_ok") or match.group("outer_ok"))
        found = match.group("steps") or match.group("osteps")
        steps = int(found) if found else None
    return Cp2kOutput(
        energy_hartree=_to_float(energies[-1]) if energies else None,
        forces_hartree_per_bohr=_last_forces(lines),
        stress_gpa=_last_stress(lines),
        scf_converged=converged,
        scf_steps=steps,
        energy_correction_hartree=_to_float(corrections[-1]) if corrections else None,
        warnings=int(warnings[-1]) if warnings else None,
        abort=_abort_message(lines),
        ended="PROGRAM ENDED AT" in text,
    )


def _to_float(text: str) -> float:
    return float(text.replace("D", "E").replace("d", "e"))


def _last_forces(lines: list[str]) -> np.ndarray | None:
    starts = [i for i, line in enumerate(lines) if line.strip() == "ATOMIC FORCES in [a.u.]"]
    if not starts:
        return None
    rows = []
    for line in lines[starts[-1] + 1 :]:
        parts = line.split()
        if not parts or parts[0] == "#":
            continue
        if parts[0] == "SUM":
            return np.array(rows, dtype=float).reshape(-1, 3)
        try:
            rows.append([_to_float(value) for value in parts[3:6]])
        except (ValueError, IndexError):
            return None
    return None  # block not terminated: a truncated output


def _last_stress(lines: list[str]) -> np.ndarray | None:
    starts = [i for i, line in enumerate(lines) if line.strip() == "STRESS| Analytical stress tensor [GPa]"]
    if not starts:
        return None
    rows = []
    for line in lines[starts[-1] + 2 : starts[-1] + 5]:
        parts = line.split()
        if len(parts) != 5 or parts[0] != "STRESS|":
            return None
        rows.append([_to_float(value) for value in parts[2:5]])
    return np.array(rows, dtype=float) if len(rows) == 3 else None


def _abort_message(lines: list[str]) -> str | None:
    """The text of the last [ABORT] box (ASCII art removed), e.g. "... (qs_scf.F:123)"."""
    marks = [i for i, line in enumerate(lines) if "[ABORT]" in line]
    if not marks:
        return None
    start = marks[-1]
    while start > 0 and not lines[start - 1].strip().startswith("*****"):
        start -= 1
    words = []
    for line in lines[start:]:
        stripped = line.strip()
        if stripped.startswith("*****"):
            break
        body = stripped.strip("*")
        body = _ABORT_ART.sub("", body).strip()
        if body:
            words.append(body)
    if not words:
        return "CP2K aborted"
    location = words.pop() if re.fullmatch(r"\S+\.F:\d+", words[-1]) else None
    message = " ".join(words) or "CP2K aborted"
    return f"{message} ({location})" if location else message


def _template_fields(text: str) -> set[str]:
    names = set()
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None:
            names.add(re.split(r"[.\[]", name, maxsplit=1)[0] or "{}")
    return names


@dataclass(frozen=True)
class Cp2kReference:
    """CP2K reference engine: a :class:`~cagoflow.engines.reference.FileReference` template."""

    settings: Cp2kSettings = field(default_factory=Cp2kSettings)

    @property
    def name(self) -> str:
        """Engine and method, e.g. "cp2k/DC-r2SCAN"."""
        return _NAMES[self.settings.method]

    # -- inputs -------------------------------------------------------------------------------

    def inputs(self, atoms: Atoms) -> dict[str, str]:
        """File name → text of every input for ``atoms`` (pure; :meth:`write_input` writes them).

        Raises ValueError for a structure the settings cannot describe: no cell, an element
        without a known valence, a cell too small for the truncated Coulomb operator.
        """
        settings = self.settings
        if settings.method == "template":
            return {INPUT_FILE: settings.template.format_map(self._template_values(atoms))}
        if settings.method == "pbe":
            return {INPUT_FILE: self._single_point(atoms, PROJECT, "pbe", forces=True)}
        jobs = "".join(
            T.FARMING_JOB.format(input=f"{project}.inp", output=f"{project}.out") for project in (PBE_GUESS, DCDFT)
        )
        return {
            f"{PBE_GUESS}.inp": self._single_point(atoms, PBE_GUESS, "pbe", forces=False),
            f"{DCDFT}.inp": self._single_point(atoms, DCDFT, "dc-r2scan", forces=True),
            INPUT_FILE: T.FARMING.format(project=PROJECT, jobs=jobs),
        }

    def write_input(self, atoms: Atoms, directory: Path) -> None:
        """Write the inputs into ``directory`` after removing the outputs of an earlier run."""
        inputs = self.inputs(atoms)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in self._output_files():
            (directory / name).unlink(missing_ok=True)
        for project in (PROJECT, PBE_GUESS, DCDFT):
            for stale in directory.glob(f"{project}-RESTART.wfn*"):
                stale.unlink()
        for name, text in inputs.items():
            (directory / name).write_text(text)

    def arguments(self, directory: Path) -> list[str]:
        """``-i cp2k.inp -o cp2k.out`` (relative: the command runs in ``directory``)."""
        return ["-i", INPUT_FILE, "-o", OUTPUT_FILE]

    def truncation_radius(self, atoms: Atoms) -> float:
        """The truncated-Coulomb cutoff radius used for ``atoms``, Å."""
        if self.settings.truncation_radius is not None:
            return self.settings.truncation_radius
        return truncation_radius(np.asarray(atoms.cell), self.settings.truncation_margin)

    def _single_point(self, atoms: Atoms, project: str, xc: str, *, forces: bool) -> str:
        settings = self.settings
        dcdft = xc == "dc-r2scan"
        if dcdft:
            radius = self.truncation_radius(atoms)
            if radius > inscribed_radius(np.asarray(atoms.cell)):
                raise ValueError(
                    f"truncation radius {radius:.3f} Å exceeds the cell's inscribed-sphere radius "
                    f"{inscribed_radius(np.asarray(atoms.cell)):.3f} Å"
                )
            xc_section = T.XC_HF_TRUNCATED.format(
                eps_schwarz=_real(settings.eps_schwarz),
                cutoff_radius=f"{radius:.6f}",
                max_memory=settings.hfx_max_memory,
            )
        else:
            xc_section = T.XC_PBE
        stress = settings.stress and forces
        dft = T.DFT.format(
            basis_files="".join(T.BASIS_FILE.format(name=name) for name in settings.basis_files),
            potential_file=settings.potential_file,
            charge=settings.charge,
            multiplicity=settings.multiplicity,
            spin="    UKS\n" if settings.multiplicity != 1 else "",
            restart=T.WFN_RESTART.format(name=f"{PBE_GUESS}-RESTART.wfn") if dcdft else "",
            cutoff=f"{settings.cutoff:g}",
            rel_cutoff=f"{settings.rel_cutoff:g}",
            eps_default=_real(settings.eps_default),
            admm=T.ADMM if dcdft else "",
            scf_guess="RESTART" if dcdft else "ATOMIC",
            max_scf=settings.max_scf,
            eps_scf=_real(settings.eps_scf),
            xc=xc_section,
            energy_correction=T.ENERGY_CORRECTION_DCDFT_R2SCAN if dcdft else "",
        )
        force_eval = T.FORCE_EVAL.format(
            stress_keyword=T.STRESS_KEYWORD if stress else "",
            dft=dft,
            print=T.PRINT.format(stress=T.STRESS_PRINT if stress else "") if forces else "",
            subsys=T.SUBSYS.format(
                cell=self._cell(atoms), coord=self._coord(atoms), kinds=self._kinds(atoms, admm=dcdft)
            ),
        )
        run_type = "ENERGY_FORCE" if forces else "ENERGY"
        return T.GLOBAL.format(project=project, run_type=run_type) + force_eval

    def _cell(self, atoms: Atoms) -> str:
        cell = np.asarray(atoms.cell, dtype=float)
        inscribed_radius(cell)  # raises without a cell
        a, b, c = (" ".join(f"{x:.10f}" for x in vector) for vector in cell)
        return T.CELL_BODY.format(a=a, b=b, c=c)

    @staticmethod
    def _coord(atoms: Atoms) -> str:
        return "".join(
            f"      {symbol} {x:.10f} {y:.10f} {z:.10f}\n"
            for symbol, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)
        )

    def _kinds(self, atoms: Atoms, *, admm: bool) -> str:
        basis, potential, admm_basis = self.settings.families
        blocks = []
        for symbol in sorted(set(atoms.get_chemical_symbols())):
            q = self.settings.valence.get(symbol, VALENCE.get(symbol))
            if q is None:
                raise ValueError(
                    f"no pseudopotential valence known for {symbol}: give valence={{'{symbol}': q}} "
                    f"for {potential}-q<q> and {basis}-q<q>"
                )
            aux = T.AUX_FIT.format(basis=f"{admm_basis}-q{q}") if admm else ""
            blocks.append(
                T.KIND.format(symbol=symbol, basis=f"{basis}-q{q}", aux_fit=aux, potential=f"{potential}-q{q}")
            )
        return "".join(blocks)

    def _template_values(self, atoms: Atoms) -> dict[str, object]:
        settings = self.settings
        return {
            "project": PROJECT,
            "cell": self._cell(atoms),
            "coord": self._coord(atoms),
            "kinds": self._kinds(atoms, admm=False),
            "charge": settings.charge,
            "multiplicity": settings.multiplicity,
            "cutoff": f"{settings.cutoff:g}",
            "rel_cutoff": f"{settings.rel_cutoff:g}",
            "max_scf": settings.max_scf,
            "eps_scf": _real(settings.eps_scf),
            "natoms": len(atoms),
        }

    def _output_files(self) -> list[str]:
        if self.settings.method == "dc-r2scan":
            return [OUTPUT_FILE, f"{PBE_GUESS}.out", f"{DCDFT}.out"]
        return [OUTPUT_FILE]

    # -- results ------------------------------------------------------------------------------

    def read_result(self, atoms: Atoms, directory: Path, returncode: int) -> ReferenceResult:
        """Parse the outputs in ``directory``; every failure is a result (see module docstring)."""
        directory = Path(directory)
        main = directory / (f"{DCDFT}.out" if self.settings.method == "dc-r2scan" else OUTPUT_FILE)
        outputs = {path: _read(path) for path in [directory / name for name in self._output_files()]}
        aborted = [(path, parse_cp2k_output(text).abort) for path, text in outputs.items() if text]
        aborted = [(path, message) for path, message in aborted if message]
        if returncode != 0 or aborted:
            reason = f"cp2k exited with code {returncode}" if returncode != 0 else "cp2k aborted"
            if aborted:
                path, message = aborted[0]
                return self._failed(atoms, f"{reason}: {message}", path, outputs[path])
            existing = [path for path, text in outputs.items() if text]
            last = main if outputs[main] else (existing[-1] if existing else None)
            return self._failed(atoms, reason, last, outputs.get(last))
        text = outputs[main]
        if text is None:
            return self._failed(atoms, f"no output {main.name}", None, None)
        parsed = parse_cp2k_output(text)
        problem = self._problem(atoms, parsed)
        if problem:
            return self._failed(atoms, problem, main, text)
        labelled = atoms.copy()
        stress = None
        if parsed.stress_gpa is not None and (self.settings.stress or self.settings.method == "template"):
            sigma = -parsed.stress_gpa * units.GPa
            stress = np.array([sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]])
        labelled.calc = SinglePointCalculator(
            labelled,
            energy=parsed.energy_hartree * units.Hartree,
            forces=parsed.forces_hartree_per_bohr * (units.Hartree / units.Bohr),
            stress=stress,
        )
        if parsed.warnings is not None:
            labelled.info["cp2k_warnings"] = parsed.warnings
        if self.settings.method == "dc-r2scan" and outputs[directory / f"{PBE_GUESS}.out"]:
            guess = parse_cp2k_output(outputs[directory / f"{PBE_GUESS}.out"])
            labelled.info["cp2k_pbe_guess_converged"] = bool(guess.scf_converged)
        if parsed.scf_converged:
            status, message = ReferenceStatus.CONVERGED, ""
        else:
            status = ReferenceStatus.NOT_CONVERGED
            message = f"SCF not converged in {self.settings.max_scf} steps (EPS_SCF {_real(self.settings.eps_scf)})"
        labelled.info[REFERENCE_STATUS_KEY] = status.value
        return ReferenceResult(labelled, status, self.name, message)

    def _problem(self, atoms: Atoms, parsed: Cp2kOutput) -> str | None:
        if not parsed.ended:
            return "the output ends before 'PROGRAM ENDED' (killed or still running?)"
        if parsed.energy_hartree is None or not math.isfinite(parsed.energy_hartree):
            return "no finite total energy in the output"
        forces = parsed.forces_hartree_per_bohr
        if forces is None:
            return "no ATOMIC FORCES block in the output (&PRINT &FORCES ON missing?)"
        if forces.shape != (len(atoms), 3) or not np.isfinite(forces).all():
            return f"forces of shape {forces.shape} (expected ({len(atoms)}, 3)) or not finite"
        if self.settings.method == "dc-r2scan" and parsed.energy_correction_hartree is None:
            return "no DCDFT 'Energy Correction' in the output: the energy would be HF, not DC-r2SCAN"
        if self.settings.stress and self.settings.method != "template":
            if parsed.stress_gpa is None or not np.isfinite(parsed.stress_gpa).all():
                return "stress requested but no finite analytical stress tensor in the output"
        if parsed.scf_converged is None:
            return "no SCF convergence message in the output"
        return None

    def _failed(self, atoms: Atoms, reason: str, path: Path | None, text: str | None) -> ReferenceResult:
        message = reason
        if text:
            message += last_lines(text, _TAIL_LINES, path.name)
        bare = atoms.copy()
        bare.calc = None
        bare.info[REFERENCE_STATUS_KEY] = ReferenceStatus.FAILED.value
        return ReferenceResult(bare, ReferenceStatus.FAILED, self.name, message)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _real(value: float) -> str:
    """A real for CP2K's input (``1.0E-06``)."""
    return f"{value:.6E}"
