"""Shell lines for external programs: the site's command, environment, time limit, lock and log.

An engine (a trainer, CP2K, LAMMPS) names its program by its usual name (``dp``,
``nequip-train``, ``cp2k.psmp``, ``lmp``); the site-config says how this machine starts it
(``srun -n 16 cp2k.psmp``, module loads, OpenMP threads and binding). Every program runs in
its task directory under ``flock`` (a program left running by a killed driver finishes before
a new one starts there), under a time limit derived from the block's walltime, with its output
in a log file, its exit status in ``exit-status`` — a failure is read back as data — and its
wall time in ``program-seconds`` (what the task's record reports as its cost).
Every program gets the threads of its worker's share of cores
(:meth:`~cagoflow.executors.site.SiteConfig.program_threads`) through :func:`thread_environment`, so
trainers started side by side do not each spin on every core.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from cagoflow.engines.process import find_program
from cagoflow.executors.site import EngineCommand, SiteConfig

#: Part of a block's walltime kept free for writing results after a program's time limit, s.
WALLTIME_MARGIN = 120
#: A program is not started in a SLURM job with less time left than this, s: its task goes back
#: to Parsl (exit status NOT_STARTED) to be retried in a fresh block.
MIN_TIME_LEFT = 300
#: Exit status of a task whose programs were not started for lack of walltime (EX_TEMPFAIL).
NOT_STARTED = 75
#: File of a task directory holding its programs' wall time, s.
PROGRAM_SECONDS = "program-seconds"

#: Shell lines that set $limit: the seconds the programs may run, from the time the SLURM job has
#: left when inside one (squeue %L: [days-]hours:minutes:seconds), else from the site-config.
_LIMIT_PRELUDE = """limit={static}
if [ -n "${{SLURM_JOB_ID:-}}" ] && command -v squeue > /dev/null; then
  left=$(squeue -h -j "$SLURM_JOB_ID" -o %L 2> /dev/null)
  case "$left" in
    *[0-9]:[0-9]*)
      seconds=$(echo "$left" | awk -F'[-:]' '{{s=$NF+60*$(NF-1); if (NF>=3) s+=3600*$(NF-2); if (NF>=4) s+=86400*$(NF-3); print s}}')
      if [ "$seconds" -lt {minimum} ]; then echo {not_started} > exit-status; exit 0; fi
      limit=$((seconds - {margin}));;
  esac
fi
"""


#: Environment variables that set a program's threads: OpenMP, MKL and OpenBLAS, and DeePMD-kit's
#: torch intra-op threads (its inter-op threads are 1: DeePMD asks intra × inter ≤ cores).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS")
#: Most DataLoader worker processes of a DeePMD-kit trainer (``NUM_WORKERS``, read by
#: deepmd.pt.utils.env; its own default is min(4, cores of the machine), and its trainer wants at least 1).
DEEPMD_MAX_LOADERS = 4


def thread_environment(threads: int, program: str = "") -> dict[str, str]:
    """Environment variables that run ``program`` (or in-process engines) on ``threads`` threads."""
    environment = {name: str(threads) for name in THREAD_VARIABLES}
    environment["DP_INTER_OP_PARALLELISM_THREADS"] = "1"
    if Path(program).name == "dp":
        environment["NUM_WORKERS"] = str(min(DEEPMD_MAX_LOADERS, threads))
    return environment


def site_engine(site: SiteConfig, program: str) -> EngineCommand | None:
    """The site's settings for a program, by the program's usual name (or a path to it)."""
    from cagoflow.executors.site import SITE_PROGRAMS

    engines = {usual: name for name, (usual, _, _) in SITE_PROGRAMS.items()}
    name = engines.get(Path(program).name)
    return None if name is None else getattr(site.engines, name)


def time_limit(site: SiteConfig, stage: str) -> int | None:
    """Seconds a program of ``stage`` may run: the block walltime less a margin (None: no limit)."""
    executor = site.executors[site.executor_for(stage)]
    provider = executor.provider
    if provider is None:
        return None
    return max(60, provider.walltime_seconds - WALLTIME_MARGIN)


def resource_specification(site: SiteConfig, stage: str, program: str) -> dict[str, int | str] | None:
    """Parsl's ``parsl_resource_specification`` for a program of ``stage`` on an executor of kind
    ``mpi`` (nodes and ranks per calculation from the site's engine settings, srun's CPU binding
    as launcher options); None on every other executor, which takes none."""
    if not site.is_mpi(stage):
        return None
    engine = site_engine(site, program)
    nodes = getattr(engine, "nodes", 1)
    ranks = engine.ranks if engine is not None else 1
    specification: dict[str, int | str] = {"num_nodes": nodes, "num_ranks": ranks, "ranks_per_node": ranks // nodes}
    executor = site.executors[site.executor_for(stage)]
    cpu_bind = getattr(engine, "cpu_bind", None)
    if executor.mpi_launcher == "srun" and cpu_bind:
        specification["launcher_options"] = f"--cpu-bind={cpu_bind}"
    return specification


def program_line(argv: Sequence[str], site: SiteConfig, stage: str, limited: bool) -> str:
    """One program of ``stage`` as the site starts it: its command, setup and environment (the
    thread variables of :func:`thread_environment` for the stage's share, then the site's
    ``env``, which wins), and, when ``limited``, the time limit of the shell variable ``$limit``.
    On an executor of kind ``mpi`` the program starts behind ``$PARSL_MPI_PREFIX`` unless the
    site's command already names it."""
    engine = site_engine(site, argv[0])
    line = shlex.join(argv)
    environment = thread_environment(site.program_threads(stage, engine), argv[0])
    setup = ""
    if engine is not None:  # the site's command line is shell text: $PARSL_MPI_PREFIX and the like expand
        launcher = engine.command.strip()
        if launcher == Path(argv[0]).name:  # the default command: keep the program as found (a path)
            launcher = shlex.quote(argv[0])
        if site.is_mpi(stage) and "PARSL_MPI_PREFIX" not in launcher:
            launcher = f"$PARSL_MPI_PREFIX {launcher}"
        elif launcher.startswith("srun ") and getattr(engine, "cpu_bind", None):
            launcher = f"srun --cpu-bind={engine.cpu_bind} {launcher[5:]}"
        line = f"{launcher} {shlex.join(argv[1:])}".strip()
        if getattr(engine, "omp_proc_bind", None):
            environment["OMP_PROC_BIND"] = engine.omp_proc_bind
        environment.update(engine.env)
        setup = engine.setup.strip()
    if limited:
        line = f'timeout --kill-after=30 "$limit" {line}'
    line = "env " + " ".join(f"{key}={shlex.quote(value)}" for key, value in environment.items()) + " " + line
    return f"{setup}\n{line}" if setup else line


