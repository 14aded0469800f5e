"""A Parsl :class:`~parsl.config.Config` from a validated site-config, and nothing else.

One Parsl executor per entry of ``site.executors``, labelled like it:

========== ===================================================================================
kind       Parsl objects
========== ===================================================================================
threads    ``ThreadPoolExecutor(max_threads=max_workers)`` (default 2, Parsl's)
htex_local ``HighThroughputExecutor`` + ``LocalProvider`` (one block on this machine)
htex_slurm ``HighThroughputExecutor`` + ``SlurmProvider`` (partition, account, qos, walltime, ...;
           launcher ``srun`` → ``SrunLauncher``, ``single_node`` → ``SingleNodeLauncher``,
           ``simple`` → ``SimpleLauncher``)
mpi        ``MPIExecutor(mpi_launcher=...)`` + ``SlurmProvider`` with ``SimpleLauncher`` (or a
           ``LocalProvider`` without a provider block); apps start MPI programs with
           ``$PARSL_MPI_PREFIX``
========== ===================================================================================

Workers of every HTEX/MPI executor start with the ``bin/`` of the Python that builds the
config at the front of ``PATH`` (where Parsl's ``process_worker_pool.py`` lives), before the
site's own ``worker_init`` (which may load modules or activate another environment); the
interchange starts from that ``bin/`` too, so no activated venv is needed. On a cluster this
assumes the submit host and the compute nodes share the file system, as they do for ``run_dir``
(Parsl writes the batch scripts into it).

Blocks that cannot start (an unknown partition or account, a job that dies at once) fail the
tasks of their executor with one clear :class:`~parsl.jobs.errors.TooManyJobFailuresError`
(:func:`fail_on_block_failures`) instead of leaving them waiting for workers that never come.
Parsl notices a failed ``sbatch`` at its next strategy pass (≤ 5 s); a job that fails after
submission at its next SLURM status poll (Parsl polls SLURM every 60 s).

Memoization stays within one run (apps declared with ``cache=True`` reuse results of identical
calls); no Parsl checkpoint is written or read: a continued campaign resumes from its own
content-keyed task records (:mod:`cagoflow.records`).
"""

from __future__ import annotations

import logging
import math
import shlex
import subprocess
import sysconfig
import time
from collections.abc import Mapping
from pathlib import Path

from parsl.config import Config
from parsl.dataflow.dependency_resolvers import DEEP_DEPENDENCY_RESOLVER
from parsl.dataflow.memoization import BasicMemoizer
from parsl.executors import HighThroughputExecutor, MPIExecutor, ThreadPoolExecutor
from parsl.executors.base import ParslExecutor
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.errors import TooManyJobFailuresError
from parsl.jobs.states import JobState, JobStatus
from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher
from parsl.launchers.base import Launcher
from parsl.monitoring import MonitoringHub
from parsl.providers import LocalProvider, SlurmProvider

from cagoflow.executors.site import PARSL_DEFAULT_THREADS, ExecutorConfig, SiteConfig, SlurmProviderConfig
from cagoflow.io import log_tail

__all__ = ["BLOCK_FAILURE_WINDOW", "RetryingSlurmProvider", "build_config", "fail_on_block_failures"]

logger = logging.getLogger(__name__)

#: Consecutive failed blocks after which an executor gives up (also: every block so far failed).
BLOCK_FAILURE_WINDOW = 3

_LAUNCHERS: Mapping[str, type[Launcher]] = {
    "srun": SrunLauncher,
    "single_node": SingleNodeLauncher,
    "simple": SimpleLauncher,
}
_FAILED_STATES = (JobState.FAILED, JobState.MISSING)


