"""The systems of the science benchmarks: what differs between them, in one table.

A :class:`System` holds the system-specific facts only (starting structure, teacher, species,
teacher MD, frame counts, student hyperparameters); the benchmarks hold the code.

- ``water``: 16 H2O, GFN1-xTB (tblite) as teacher, NVT 300 K — the project's own study, the
  one CAGO's defaults were tuned on.
- ``copper``: 32-atom fcc Cu (2 × 2 × 2 cubic cells, a = 3.61 Å), ASE's EMT as teacher, NVT
  500 K — a metal CAGO was not tuned on; the settings below were fixed before any result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from ase import Atoms

from cagoflow.engines.md_settings import MDStage


@dataclass(frozen=True)
class Frames:
    """Structures wanted from the teacher MD: training pool, calibration frames, CAGO starts."""

    pool: int = 40
    calibration: int = 24
    starts: int = 8

    def items(self) -> list[tuple[str, int]]:
        return [("pool", self.pool), ("calibration", self.calibration), ("starts", self.starts)]


def _water(seed: int) -> Atoms:
    from cagoflow.structures import water_box

    return water_box(16, seed=seed)


def _copper(seed: int) -> Atoms:  # the perfect lattice; the MD's seeded velocities make the runs differ
    from ase.build import bulk

    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)


def _tblite():
    from cagoflow.engines.tblite import TbliteReference

    return TbliteReference(method="GFN1-xTB")


def _emt():
    from cagoflow.engines.ase_reference import AseCalculatorReference

    return AseCalculatorReference("ase.calculators.emt:EMT")


@dataclass(frozen=True)
class System:
    """One benchmark system.

    Attributes:
        name: the ``--system`` name.
        title: in words, for tables and plots ("16 H2O").
        build: seed → the starting structure of one teacher MD run.
        teacher: a fresh reference engine (``compute(atoms)`` labels, ``calculator()`` drives MD).
        teacher_name: the teacher in words.
        type_map: the students' species.
        md: the teacher MD of each of the three runs (pool, calibration, starts).
        frames: structures taken from those runs.
        rattles: the calibration frames are rattled by these in turn (Å), so that their errors
            span the range CAGO goes to.
        hyperparameters: DeePMD hyperparameters merged over the ``tiny`` preset.
    """

    name: str
    title: str
    build: Callable[[int], Atoms]
    teacher: Callable[[], Any]
    teacher_name: str
    type_map: tuple[str, ...]
    md: MDStage
    frames: Frames = Frames()
    rattles: tuple[float, ...] = (0.0, 0.02, 0.04, 0.06)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    def sized(self, frames: Frames | None = None, md_steps: int | None = None) -> "System":
        """The same system with other frame counts or teacher MD length."""
        md = self.md if md_steps is None else self.md.model_copy(update={"steps": md_steps})
        return replace(self, frames=frames or self.frames, md=MDStage.model_validate(md.model_dump()))


SYSTEMS: dict[str, System] = {
    "water": System(
        name="water",
        title="16 H2O",
        build=_water,
        teacher=_tblite,
        teacher_name="GFN1-xTB (tblite)",
        type_map=("H", "O"),
        md=MDStage(ensemble="nvt", temperature=300, steps=400, timestep=1.0, dump_interval=5, thermostat_damping=50),
        hyperparameters={"model": {"descriptor": {"rcut": 4.5, "rcut_smth": 0.5}}, "learning_rate": {"start_lr": 0.01, "stop_lr": 0.001}},
    ),
    "copper": System(
        name="copper",
        title="32 Cu (fcc)",
        build=_copper,
        teacher=_emt,
        teacher_name="EMT (ASE)",
        type_map=("Cu",),
        md=MDStage(ensemble="nvt", temperature=500, steps=400, timestep=2.0, dump_interval=5, thermostat_damping=100),
        # rcut 5 Å: the first three shells (2.55, 3.61, 4.42 Å) of fcc Cu, smoothed from 0.5 Å as for water
        hyperparameters={"model": {"descriptor": {"rcut": 5.0, "rcut_smth": 0.5}}, "learning_rate": {"start_lr": 0.01, "stop_lr": 0.001}},
    ),
}
