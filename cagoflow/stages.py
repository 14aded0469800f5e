"""The workflow's stages, written once.

Every list of stages elsewhere is derived from :data:`STAGE_TABLE`: the site-config's
stage → executor map (:class:`cagoflow.executors.site.StageMap`), the stages allowed on MPI
executors, the Parsl apps of each stage (:mod:`cagoflow.apps`) and the columns of
``cagoflow status`` (:mod:`cagoflow.workflows.status`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One stage of an iteration.

    Attributes:
        name: the stage's name, as in the work directory (``iter-000/<name>/``) and the site-config.
        description: what it does and what hardware it wants (the site-config's documentation).
        head: short column head of ``cagoflow status``.
        runs_on: a stage that is not mapped in the site-config runs on the executor of this one
            (None: the site maps it).
        mpi: its programs may run on an executor of kind ``mpi`` (they are MPI programs).
        programs: its tasks may start external programs (trainers, LAMMPS, CP2K) through the
            site's commands: prepare → program (a bash app ``run_<name>``) → collect.
    """

    name: str
    description: str
    head: str = ""
    runs_on: str | None = None
    mpi: bool = False
    programs: bool = False

    @property
    def column(self) -> str:
        """The status column head (the name where no short head is given)."""
        return self.head or self.name


#: The stages, in the order an iteration runs them.
STAGE_TABLE: tuple[Stage, ...] = (
    Stage("initial", "labelling the starting structures before iteration 0", head="init", runs_on="sample"),
    Stage("split", "test set and per-member bootstrap splits of the dataset", runs_on="merge"),
    Stage("train", "training the committee (GPU)", programs=True),
    Stage("calibrate", "calibration on the test set", head="calib"),
    Stage("evaluate", "held-out errors and production MD per member (GPU)", head="eval"),
    Stage("md", "committee MD (GPU)", programs=True),
    Stage("sample", "picking frames"),
    Stage("cago", "CAGO optimisation (GPU)"),
    Stage("prefilter", "filters before the reference", head="pre"),
    Stage("reference", "reference calculations (CPU partition)", head="ref", mpi=True, programs=True),
    Stage("postfilter", "filters after the reference", head="post"),
    Stage("merge", "appending to the dataset"),
)

#: Every stage by name.
STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGE_TABLE}
#: Stages in the order an iteration runs them (as they appear in the work directory).
STAGE_ORDER: tuple[str, ...] = tuple(stage.name for stage in STAGE_TABLE)
#: Stages the site-config maps to executors.
STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGE_TABLE if stage.runs_on is None)
#: Stages whose tasks may start external programs (bash apps ``run_<stage>``).
PROGRAM_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGE_TABLE if stage.programs)
#: Stages that may run on an executor of kind ``mpi``: those that start MPI programs (CP2K).
MPI_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGE_TABLE if stage.mpi)


def site_stage(stage: str) -> str:
    """The stage whose executor runs ``stage`` (itself when the site maps it)."""
    if stage not in STAGE_BY_NAME:
        raise ValueError(f"unknown stage '{stage}'; stages: {', '.join(STAGE_ORDER)}")
    return STAGE_BY_NAME[stage].runs_on or stage


# --- task names: made here only, so the driver, the task bodies and ``status`` agree ----------


def structure_task(system: str, index: int, kind: str = "") -> str:
    """One structure's task: its CAGO walk and its reference share the name ("water-003"), so the
    post-filter pairs them; ``kind`` names the labels of other structures ("water-init-003",
    "water-benchmark-003")."""
    return f"{system}-{kind + '-' if kind else ''}{index:03d}"


def md_task(system: str, replica: int) -> str:
    """One MD replica of a system ("water-00")."""
    return f"{system}-{replica:02d}"


def member_task(member: int) -> str:
    """One committee member's training ("member-00")."""
    return f"member-{member:02d}"


def cago_slot(system: str, index: int) -> str:
    """The key of a CAGO start in the calibration's member-subset table ("water/3")."""
    return f"{system}/{index}"


def task_system(task: str) -> str:
    """The system of a task named by :func:`structure_task` or :func:`md_task` ("water-003",
    "water-init-003", "water-01" → "water")."""
    system = task.rsplit("-", 1)[0]
    for kind in ("init", "benchmark"):
        system = system.removesuffix(f"-{kind}")
    return system