def build_config(site: SiteConfig, run_dir: Path) -> Config:
    """The Parsl configuration of ``site``, with Parsl's run files under ``run_dir``.

    ``site.retries`` becomes Parsl's retry budget per task; memoization holds within the run only.
    With ``site.monitoring`` Parsl's monitoring hub records every task in the work directory
    (the parent of ``run_dir``), :data:`MONITORING_DB`.
    Futures are resolved inside lists and dicts too (Parsl's deep dependency resolver): a task
    takes its upstream records by role (``members=[...]``), not as a flat argument list.
    Nothing is submitted or started here (a ``SlurmProvider`` does run ``sacct`` once to decide
    between ``sacct`` and ``squeue`` for job status).
    """
    run_dir = Path(run_dir).absolute()
    memoizer = BasicMemoizer(checkpoint_mode=None, checkpoint_files=[], memoize=True)
    executors = [_executor(label, executor) for label, executor in site.executors.items()]
    return Config(
        executors=executors, memoizer=memoizer, retries=site.retries, run_dir=str(run_dir),
        dependency_resolver=DEEP_DEPENDENCY_RESOLVER, monitoring=monitoring_hub(site, run_dir.parent),
    )  # fmt: skip


#: Parsl's monitoring database, in the work directory (``parsl-visualize sqlite:///<path>``).
MONITORING_DB = "monitoring.db"


def monitoring_hub(site: SiteConfig, workdir: Path) -> MonitoringHub | None:
    """Parsl's monitoring hub writing to ``workdir/monitoring.db`` when the site asks for it."""
    if not site.monitoring:
        return None
    return MonitoringHub(logging_endpoint=f"sqlite:///{workdir / MONITORING_DB}", workflow_name=workdir.name,
                         resource_monitoring_interval=10)  # fmt: skip



# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------


#: Workers report every HEARTBEAT_PERIOD s; one silent for HEARTBEAT_THRESHOLD s (a job the
#: scheduler killed or lost) is declared lost and its tasks fail, to be retried in a new block —
#: far sooner than Parsl's default of 120 s.
HEARTBEAT_PERIOD = 10
HEARTBEAT_THRESHOLD = 40


def _executor(label: str, executor: ExecutorConfig) -> ParslExecutor:
    if executor.kind == "threads":
        return _threads(label, executor)
    if executor.kind == "mpi":
        return _mpi(label, executor)
    return _htex(label, executor)


def _threads(label: str, executor: ExecutorConfig) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(label=label, max_threads=executor.max_workers or PARSL_DEFAULT_THREADS)


def _htex(label: str, executor: ExecutorConfig) -> HighThroughputExecutor:
    options: dict = {
        "cores_per_worker": executor.cores_per_worker,
        "available_accelerators": executor.available_accelerators,
    }
    if executor.max_workers is not None:
        options["max_workers_per_node"] = executor.max_workers
    if executor.interface is not None:
        options["address"] = _interface_address(executor.interface)
    interchange = _interchange_command()
    if interchange is not None:
        options["interchange_launch_cmd"] = [interchange]
    return HighThroughputExecutor(
        label=label,
        provider=_provider(executor),
        block_error_handler=fail_on_block_failures,
        heartbeat_period=HEARTBEAT_PERIOD,
        heartbeat_threshold=HEARTBEAT_THRESHOLD,
        **options,
    )


def _mpi(label: str, executor: ExecutorConfig) -> MPIExecutor:
    options: dict = {}
    if executor.interface is not None:
        options["address"] = _interface_address(executor.interface)
    interchange = _interchange_command()
    if interchange is not None:
        options["interchange_launch_cmd"] = interchange  # MPIExecutor types it as one string
    return MPIExecutor(
        label=label,
        provider=_provider(executor),
        max_workers_per_block=executor.max_workers or 1,
        mpi_launcher=executor.mpi_launcher,
        block_error_handler=fail_on_block_failures,
        **options,
    )


def _provider(executor: ExecutorConfig) -> LocalProvider | RetryingSlurmProvider:
    if executor.provider is None:  # htex_local, or mpi on this machine
        launcher = SimpleLauncher() if executor.kind == "mpi" else SingleNodeLauncher()
        return LocalProvider(
            launcher=launcher, init_blocks=1, min_blocks=0, max_blocks=1, worker_init=_worker_init(executor.worker_init)
        )
    return _slurm_provider(executor.provider, executor.launcher or "single_node")


