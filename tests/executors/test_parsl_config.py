"""cagoflow.executors.parsl_config: site-configs → Parsl Config, and real runs on threads, a local
HighThroughputExecutor and a real one-node SLURM cluster (partitions cpu and gpu)."""

from __future__ import annotations

import os
import subprocess
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import as_completed
from contextlib import contextmanager
from pathlib import Path

import parsl
import pytest
from parsl import bash_app, python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor, MPIExecutor, ThreadPoolExecutor
from parsl.jobs.errors import TooManyJobFailuresError
from parsl.jobs.states import JobState, JobStatus
from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, SlurmProvider

from cagoflow.executors.site import SiteConfig, default_site, load_site
from cagoflow.stages import STAGES
from cagoflow.executors.parsl_config import build_config, fail_on_block_failures

REPO = Path(__file__).resolve().parents[2]
SITES = REPO / "site-configs"
VENV_BIN = Path(sysconfig.get_path("scripts"))
PATH_LINE = f'export PATH={VENV_BIN}:"$PATH"'

KIND_CLASSES = {"threads": ThreadPoolExecutor, "htex_local": HighThroughputExecutor,
                "htex_slurm": HighThroughputExecutor, "mpi": MPIExecutor}  # fmt: skip


def _site(name: str) -> SiteConfig:
    return load_site(SITES / f"{name}.yaml")


def _executors(config: Config) -> dict:
    return {executor.label: executor for executor in config.executors}


@contextmanager
def _loaded(config: Config) -> Iterator[parsl.DataFlowKernel]:
    dfk = parsl.load(config)
    try:
        yield dfk
    finally:
        parsl.dfk().cleanup()
        parsl.clear()


# ---------------------------------------------------------------------------------------------
# Configs built from the shipped site-configs (nothing submitted)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SITES.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_site_validates_and_builds(path: Path, tmp_path: Path) -> None:
    site = load_site(path)
    config = build_config(site, tmp_path / "runinfo")
    executors = _executors(config)
    assert list(executors) == list(site.executors)
    for label, executor in site.executors.items():
        assert type(executors[label]) is KIND_CLASSES[executor.kind], label
        if executor.kind != "threads":
            assert executors[label].block_error_handler is fail_on_block_failures
            assert executors[label].provider.worker_init.startswith(PATH_LINE)
        if executor.kind in ("htex_slurm", "mpi") and executor.provider is not None:
            provider = executors[label].provider
            assert isinstance(provider, SlurmProvider)
            assert provider.walltime == executor.provider.walltime
            assert f"#SBATCH --partition={executor.provider.partition}" in provider.scheduler_options
            assert ("#SBATCH --exclusive" in provider.scheduler_options) is executor.provider.exclusive
    assert set(site.stage_executors.values()) <= set(executors)
    assert config.run_dir == str((tmp_path / "runinfo").absolute())
    assert config.retries == site.retries


def test_threads_site_and_memoizer(tmp_path: Path) -> None:
    config = build_config(_site("local-threads"), tmp_path)
    (executor,) = config.executors
    assert isinstance(executor, ThreadPoolExecutor) and executor.label == "local" and executor.max_threads == 2
    assert config.memoizer.memoize and config.memoizer.checkpoint_mode is None


def test_checkpoints_of_earlier_runs_are_never_read(tmp_path: Path) -> None:
    """A continued campaign resumes from its task records, never from Parsl checkpoints."""
    for run in ("000", "001"):
        (tmp_path / run / "checkpoint").mkdir(parents=True)
    config = build_config(default_site(), tmp_path)
    assert config.memoizer.checkpoint_mode is None and list(config.memoizer.checkpoint_files) == []
    assert config.memoizer.memoize


def test_local_htex_site() -> None:
    (executor,) = build_config(_site("local-htex"), Path("runinfo")).executors
    assert isinstance(executor, HighThroughputExecutor) and isinstance(executor.provider, LocalProvider)
    assert executor.max_workers_per_node == 2 and executor.cores_per_worker == 1
    assert isinstance(executor.provider.launcher, SingleNodeLauncher)
    assert executor.interchange_launch_cmd == [str(VENV_BIN / "interchange.py")]
    assert Path(executor.interchange_launch_cmd[0]).is_file()