def site_program(site: SiteConfig, stage: str, program: str) -> tuple[str, ...]:
    """A command prefix that starts ``program`` as the site does for ``stage`` (setup, environment,
    command), to which arguments are appended: ``sh -c '<line> "$@"' <program> ARGS...``."""
    return ("sh", "-c", program_line([find_program(program)], site, stage, limited=False) + ' "$@"', program)


def shell_command(directory: Path, commands: Sequence[Sequence[str]], site: SiteConfig, stage: str, log: str) -> str:
    """The whole shell of a task: cd, the time check, lock, the programs in order, log, exit status."""
    limit = time_limit(site, stage)
    script = " && ".join(f"{{ {program_line(argv, site, stage, limit is not None)}; }}" for argv in commands)
    prelude = ""
    if limit is not None:
        prelude = _LIMIT_PRELUDE.format(static=limit, minimum=MIN_TIME_LEFT, not_started=NOT_STARTED, margin=WALLTIME_MARGIN)
    return (
        f"cd {shlex.quote(str(directory))} || exit 1\n{prelude}started=$(date +%s.%N)\n"
        f'limit=${{limit:-0}} flock .lock sh -c {shlex.quote(script)} > {shlex.quote(log)} 2>&1; echo $? > exit-status\n'
        f'awk -v start="$started" -v end="$(date +%s.%N)" \'BEGIN {{ print end - start }}\' > {PROGRAM_SECONDS}'
    )


class BlockEnding(RuntimeError):
    """A task's programs were not started: its SLURM job had too little time left (retried by Parsl)."""


def check_started(directory: Path) -> int:
    """The exit status of a task's programs; raise :class:`BlockEnding` when they never started."""
    status = exit_status(directory)
    if status == NOT_STARTED:
        raise BlockEnding(f"{directory}: fewer than {MIN_TIME_LEFT} s left in the job; retry in a new block")
    return status


def program_seconds(directory: Path) -> float:
    """Wall time of a task's programs, s (0 when they never finished)."""
    try:
        return float((directory / PROGRAM_SECONDS).read_text().strip())
    except (OSError, ValueError):
        return 0.0


def exit_status(directory: Path) -> int:
    """Exit status a task's programs left in ``directory`` (1 when they never finished)."""
    try:
        return int((directory / "exit-status").read_text().strip())
    except (OSError, ValueError):
        return 1


def _run_command(
    prepared: dict, stdout: str | None = None, stderr: str | None = None, parsl_resource_specification: dict | None = None
) -> str:
    """Bash app body: the prepared command (its exit status goes to a file, never raised).

    ``parsl_resource_specification`` (nodes, ranks) is read by Parsl's MPIExecutor, which puts
    the matching launcher line into ``$PARSL_MPI_PREFIX``."""
    return prepared["command"]