def _slurm_provider(provider: SlurmProviderConfig, launcher: str) -> RetryingSlurmProvider:
    scheduler_options = [provider.scheduler_options.strip()] if provider.scheduler_options.strip() else []
    mem_gb: int | None = None
    if provider.mem_per_node is not None:
        if float(provider.mem_per_node).is_integer():
            mem_gb = int(provider.mem_per_node)  # Parsl: '#SBATCH --mem=<N>g' and PARSL_MEMORY_GB
        else:  # '--mem=<N>g' takes whole GB only
            scheduler_options.append(f"#SBATCH --mem={math.ceil(provider.mem_per_node * 1024)}M")
    return RetryingSlurmProvider(
        attempts=provider.cmd_retries + 1,
        partition=provider.partition,
        account=provider.account,
        qos=provider.qos,
        walltime=provider.walltime,
        nodes_per_block=provider.nodes_per_block,
        cores_per_node=provider.cores_per_node,
        mem_per_node=mem_gb,
        gpus_per_node=provider.gpus_per_node or None,  # '#SBATCH --gpus-per-node=N'
        init_blocks=provider.init_blocks,
        min_blocks=provider.min_blocks,
        max_blocks=provider.max_blocks,
        scheduler_options="\n".join(scheduler_options),
        worker_init=_worker_init(provider.worker_init),
        launcher=_LAUNCHERS[launcher](),
        exclusive=provider.exclusive,
        cmd_timeout=provider.cmd_timeout,
    )


#: Pieces of SLURM client messages that mean "the controller did not answer in time": worth a retry.
TRANSIENT_SLURM_ERRORS = (
    "socket timed out",
    "unable to contact slurm controller",
    "zero bytes were transmitted or received",
    "resource temporarily unavailable",
    "connection refused",
    "slurm_receive_msg",
)


class RetryingSlurmProvider(SlurmProvider):
    """Parsl's SlurmProvider whose scheduler calls (sbatch, squeue, scancel) survive a busy or
    restarting controller: a call that times out (``cmd_timeout``) or fails with a transient
    message (:data:`TRANSIENT_SLURM_ERRORS`) is retried after 2, 4, 8, ... s, ``attempts`` calls
    in all; then its last result (or timeout) goes to Parsl as before. A retried ``sbatch``
    whose first call did reach the controller leaves one extra job; its workers serve the same
    executor until they idle out.
    """

    def __init__(self, *args, attempts: int = 4, first_delay: float = 2.0, **kwargs):
        self.attempts = max(1, attempts)  # before Parsl's __init__, which already calls sacct
        self.first_delay = first_delay
        super().__init__(*args, **kwargs)

    def execute_wait(self, cmd, timeout=None):
        delay = self.first_delay
        for attempt in range(1, self.attempts):
            try:
                retcode, stdout, stderr = super().execute_wait(cmd, timeout)
            except subprocess.TimeoutExpired:
                problem = "timed out"
            else:
                if retcode == 0 or not any(text in stderr.lower() for text in TRANSIENT_SLURM_ERRORS):
                    return retcode, stdout, stderr
                problem = " ".join(stderr.split())
            logger.warning("SLURM call %r: %s (attempt %d of %d); retrying in %g s", cmd, problem, attempt, self.attempts, delay)
            time.sleep(delay)
            delay *= 2
        return super().execute_wait(cmd, timeout)  # the last attempt: its result or timeout goes to Parsl


def _scripts_dir() -> Path:
    """Where this Python's console scripts are (a venv's ``bin/``): Parsl's
    ``process_worker_pool.py`` and ``interchange.py`` are there."""
    return Path(sysconfig.get_path("scripts"))


def _worker_init(site_lines: str) -> str:
    """This Python's scripts directory at the front of PATH, then the site's own lines."""
    lines = [f'export PATH={shlex.quote(str(_scripts_dir()))}:"$PATH"']
    if site_lines.strip():
        lines.append(site_lines.strip())
    return "\n".join(lines)


