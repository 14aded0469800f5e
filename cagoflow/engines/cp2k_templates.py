"""CP2K input text, one template per section (filled with :meth:`str.format` by ``cp2k.py``).

Only text lives here; which sections a method uses, and every number in them, is decided in
:mod:`cagoflow.engines.cp2k`. Keywords follow the input reference of CP2K 2023.1
(``cp2k.psmp --xml``).
"""

from __future__ import annotations

#: One single-point calculation: ``run_type`` is ENERGY (the PBE guess) or ENERGY_FORCE.
GLOBAL = """\
&GLOBAL
  PROJECT {project}
  RUN_TYPE {run_type}
  PRINT_LEVEL LOW
&END GLOBAL
"""

#: Two inputs run one after the other by one CP2K process (one group: every rank runs both).
FARMING = """\
&GLOBAL
  PROJECT {project}
  PROGRAM_NAME FARMING
  RUN_TYPE NONE
&END GLOBAL
&FARMING
  NGROUPS 1
{jobs}&END FARMING
"""

FARMING_JOB = """\
  &JOB
    INPUT_FILE_NAME {input}
    OUTPUT_FILE_NAME {output}
  &END JOB
"""

#: ``stress_keyword``: "" or "  STRESS_TENSOR ANALYTICAL\n"; ``dft``: the &DFT section;
#: ``print``: the &PRINT section; ``subsys``: the &SUBSYS section.
FORCE_EVAL = """\
&FORCE_EVAL
  METHOD QUICKSTEP
{stress_keyword}{dft}{print}{subsys}&END FORCE_EVAL
"""

STRESS_KEYWORD = "  STRESS_TENSOR ANALYTICAL\n"

#: ``basis_files``: BASIS_SET_FILE_NAME lines; ``spin``: "" or "    UKS\n"; ``restart``: ""
#: or a WFN_RESTART_FILE_NAME line; ``admm``, ``xc``, ``energy_correction``: sections or "".
DFT = """\
  &DFT
{basis_files}    POTENTIAL_FILE_NAME {potential_file}
    CHARGE {charge}
    MULTIPLICITY {multiplicity}
{spin}{restart}    &MGRID
      CUTOFF {cutoff}
      REL_CUTOFF {rel_cutoff}
    &END MGRID
    &QS
      EPS_DEFAULT {eps_default}
    &END QS
{admm}    &SCF
      SCF_GUESS {scf_guess}
      MAX_SCF {max_scf}
      EPS_SCF {eps_scf}
      &OT
        MINIMIZER DIIS
        PRECONDITIONER FULL_SINGLE_INVERSE
      &END OT
    &END SCF
{xc}{energy_correction}  &END DFT
"""

BASIS_FILE = "    BASIS_SET_FILE_NAME {name}\n"

WFN_RESTART = "    WFN_RESTART_FILE_NAME {name}\n"

XC_PBE = """\
    &XC
      &XC_FUNCTIONAL PBE
      &END XC_FUNCTIONAL
    &END XC
"""

#: Hartree-Fock exchange with the truncated Coulomb operator, no semi-local XC.
XC_HF_TRUNCATED = """\
    &XC
      &XC_FUNCTIONAL NONE
      &END XC_FUNCTIONAL
      &HF
        FRACTION 1.0
        &SCREENING
          EPS_SCHWARZ {eps_schwarz}
          SCREEN_ON_INITIAL_P FALSE
        &END SCREENING
        &INTERACTION_POTENTIAL
          POTENTIAL_TYPE TRUNCATED
          CUTOFF_RADIUS {cutoff_radius}
        &END INTERACTION_POTENTIAL
        &MEMORY
          MAX_MEMORY {max_memory}
        &END MEMORY
      &END HF
    &END XC
"""

#: Auxiliary density matrix method for the exchange (AUX_FIT basis in every &KIND).
ADMM = """\
    &AUXILIARY_DENSITY_MATRIX_METHOD
      METHOD BASIS_PROJECTION
      ADMM_PURIFICATION_METHOD NONE
      EXCH_CORRECTION_FUNC PBEX
    &END AUXILIARY_DENSITY_MATRIX_METHOD
"""

#: Density-corrected DFT: r²SCAN evaluated on the density of the SCF above (HF).
ENERGY_CORRECTION_DCDFT_R2SCAN = """\
    &ENERGY_CORRECTION TRUE
      ENERGY_FUNCTIONAL DCDFT
      &XC
        &XC_FUNCTIONAL
          &MGGA_X_R2SCAN
          &END MGGA_X_R2SCAN
          &MGGA_C_R2SCAN
          &END MGGA_C_R2SCAN
        &END XC_FUNCTIONAL
      &END XC
    &END ENERGY_CORRECTION
"""

#: ``stress``: "" or STRESS_PRINT.
PRINT = """\
  &PRINT
    &FORCES ON
    &END FORCES
{stress}  &END PRINT
"""

STRESS_PRINT = """\
    &STRESS_TENSOR ON
    &END STRESS_TENSOR
"""

#: ``cell``: CELL_BODY; ``coord``: one "symbol x y z" line per atom (Å); ``kinds``: KIND blocks.
SUBSYS = """\
  &SUBSYS
    &CELL
{cell}    &END CELL
    &COORD
{coord}    &END COORD
{kinds}  &END SUBSYS
"""

#: Cell vectors in Å; CP2K treats the structure as periodic in all three directions.
CELL_BODY = """\
      A {a}
      B {b}
      C {c}
      PERIODIC XYZ
"""

#: ``aux_fit``: "" or an AUX_FIT basis line.
KIND = """\
    &KIND {symbol}
      BASIS_SET {basis}
{aux_fit}      POTENTIAL {potential}
    &END KIND
"""

AUX_FIT = "      BASIS_SET AUX_FIT {basis}\n"