def test_ci_slurm_site() -> None:
    executors = _executors(build_config(_site("ci-slurm"), Path("runinfo")))
    assert set(executors) == {"cpu", "gpu"}
    for label, executor in executors.items():
        provider = executor.provider
        assert isinstance(executor, HighThroughputExecutor) and isinstance(provider, SlurmProvider)
        assert provider.partition == label and provider.exclusive is False
        assert "--exclusive" not in provider.scheduler_options
        assert provider.walltime == "00:15:00"
        assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (0, 0, 1)
        assert provider.cores_per_node == 1 and provider.mem_per_node == 3
        assert isinstance(provider.launcher, SingleNodeLauncher)
        assert executor.max_workers_per_node == 1
    assert executors["gpu"].available_accelerators == ["0"]
    assert executors["cpu"].available_accelerators == []
    labels = _site("ci-slurm").stage_executors
    assert {labels[stage] for stage in ("train", "md", "cago")} == {"gpu"}
    assert labels["reference"] == labels["merge"] == "cpu"


def test_slurm_generic_site() -> None:
    site = _site("slurm-generic")
    executors = _executors(build_config(site, Path("runinfo")))
    gpu, cpu, reference = executors["gpu"], executors["cpu"], executors["reference"]
    assert gpu.available_accelerators == ["0", "1", "2", "3"] and gpu.cores_per_worker == 8
    assert "#SBATCH --gpus-per-node=4" in gpu.provider.scheduler_options
    assert "#SBATCH --account=my_account" in gpu.provider.scheduler_options
    assert gpu.provider.partition == "gpu" and gpu.provider.exclusive is False
    assert gpu.provider.walltime == "12:00:00" and gpu.provider.max_blocks == 4
    assert "source $HOME/cagoflow/.venv/bin/activate" in gpu.provider.worker_init
    assert cpu.provider.partition == "cpu" and cpu.max_workers_per_node == 8
    assert isinstance(reference, MPIExecutor) and reference.mpi_launcher == "srun"
    assert reference.max_workers_per_block == 4
    assert isinstance(reference.provider.launcher, SimpleLauncher)
    assert reference.provider.nodes_per_block == 4 and reference.provider.exclusive is True
    labels = site.stage_executors
    assert (labels["train"], labels["md"], labels["cago"]) == ("gpu", "gpu", "gpu")
    assert labels["reference"] == "reference" and labels["calibrate"] == "cpu"


def test_lumi_site() -> None:
    site = _site("lumi")
    executors = _executors(build_config(site, Path("runinfo")))
    partitions = {label: executor.provider.partition for label, executor in executors.items()}
    assert partitions == {"gpu": "standard-g", "gpu-small": "small-g", "cpu": "small", "reference": "standard"}
    gpu = executors["gpu"]
    assert gpu.available_accelerators == [str(i) for i in range(8)]  # ROCR_VISIBLE_DEVICES per worker
    assert "#SBATCH --gpus-per-node=8" in gpu.provider.scheduler_options
    # two workers packed on each of the 2 GCDs of a block: 4 workers of 14 / 4 = 3 threads each
    assert executors["gpu-small"].available_accelerators == ["0", "0", "1", "1"]
    assert "#SBATCH --gpus-per-node=2" in executors["gpu-small"].provider.scheduler_options
    assert site.executors["gpu-small"].n_devices == 2 and site.executors["gpu-small"].n_accelerators == 4
    assert site.python_threads("cago") == 3
    assert executors["gpu-small"].provider.exclusive is False
    for executor in executors.values():
        assert "#SBATCH --account=project_XXX" in executor.provider.scheduler_options
        assert "module load LUMI/" in executor.provider.worker_init
    assert isinstance(executors["reference"], MPIExecutor)
    assert site.engines.cp2k.setup.startswith("module load")


def test_saga_site() -> None:
    site = _site("saga")
    executors = _executors(build_config(site, Path("runinfo")))
    assert executors["gpu"].provider.partition == "a100"
    assert executors["cpu"].provider.partition == executors["reference"].provider.partition == "normal"
    for executor in executors.values():
        assert "#SBATCH --account=nnXXXXk" in executor.provider.scheduler_options
        assert executor.provider.mem_per_node is not None  # Saga refuses jobs without a memory request
    assert executors["gpu"].available_accelerators == ["0", "1", "2", "3"]
    assert isinstance(executors["reference"], MPIExecutor)