def _interchange_command() -> str | None:
    """Absolute path of Parsl's ``interchange.py`` (so HTEX starts without the venv on PATH)."""
    script = _scripts_dir() / "interchange.py"
    return str(script) if script.is_file() else None


def _interface_address(interface: str) -> str:
    from parsl.addresses import address_by_interface

    return address_by_interface(interface)


# ---------------------------------------------------------------------------------------------
# Blocks that keep failing
# ---------------------------------------------------------------------------------------------


def fail_on_block_failures(executor: BlockProviderExecutor, status: dict[str, JobStatus]) -> None:
    """Parsl ``block_error_handler``: put ``executor`` into a failed state, failing its pending
    and future tasks with one :class:`TooManyJobFailuresError` that names the executor, its
    partition and what the scheduler said, when every block so far failed (at least
    ``max(1, init_blocks)`` of them) or the last :data:`BLOCK_FAILURE_WINDOW` blocks failed.

    It combines Parsl's ``simple_error_handler`` (a partition that never works fails at once)
    and ``windowed_error_handler`` (one that stops working fails too) with a message for people.
    """
    if executor.bad_state_is_set or not status:
        return
    blocks = sorted(status, key=_block_order)
    failed = [block for block in blocks if status[block].state in _FAILED_STATES]
    init_blocks = getattr(executor.provider, "init_blocks", 1)
    every_block = len(blocks) >= max(1, init_blocks) and len(failed) == len(blocks)
    recent = blocks[-BLOCK_FAILURE_WINDOW:]
    last_blocks = len(recent) == BLOCK_FAILURE_WINDOW and all(status[b].state in _FAILED_STATES for b in recent)
    if every_block or last_blocks:
        executor.set_bad_state_and_fail_all(TooManyJobFailuresError(_failure_message(executor, status, failed)))


def _block_order(block_id: str) -> tuple[int, str]:
    return (int(block_id), "") if block_id.isdigit() else (-1, block_id)


def _failure_message(executor: BlockProviderExecutor, status: dict[str, JobStatus], failed: list[str]) -> str:
    provider = executor.provider
    if isinstance(provider, SlurmProvider):
        where = f"SLURM partition '{provider.partition}'" if provider.partition else "the default SLURM partition"
        hint = "check partition, account, qos, walltime, cores/memory/GPUs and worker_init in the site-config"
    else:
        where = "this machine"
        hint = "check worker_init and that Parsl's process_worker_pool.py is on PATH"
    lines = [
        f"executor '{executor.label}': {len(failed)} of {len(status)} block(s) (batch jobs of workers) on "
        f"{where} failed, so its tasks fail instead of waiting for workers that never start; {hint}."
    ]
    for block in failed[-BLOCK_FAILURE_WINDOW:]:
        lines.append(f"  block {block}: {_job_failure(executor, block, status[block])}")
    return "\n".join(lines)


def _job_failure(executor: BlockProviderExecutor, block: str, job: JobStatus) -> str:
    """What is known about one failed block: the scheduler's message, exit code, the end of the
    job's stderr and where its output is."""
    parts = [" ".join(job.message.split())] if job.message else []
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    job_id = getattr(executor, "blocks_to_job_id", {}).get(block)
    record = getattr(executor.provider, "resources", {}).get(job_id, {}) if job_id is not None else {}
    stderr_path = job.stderr_path or record.get("job_stderr_path")
    stderr = (job.stderr_summary or log_tail(stderr_path)).strip()
    if stderr:
        parts.append("job stderr: " + " | ".join(stderr.splitlines()[-5:]))
    if job_id is not None and stderr_path:
        parts.append(f"job {job_id}, output in {stderr_path} and {Path(stderr_path).with_suffix('.stdout')}")
    return "; ".join(parts) or f"job state {job.state.name}, no message from the scheduler"



