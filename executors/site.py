"""The site schema: where a campaign runs, validated on load.

A *site* file says which executors exist (a thread pool, local HTEX, HTEX on a SLURM
partition, Parsl's MPIExecutor), which stage runs on which (the stages come from
:mod:`cagoflow.stages`), and how this machine starts each external program (command, module
setup, environment, MPI ranks, threads). :mod:`cagoflow.executors.parsl_config` turns it into a
Parsl ``Config``; :mod:`cagoflow.apps.commands` into shell lines.

Units: GB, s.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

from cagoflow.inputs import FieldError, InputModel, Name, read_yaml_mapping, validate_input
from cagoflow.stages import MPI_STAGES, STAGE_TABLE, STAGES, site_stage

__all__ = [
    "EngineCommand", "EnginesConfig", "ProgramCommand", "ExecutorConfig", "SiteConfig", "SlurmProviderConfig", "StageMap",
    "default_site", "load_site", "machine_cores",
]  # fmt: skip


_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
#: Workers of an executor of kind ``threads`` without ``max_workers`` (Parsl's ``max_threads`` default).
PARSL_DEFAULT_THREADS = 2


def machine_cores() -> int:
    """Cores this process may run on: its CPU affinity (the CPU count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


class SlurmProviderConfig(InputModel):
    """A SLURM partition that blocks of workers are submitted to."""

    partition: str | None = Field(None, description="SLURM partition (default: the cluster's default)")
    account: str | None = Field(None, description="account to charge")
    qos: str | None = Field(None, description="quality of service")
    walltime: str = Field("01:00:00", description="wall time per block, HH:MM:SS (hours may exceed 24)")
    nodes_per_block: int = Field(1, ge=1, description="nodes per job")
    cores_per_node: int | None = Field(None, ge=1, description="cores to request per node (default: the partition's)")
    gpus_per_node: int = Field(0, ge=0, description="GPUs to request per node")
    mem_per_node: float | None = Field(None, gt=0, description="memory per node, GB")
    init_blocks: int = Field(1, ge=0, description="jobs submitted at start")
    min_blocks: int = Field(0, ge=0, description="jobs kept while idle")
    max_blocks: int = Field(1, ge=1, description="most jobs at once")
    scheduler_options: str = Field("", description="extra '#SBATCH ...' lines")
    worker_init: str = Field("", description="shell lines run in the job before workers start (module load, venv)")
    launcher: Literal["srun", "single_node", "simple"] | None = Field(
        None, description="how workers start in a job (default: single_node for htex_slurm, simple for mpi)"
    )
    exclusive: bool = Field(True, description="request whole nodes (false on a shared or one-node test cluster)")
    cmd_timeout: int = Field(30, ge=1, description="timeout of sbatch/squeue/scancel calls, s")
    cmd_retries: int = Field(
        3, ge=0, description="retries of a scheduler call that timed out or could not reach the controller (backoff 2, 4, 8 s, ...)"
    )

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime_format(cls, value: Any) -> Any:
        match = _WALLTIME.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"expected a wall time as 'HH:MM:SS', found {value!r}")
        if not any(int(part) for part in match.groups()):
            raise ValueError("the wall time must be longer than 00:00:00")
        return value

    @model_validator(mode="after")
    def _blocks(self) -> SlurmProviderConfig:
        if self.min_blocks > self.max_blocks:
            raise FieldError(f"min_blocks ({self.min_blocks}) exceeds max_blocks ({self.max_blocks})", "min_blocks")
        if self.init_blocks > self.max_blocks:
            raise FieldError(f"init_blocks ({self.init_blocks}) exceeds max_blocks ({self.max_blocks})", "init_blocks")
        return self

    @property
    def walltime_seconds(self) -> int:
        """Wall time per block, s."""
        hours, minutes, seconds = (int(part) for part in self.walltime.split(":"))
        return 3600 * hours + 60 * minutes + seconds