def test_slurm_details_from_the_schema() -> None:
    site = SiteConfig.model_validate({"executors": {
        "gpu": {"kind": "htex_slurm", "available_accelerators": ["1", "3"], "provider": {
            "partition": "gpu", "qos": "short", "mem_per_node": 1.5, "gpus_per_node": 2, "nodes_per_block": 2,
            "launcher": "srun", "scheduler_options": "#SBATCH --constraint=a100", "worker_init": "module load x",
            "cmd_timeout": 40, "exclusive": False}},
        "mpi-local": {"kind": "mpi", "max_workers": 2},
    }})  # fmt: skip
    executors = _executors(build_config(site, Path("runinfo")))
    provider = executors["gpu"].provider
    assert executors["gpu"].available_accelerators == ["1", "3"]
    assert isinstance(provider.launcher, SrunLauncher) and provider.nodes_per_block == 2
    wanted = ("#SBATCH --constraint=a100", "#SBATCH --qos=short", "#SBATCH --mem=1536M", "#SBATCH --gpus-per-node=2")
    for line in wanted:
        assert line in provider.scheduler_options
    assert provider.mem_per_node is None and provider.cmd_timeout == 40
    assert provider.worker_init.splitlines()[:2] == [PATH_LINE, "module load x"]
    local_mpi = executors["mpi-local"]
    assert isinstance(local_mpi.provider, LocalProvider) and isinstance(local_mpi.provider.launcher, SimpleLauncher)
    assert local_mpi.max_workers_per_block == 2


def test_stage_executors_cover_every_stage() -> None:
    assert default_site().stage_executors == {stage: "local" for stage in STAGES}


# ---------------------------------------------------------------------------------------------
# The block error handler
# ---------------------------------------------------------------------------------------------


class _FakeExecutor:
    def __init__(self, init_blocks: int = 0):
        self.label = "gpu"
        self.provider = SlurmProvider(partition="gpu", init_blocks=init_blocks, max_blocks=5, cmd_timeout=5)
        self.bad_state_is_set = False
        self.exception: Exception | None = None

    def set_bad_state_and_fail_all(self, exception: Exception) -> None:
        self.bad_state_is_set = True
        self.exception = exception


FAILED = JobStatus(JobState.FAILED, "Failed to start block: sbatch: error: invalid partition specified: gpu")
MISSING = JobStatus(JobState.MISSING, "workers failed to register")
DONE = JobStatus(JobState.COMPLETED)
RUNNING = JobStatus(JobState.RUNNING)


@pytest.mark.parametrize(
    ("states", "init_blocks", "gives_up"),
    [
        ([], 0, False),
        ([FAILED], 0, True),  # a partition that never works fails at once
        ([MISSING], 0, True),  # blocks whose workers never registered
        ([FAILED], 2, False),  # Parsl's rule: at least init_blocks blocks before giving up
        ([FAILED, FAILED], 2, True),
        ([RUNNING, FAILED], 0, False),  # one block works
        ([DONE, FAILED, FAILED], 0, False),
        ([DONE, FAILED, FAILED, MISSING], 0, True),  # it worked once, then 3 blocks in a row failed
        ([FAILED, FAILED, DONE], 0, False),
    ],
)
def test_block_error_handler(states: list[JobStatus], init_blocks: int, gives_up: bool) -> None:
    executor = _FakeExecutor(init_blocks)
    fail_on_block_failures(executor, {str(i): state for i, state in enumerate(states)})
    assert executor.bad_state_is_set is gives_up
    if gives_up:
        assert isinstance(executor.exception, TooManyJobFailuresError)
        message = str(executor.exception)
        assert "executor 'gpu'" in message and "SLURM partition 'gpu'" in message
        assert ("invalid partition" in message) or ("failed to register" in message)


def test_block_error_handler_orders_blocks_numerically() -> None:
    executor = _FakeExecutor()
    states = {str(i): DONE for i in range(9)} | {"9": FAILED, "10": FAILED, "11": FAILED}
    fail_on_block_failures(executor, states)  # as strings, "10" < "9": the window would miss block 9
    assert executor.bad_state_is_set


# ---------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------


def _remote(source: str):
    """The function defined by ``source``, compiled in a namespace of its own named ``__main__``:
    Parsl's serialiser (dill) then sends it by value, so workers that cannot import this test
    module (HTEX processes, SLURM jobs) can run it."""
    namespace: dict = {"__name__": "__main__"}
    exec(textwrap.dedent(source), namespace)
    (function,) = (value for key, value in namespace.items() if callable(value) and not key.startswith("__"))
    return function


WHERE = """
def where():
    import os
    keys = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "PATH")
    return {key: os.environ.get(key) for key in keys} | {"pid": os.getpid()}
"""
SHELL = """
def shell(stdout=None, stderr=None):
    return 'echo "partition=${SLURM_JOB_PARTITION:-none} pool=$(command -v process_worker_pool.py)"'
"""


def _apps(label: str):
    """A python_app (the worker's environment) and a bash_app on executor ``label``."""
    return python_app(_remote(WHERE), executors=[label]), bash_app(_remote(SHELL), executors=[label])


def test_threads_run(tmp_path: Path) -> None:
    where, shell = _apps("local")
    with _loaded(build_config(default_site(), tmp_path / "runinfo")):
        result = where().result(timeout=60)
        assert shell(stdout=str(tmp_path / "out")).result(timeout=60) == 0
    assert result["pid"] == os.getpid()  # threads run in this process
    assert (tmp_path / "out").read_text().startswith("partition=none")


@pytest.mark.slow
def test_local_htex_run_without_an_activated_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local HTEX starts even when the venv's bin/ is not on PATH (as with `.venv/bin/cagoflow run`)."""
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_BIN))
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    site = SiteConfig.model_validate({"executors": {"local": {"kind": "htex_local", "max_workers": 1}}})
    where, shell = _apps("local")
    with _loaded(build_config(site, tmp_path / "runinfo")):
        result = where().result(timeout=120)
        assert shell(stdout=str(tmp_path / "out")).result(timeout=60) == 0
    assert result["pid"] != os.getpid()  # a worker process
    assert result["PATH"].split(os.pathsep)[0] == str(VENV_BIN)
    assert (tmp_path / "out").read_text().strip() == f"partition=none pool={VENV_BIN / 'process_worker_pool.py'}"


def _squeue_partitions(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i %P", f"--jobs={','.join(job_ids)}"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_slurm_cpu_and_gpu_partitions(slurm_cluster: None, tmp_path: Path) -> None:
    """ci-slurm.yaml on the real cluster: apps routed by label run in jobs of both partitions."""
    sacct = subprocess.run(["sacct", "-X"], capture_output=True, text=True, timeout=30)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr.lower()
    config = build_config(_site("ci-slurm"), tmp_path / "runinfo")
    where_cpu, shell_cpu = _apps("cpu")
    where_gpu, shell_gpu = _apps("gpu")
    start = time.monotonic()
    with _loaded(config) as dfk:
        futures = {where_cpu(): "cpu", where_gpu(): "gpu"}
        first = next(as_completed(list(futures), timeout=150))
        first_result_s = time.monotonic() - start
        results = {label: future.result(timeout=150) for future, label in futures.items()}
        shells = [shell_cpu(stdout=str(tmp_path / "cpu.out")), shell_gpu(stdout=str(tmp_path / "gpu.out"))]
        assert [future.result(timeout=150) for future in shells] == [0, 0]
        recorded = {label: list(dfk.executors[label].provider.resources) for label in ("cpu", "gpu")}
    print(f"\nSLURM: first result after {first_result_s:.1f} s, both after {time.monotonic() - start:.1f} s")
    assert first.done()
    for label in ("cpu", "gpu"):
        assert results[label]["SLURM_JOB_PARTITION"] == label
        assert results[label]["SLURM_JOB_ID"] in recorded[label]  # the job Parsl's provider submitted
        assert (tmp_path / f"{label}.out").read_text().startswith(f"partition={label} pool=")
    assert results["gpu"]["CUDA_VISIBLE_DEVICES"] == results["gpu"]["ROCR_VISIBLE_DEVICES"] == "0"
    assert results["cpu"]["CUDA_VISIBLE_DEVICES"] is None
    job_ids = [results[label]["SLURM_JOB_ID"] for label in ("cpu", "gpu")]
    assert _squeue_partitions(job_ids) == {job_ids[0]: "cpu", job_ids[1]: "gpu"}


def test_slurm_mpi_executor(slurm_cluster: None, tmp_path: Path) -> None:
    """MPIExecutor on SLURM: a bash app starts ranks with $PARSL_MPI_PREFIX (srun)."""
    ranks = min(2, len(os.sched_getaffinity(0)), os.cpu_count() or 1)
    site = SiteConfig.model_validate({"executors": {"local": {"kind": "threads"}, "reference": {"kind": "mpi",
        "max_workers": 1, "provider": {"partition": "cpu", "walltime": "00:05:00", "cores_per_node": ranks,
        "init_blocks": 0, "exclusive": False, "launcher": "simple"}}},
        "stages": {"default": "local", "reference": "reference"}})  # fmt: skip

    mpi_hello = _remote(
        """
        def mpi_hello(parsl_resource_specification=None, stdout=None, stderr=None):
            rank = "echo rank $SLURM_PROCID of $SLURM_NTASKS on $SLURM_JOB_PARTITION"
            return f"timeout 60 $PARSL_MPI_PREFIX bash -c '{rank}'"
        """
    )
    app = bash_app(mpi_hello, executors=["reference"])
    spec = {"num_nodes": 1, "num_ranks": ranks, "ranks_per_node": ranks}
    with _loaded(build_config(site, tmp_path / "runinfo")):
        future = app(parsl_resource_specification=spec, stdout=str(tmp_path / "out"), stderr=str(tmp_path / "err"))
        assert future.result(timeout=150) == 0
    lines = sorted((tmp_path / "out").read_text().splitlines())
    assert lines == [f"rank {rank} of {ranks} on cpu" for rank in range(ranks)]


def _failing_site(**provider: object) -> SiteConfig:
    settings = {"walltime": "00:05:00", "cores_per_node": 1, "init_blocks": 0, "exclusive": False, "cmd_timeout": 20}
    return SiteConfig.model_validate({"executors": {"broken": {"kind": "htex_slurm", "provider": settings | provider}}})


def _fails_clearly(site: SiteConfig, run_dir: Path, within_s: float) -> str:
    app = python_app(_remote("def ping():\n    return 1\n"), executors=["broken"])
    start = time.monotonic()
    with _loaded(build_config(site, run_dir)):
        future = app()
        with pytest.raises(Exception) as failure:
            future.result(timeout=within_s)
        elapsed = time.monotonic() - start
        with pytest.raises(TooManyJobFailuresError):  # later tasks fail at once
            app().result(timeout=5)
    assert not isinstance(failure.value, TimeoutError), f"the task still waits after {within_s} s"
    print(f"\nfailed after {elapsed:.1f} s: {failure.value}")
    return str(failure.value)


def test_slurm_unknown_partition_fails_tasks_quickly(slurm_cluster: None, tmp_path: Path) -> None:
    message = _fails_clearly(_failing_site(partition="nonexistent"), tmp_path / "runinfo", within_s=60)
    assert "executor 'broken'" in message and "SLURM partition 'nonexistent'" in message
    assert "invalid partition" in message.lower()  # what sbatch said


@pytest.mark.slow
def test_slurm_blocks_whose_workers_die_fail_tasks(slurm_cluster: None, tmp_path: Path) -> None:
    """Jobs that start but whose workers never come up (a broken worker_init) end the wait too:
    Parsl polls SLURM every 60 s, so this takes about a minute."""
    broken_init = 'echo "Lmod has detected the following error: unknown module Python/9" >&2; exit 3'
    site = _failing_site(partition="cpu", worker_init=broken_init)
    message = _fails_clearly(site, tmp_path / "runinfo", within_s=150)
    assert "executor 'broken'" in message and "SLURM partition 'cpu'" in message
    assert "failed to register" in message
    assert "unknown module Python/9" in message  # the end of the job's stderr
    assert str(tmp_path / "runinfo") in message  # where the job's output is


# ---------------------------------------------------------------------------------------------
# A controller that does not answer for a while
# ---------------------------------------------------------------------------------------------


def _stalled_controller(seconds: float):
    """SIGSTOP the test cluster's slurmctld; SIGCONT it after ``seconds`` (a timer thread)."""
    import signal
    import threading

    pid = int(Path("/run/slurm/slurmctld.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.kill, (pid, signal.SIGCONT))
    timer.start()
    return pid, timer


def _retrying_provider(retries: int):
    site = SiteConfig.model_validate({"executors": {"cpu": {"kind": "htex_slurm", "provider": {
        "partition": "cpu", "walltime": "00:05:00", "init_blocks": 0, "exclusive": False, "cmd_timeout": 2,
        "cmd_retries": retries}}}})  # fmt: skip
    provider = _executors(build_config(site, Path("runinfo")))["cpu"].provider
    provider.first_delay = 1.0
    return provider


@pytest.mark.slow
def test_scheduler_calls_outlast_a_stalled_controller(slurm_cluster: None) -> None:
    """slurmctld stopped for 6 s: squeue times out (2 s) twice or three times, then answers;
    without retries the same call raises the timeout to Parsl."""
    import signal

    provider = _retrying_provider(retries=4)  # calls at ~0, 3, 7 s (2 s timeout, then 1, 2 s waits)
    pid, timer = _stalled_controller(6.0)
    try:
        start = time.perf_counter()
        retcode, _, stderr = provider.execute_wait("squeue -h -o %i")
        elapsed = time.perf_counter() - start
    finally:
        timer.cancel()
        os.kill(pid, signal.SIGCONT)
    assert retcode == 0, stderr
    assert elapsed > 5.0  # it did wait for the controller

    impatient = _retrying_provider(retries=0)
    pid, timer = _stalled_controller(4.0)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            impatient.execute_wait("squeue -h -o %i")
    finally:
        timer.cancel()
        os.kill(pid, signal.SIGCONT)