class ExecutorConfig(InputModel):
    """One Parsl executor: a pool of workers on this machine or on a SLURM partition."""

    kind: Literal["threads", "htex_local", "htex_slurm", "mpi"] = Field(
        "threads", description="thread pool, local HighThroughputExecutor, HTEX on SLURM, or MPIExecutor"
    )
    max_workers: int | None = Field(
        None, ge=1, description="workers (threads; per node for HTEX; per block for mpi); default: Parsl's"
    )
    cores_per_worker: float = Field(1.0, gt=0, description="cores per HTEX worker")
    available_accelerators: int | list[str] = Field(
        0,
        description="accelerators: a count or device ids; one HTEX worker per entry, pinned to it "
        "(repeat an id to pack several workers on one GPU: small models do not fill one)",
    )
    interface: str | None = Field(None, description="network interface workers reach the interchange on (e.g. 'ib0')")
    worker_init: str = Field(
        "", description="shell lines run before local HTEX/mpi workers start (with SLURM: provider.worker_init)"
    )
    mpi_launcher: Literal["srun", "mpiexec", "aprun"] = Field("srun", description="mpi: launcher in $PARSL_MPI_PREFIX")
    provider: SlurmProviderConfig | None = Field(
        None, description="SLURM settings (htex_slurm: required; mpi: optional)"
    )

    @field_validator("available_accelerators", mode="before")
    @classmethod
    def _accelerators(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, list) and all(type(item) in (int, str) for item in value):
            return [str(item) for item in value]
        raise ValueError(f"expected a count ≥ 0 or a list of device ids, found {value!r}")

    @model_validator(mode="after")
    def _kind_fields(self) -> ExecutorConfig:
        if self.kind == "htex_slurm" and self.provider is None:
            raise FieldError("kind 'htex_slurm' needs a provider block (partition, walltime, ...)", "provider")
        if self.kind in ("threads", "htex_local") and self.provider is not None:
            raise FieldError(f"kind '{self.kind}' runs on this machine and takes no provider block", "provider")
        if self.kind == "threads" and self.n_accelerators:
            raise FieldError(
                "kind 'threads' cannot pin accelerators; use htex_local or htex_slurm", "available_accelerators"
            )
        if self.kind == "threads" and self.worker_init:
            raise FieldError("kind 'threads' starts no workers, so worker_init would never run", "worker_init")
        if self.provider is None:
            return self
        if self.worker_init:
            raise FieldError("with a provider block, put worker_init into the provider", "worker_init")
        if self.kind == "mpi" and self.launcher != "simple":
            raise FieldError("kind 'mpi' needs launcher 'simple' (Parsl's MPIExecutor)", "provider", "launcher")
        if self.kind == "htex_slurm" and self.provider.nodes_per_block > 1 and self.launcher != "srun":
            raise FieldError(
                f"nodes_per_block {self.provider.nodes_per_block} with launcher '{self.launcher}' starts workers on "
                "the first node only; use launcher 'srun'",
                "provider", "launcher",
            )  # fmt: skip
        gpus = self.provider.gpus_per_node
        if gpus and self.n_devices > gpus:
            raise FieldError(
                f"{self.n_devices} accelerators per node but the job requests gpus_per_node {gpus}",
                "available_accelerators",
            )
        return self

    @property
    def n_accelerators(self) -> int:
        """Workers pinned to accelerators: one per entry (a device id given twice: two workers share it)."""
        value = self.available_accelerators
        return len(value) if isinstance(value, list) else value

    @property
    def n_devices(self) -> int:
        """Distinct accelerators the workers are pinned to."""
        value = self.available_accelerators
        return len(set(value)) if isinstance(value, list) else value

    @property
    def launcher(self) -> str | None:
        """The provider's launcher with the kind's default filled in (None without a provider)."""
        if self.provider is None:
            return None
        return self.provider.launcher or ("simple" if self.kind == "mpi" else "single_node")

    def worker_cores(self, machine: int | None = None) -> int | None:
        """Cores of one worker's share as this site-config gives them (None: it does not say).

        ``machine`` is the number of cores of this machine (default: :func:`machine_cores`).

        - ``threads``: machine / ``max_workers`` (Parsl's default: 2 threads).
        - ``htex_local``, ``htex_slurm``: a node's cores (this machine's; on SLURM
          ``provider.cores_per_node``) over the workers Parsl starts per node, min(``max_workers``,
          cores / ``cores_per_worker``, accelerators); with ``cores_per_node`` unknown,
          ``cores_per_worker``.
        - ``mpi``: a node's cores for the ranks of one calculation there: ``provider.cores_per_node``
          (None without it), or machine / ``max_workers`` without a provider block.
        """
        machine = machine_cores() if machine is None else machine
        if self.kind == "threads":
            return machine // (self.max_workers or PARSL_DEFAULT_THREADS)
        if self.kind == "mpi":
            return machine // (self.max_workers or 1) if self.provider is None else self.provider.cores_per_node
        node = machine if self.provider is None else self.provider.cores_per_node
        if node is None:
            return int(self.cores_per_worker)
        limits = (math.floor(node / self.cores_per_worker), self.max_workers, self.n_accelerators or None)
        return node // max(1, min(limit for limit in limits if limit is not None))

    def task_threads(self, ranks_per_node: int = 1, machine: int | None = None) -> int:
        """OpenMP/torch threads of one task (per MPI rank): :meth:`worker_cores` / ``ranks_per_node``,
        at least 1 (1 where the cores are unknown: the ranks fill the node)."""
        cores = self.worker_cores(machine)
        return 1 if cores is None else max(1, cores // ranks_per_node)


#: Executor label per workflow stage (one field per stage of :data:`cagoflow.stages.STAGES`);
#: ``default`` covers stages not named.
StageMap = create_model(
    "StageMap",
    __base__=InputModel,
    __doc__="Executor label per workflow stage; ``default`` covers stages not named.",
    default=(str | None, Field(None, description="executor of every stage not named here")),
    **{stage.name: (str | None, Field(None, description=stage.description)) for stage in STAGE_TABLE if stage.runs_on is None},
)


class EngineCommand(InputModel):
    """How this site starts an external program (the engine's input comes from cagoflow's template)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    command: str = Field(..., min_length=1, description="command line, e.g. 'srun -n 16 cp2k.psmp' or 'lmp'")
    ranks: int = Field(1, ge=1, description="MPI ranks")
    threads: int | None = Field(
        None, ge=1, description="OpenMP threads per rank (null: the cores of the executor's worker / ranks per node)"
    )
    setup: str = Field("", description="shell lines run first (module load ..., source ...)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables (win over derived ones)")

    @property
    def ranks_per_node(self) -> int:
        """MPI ranks of one run that share a node."""
        return self.ranks


class ProgramCommand(EngineCommand):
    """How this site starts an MPI program of the reference stage (CP2K, pw.x)."""

    omp_proc_bind: Literal["close", "spread", "master", "primary", "true", "false"] | None = Field(
        "close", description="OMP_PROC_BIND (null: leave unset)"
    )
    cpu_bind: str | None = Field("cores", description="srun --cpu-bind value (null: leave unset)")
    nodes: int = Field(1, ge=1, description="nodes per calculation (on an executor of kind 'mpi')")

    @model_validator(mode="after")
    def _ranks_fill_nodes(self) -> ProgramCommand:
        if self.ranks % self.nodes:
            raise FieldError(f"ranks {self.ranks} do not divide evenly over nodes {self.nodes}", "ranks")
        return self

    @property
    def ranks_per_node(self) -> int:
        """MPI ranks of one calculation that share a node."""
        return self.ranks // self.nodes


def _site_programs() -> dict[str, tuple[str, type[EngineCommand], str]]:
    """Every program a site starts: engine name → (program, settings model, description), from
    the registries of reference programs and of MLIP backends (one source for each fact)."""
    from cagoflow.backends import BACKEND_PROGRAMS
    from cagoflow.engines import REFERENCE_PROGRAMS

    programs = {name: (p.program, ProgramCommand, p.description) for name, p in REFERENCE_PROGRAMS.items()}
    programs["lammps"] = ("lmp", EngineCommand, "LAMMPS (MD)")
    programs.update({name: (program, EngineCommand, description) for name, (program, description) in BACKEND_PROGRAMS.items()})
    return programs


#: Engine name → (program's usual name, settings model, description): the site's ``engines`` block.
SITE_PROGRAMS: dict[str, tuple[str, type[EngineCommand], str]] = _site_programs()


class _EnginesBase(InputModel):
    @model_validator(mode="before")
    @classmethod
    def _default_commands(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        filled = dict(data)
        for engine, (program, _, _) in SITE_PROGRAMS.items():
            entry = filled.get(engine)
            if isinstance(entry, Mapping) and "command" not in entry:
                filled[engine] = {**entry, "command": program}
        return filled


EnginesConfig = create_model(
    "EnginesConfig",
    __base__=_EnginesBase,
    __doc__="Commands of the external engines on this site (defaults: the programs on PATH).",
    **{
        engine: (model, Field(model(command=program), description=description))
        for engine, (program, model, description) in SITE_PROGRAMS.items()
    },
)


class SiteConfig(InputModel):
    """Where a campaign runs: executors, the stage → executor map, engine commands."""

    name: Name = Field("site", description="site name")
    executors: dict[Name, ExecutorConfig] = Field(..., description="mapping executor label → executor")
    stages: StageMap = Field(StageMap(), description="executor per stage (omitted: all on the first executor)")
    engines: EnginesConfig = Field(EnginesConfig(), description="engine commands")
    retries: int = Field(0, ge=0, description="times Parsl retries a failed task")
    monitoring: bool = Field(
        False, description="Parsl's monitoring: every task, its states and resource use in <workdir>/monitoring.db (parsl-visualize)"
    )

    @field_validator("executors")
    @classmethod
    def _some_executors(cls, value: dict[str, ExecutorConfig]) -> dict[str, ExecutorConfig]:
        if not value:
            raise ValueError("a site must define at least one executor (found an empty mapping)")
        return value

    @model_validator(mode="after")
    def _stages_known(self) -> SiteConfig:
        labels = list(self.executors)
        for key in ("default", *STAGES):
            label = getattr(self.stages, key)
            if label is not None and label not in self.executors:
                suggestion = difflib.get_close_matches(label, labels, n=1)
                hint = f" (did you mean '{suggestion[0]}'?)" if suggestion else ""
                raise FieldError(
                    f"stage '{key}' is mapped to executor '{label}', which is not defined{hint}; "
                    f"defined executors: {', '.join(labels)}",
                    "stages", key,
                )  # fmt: skip
        named = self.stages.model_fields_set
        missing = [stage for stage in STAGES if getattr(self.stages, stage) is None]
        if named and self.stages.default is None and missing:
            raise FieldError(
                f"stages not mapped to an executor: {', '.join(missing)} (map them, or add 'default: LABEL')", "stages"
            )
        for stage in STAGES:
            label = self.executor_for(stage)
            if self.executors[label].kind == "mpi" and stage not in MPI_STAGES:
                raise FieldError(
                    f"stage '{stage}' runs Python on executor '{label}' of kind 'mpi', whose tasks are MPI programs; "
                    f"only {', '.join(MPI_STAGES)} may go there (map the others to a threads or htex executor)",
                    "stages", stage if getattr(self.stages, stage) is not None else "default",
                )  # fmt: skip
        if all(executor.kind == "mpi" for executor in self.executors.values()):
            raise FieldError("every executor is of kind 'mpi'; the Python stages need a threads or htex one", "executors")
        return self

    def executor_for(self, stage: str) -> str:
        """Label of the executor that runs ``stage`` (a stage the site does not map: that of
        the stage it runs on, :func:`cagoflow.stages.site_stage`)."""
        stage = site_stage(stage)
        return getattr(self.stages, stage) or self.stages.default or next(iter(self.executors))

    @property
    def stage_executors(self) -> dict[str, str]:
        """Mapping stage → executor label, every stage resolved."""
        return {stage: self.executor_for(stage) for stage in STAGES}

    def python_executor_for(self, stage: str) -> str:
        """Label of the executor for the Python parts of ``stage`` (preparing inputs, parsing
        outputs, in-process engines): the stage's own executor, or — when that is of kind
        ``mpi``, which runs MPI programs only — the default executor (else the first non-mpi one)."""
        label = self.executor_for(stage)
        if self.executors[label].kind != "mpi":
            return label
        default = self.stages.default
        if default is not None and self.executors[default].kind != "mpi":
            return default
        return next(name for name, executor in self.executors.items() if executor.kind != "mpi")

    def is_mpi(self, stage: str) -> bool:
        """Whether ``stage``'s programs start through Parsl's MPIExecutor (``$PARSL_MPI_PREFIX``)."""
        return self.executors[self.executor_for(stage)].kind == "mpi"

    def program_threads(self, stage: str, engine: EngineCommand | None = None) -> int:
        """OpenMP threads per rank of an external program of ``stage``: the engine's ``threads``,
        else the cores of one worker of the stage's executor / the engine's ranks per node
        (:meth:`ExecutorConfig.task_threads`; a program that is no engine: one rank)."""
        if engine is not None and engine.threads is not None:
            return engine.threads
        ranks = 1 if engine is None else engine.ranks_per_node
        return self.executors[self.executor_for(stage)].task_threads(ranks)

    def python_threads(self, stage: str) -> int:
        """Threads of an in-process task of ``stage`` (CAGO, ASE MD, tblite, ...): the cores of
        one worker of the executor that runs its Python (:meth:`python_executor_for`)."""
        return self.executors[self.python_executor_for(stage)].task_threads()


def default_site() -> SiteConfig:
    """The site used when none is given: one thread pool of 2 workers for every stage
    (the same as ``site-configs/local-threads.yaml``)."""
    return SiteConfig(name="local-threads", executors={"local": ExecutorConfig(kind="threads", max_workers=2)})


def load_site(path: str | Path) -> SiteConfig:
    """Read and validate a site YAML file; problems raise one :class:`InputError`."""
    path = Path(path)
    data, text = read_yaml_mapping(path, "site", "define its executors", "executors")
    return validate_input(SiteConfig, data, file=path, text=text, context={"base_dir": path.resolve().parent})
