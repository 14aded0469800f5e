"""The DAG driver: a whole campaign as chained Parsl futures, resumable from its work directory.

All iterations are submitted at once; each iteration's tasks depend on the previous
iteration's merge through futures, so Parsl runs whatever is ready on whichever executor the
site-config maps its stage to. Every task checks its own content-keyed record first
(:mod:`cagoflow.records`), so running the driver again on the same work directory — after a
crash, a SIGKILL, a lost SLURM job — redoes exactly what had not finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cagoflow.campaign import CampaignConfig
from cagoflow.executors.site import SiteConfig
from cagoflow.errors import CagoflowError
from cagoflow.io import atomic_write_json
from cagoflow.stages import structure_task
from cagoflow.workflows.status import STOPPED_NAME

#: Called with (stage, event) where event is "submitted", "done" or "failed".
ProgressHook = Callable[[str, str], None]


class CampaignFailed(CagoflowError):
    """A stage failed as a whole (too few members, every reference failed, a crashed task)."""


@dataclass
class Dag:
    """Futures of a campaign, by stage, for progress reporting."""

    apps: Any
    config: CampaignConfig
    site: SiteConfig
    workdir: str
    hook: ProgressHook | None = None
    futures: list[tuple[str, Any]] = field(default_factory=list)

    def submit(self, stage: str, app, *args, **kwargs):
        """``app(*args, **kwargs)``, counted for the progress of ``stage``."""
        future = app(*args, **kwargs)
        self.futures.append((stage, future))
        if self.hook is not None:
            self.hook(stage, "submitted")
            future.add_done_callback(lambda f, s=stage: self.hook(s, "failed" if f.exception() else "done"))
        return future


def build(dag: Dag) -> None:
    """Submit the campaign (its futures are in ``dag.futures``).

    Without a ``stop`` block every iteration is submitted at once. With one, iteration by
    iteration: after iteration i's evaluation the driver judges the criteria (on the records,
    so a resumed campaign stops at the same iteration) and submits nothing more once one holds.
    """
    config, workdir = dag.config, dag.workdir
    merged = initial(dag)
    benchmarks = {system: benchmark(dag, system) for system in sorted(config.systems)} if config.evaluation else {}
    previous: list = [None] * config.committee.size
    history: dict[str, list] = {system: [] for system in config.systems}
    (Path(workdir) / STOPPED_NAME).unlink(missing_ok=True)
    for iteration in range(config.iterations):
        merged, previous, summaries = submit_iteration(dag, iteration, merged, previous, benchmarks)
        if config.stop is None:
            continue
        reason = stop_reason_of(config, history, summaries)
        if reason is not None:
            atomic_write_json(Path(workdir) / STOPPED_NAME, {"iteration": iteration, "reason": reason})
            break


def initial(dag: Dag):
    """Label the starting structures (and rattled copies) of every system; the first merge."""
    config, apps, workdir = dag.config, dag.apps, dag.workdir
    from cagoflow.apps.dataset_tasks import initial_count

    postfilters = []
    for system in sorted(config.systems):
        structures = dag.submit("initial", apps.initial, workdir, config, system)
        references = [reference(dag, -1, system, structure_task(system, k, "init"), structures, k, None)
                      for k in range(initial_count(config, system))]  # fmt: skip
        postfilters.append(dag.submit("postfilter", apps.postfilter, workdir, -1, config, system, references=references))
    return dag.submit("merge", apps.merge, workdir, -1, config, None, postfilters=postfilters)


def benchmark(dag: Dag, system: str):
    """The held-out benchmark set of a system: a file, or MD frames labelled by the reference."""
    config, apps, workdir = dag.config, dag.apps, dag.workdir
    from cagoflow.apps.evaluation_tasks import benchmark_count

    made = dag.submit("evaluate", apps.benchmark, workdir, config, system)
    if not benchmark_count(config):
        return made
    references = [reference(dag, -1, system, structure_task(system, k, "benchmark"), made, k, None)
                  for k in range(benchmark_count(config))]  # fmt: skip
    return dag.submit("evaluate", apps.benchmark_labels, workdir, config, system, references=references)


def submit_iteration(dag: Dag, iteration: int, merged, previous: list, benchmarks: dict):
    """One iteration's tasks; returns its merge, its members and its evaluation summaries by system."""
    config, apps, workdir = dag.config, dag.apps, dag.workdir
    from cagoflow.apps.cago_tasks import cago_groups

    split = dag.submit("split", apps.split, workdir, iteration, config, merged)
    members = []
    for m in range(config.committee.size):
        prepared = dag.submit("train", apps.prepare_training, workdir, iteration, config, dag.site, m, split, previous[m])
        ran = apps.run_train(prepared)
        members.append(dag.submit("train", apps.collect_training, workdir, iteration, m, prepared, ran))
    calibration = dag.submit("calibrate", apps.calibrate, workdir, iteration, config, split, members=members)
    summaries = {system: evaluate(dag, iteration, system, bench, members) for system, bench in benchmarks.items()}
    source = config.cago_source(iteration)
    postfilters = []
    for system in sorted(config.systems):
        md = []
        if source.source == "md":
            md = [molecular_dynamics(dag, iteration, system, r, members) for r in range(config.md.replicas)]
        sample = dag.submit("sample", apps.sample, workdir, iteration, config, system, split, calibration, md=md, members=members)
        groups = [
            (first, count, dag.submit("cago", apps.cago, workdir, iteration, config, system, first, count, sample, calibration, members=members))
            for first, count in cago_groups(config, iteration)
        ]  # fmt: skip
        cago = [g for _, _, g in groups]
        gate = dag.submit("prefilter", apps.prefilter, workdir, iteration, config, system, cago=cago, members=members)
        references = [
            reference(dag, iteration, system, structure_task(system, first + k), group, k, gate)
            for first, count, group in groups
            for k in range(count)
        ]
        postfilters.append(
            dag.submit("postfilter", apps.postfilter, workdir, iteration, config, system, references=references, members=members, cago=cago)
        )
    merged = dag.submit("merge", apps.merge, workdir, iteration, config, merged, postfilters=postfilters)
    return merged, members, summaries


def molecular_dynamics(dag: Dag, iteration: int, system: str, replica: int, members: list):
    """An MD task: in-process (ASE), or prepare → LAMMPS as the site starts it → collect."""
    config, apps, workdir = dag.config, dag.apps, dag.workdir
    if config.md.engine == "ase":
        return dag.submit("md", apps.md, workdir, iteration, config, system, replica, members=members)
    prepared = apps.prepare_md(workdir, iteration, config, dag.site, system, replica, members=members)
    ran = apps.run_md(prepared)
    return dag.submit("md", apps.collect_md, workdir, iteration, config, system, replica, prepared, ran, members=members)


def evaluate(dag: Dag, iteration: int, system: str, bench, members: list):
    """Held-out errors and production MD of every member, beside MD and CAGO; their summary."""
    config, apps, workdir = dag.config, dag.apps, dag.workdir
    errors = dag.submit("evaluate", apps.evaluate_errors, workdir, iteration, config, system, bench, members=members)
    productions = [
        dag.submit("evaluate", apps.evaluate_md, workdir, iteration, config, system, m, members=members)
        for m in range(config.committee.size)
    ]
    return dag.submit("evaluate", apps.evaluate_summary, workdir, iteration, config, system, errors, productions=productions)


def stop_reason_of(config: CampaignConfig, history: dict[str, list], summaries: dict) -> str | None:
    """Wait for an iteration's evaluation; the stop criterion that holds for every system, or None."""
    from cagoflow.convergence import stop_reason
    from cagoflow.evaluation import EvaluationSummary

    reasons = []
    for system, future in summaries.items():
        history[system].append(EvaluationSummary(**future.result().summary))
        reasons.append((system, stop_reason(history[system], config.stop)))
    if not reasons or any(reason is None for _, reason in reasons):
        return None
    return reasons[0][1] if len(reasons) == 1 else "; ".join(f"{system}: {reason}" for system, reason in reasons)


def reference(dag: Dag, iteration: int, system: str, task: str, structures, index: int, gate):
    """A reference task: one in-process app (tblite, ASE), or prepare → bash → collect (a program:
    CP2K, Quantum ESPRESSO)."""
    from cagoflow.engines import REFERENCE_PROGRAMS

    config, apps, workdir = dag.config, dag.apps, dag.workdir
    if config.reference.engine not in REFERENCE_PROGRAMS or (iteration < 0 and config.systems[system].labelled):
        return dag.submit("reference", apps.reference, workdir, iteration, config, system, task, structures, index, gate)
    from cagoflow.apps.commands import resource_specification

    prepared = apps.prepare_reference(workdir, iteration, config, dag.site, system, task, structures, index, gate)
    resources = resource_specification(dag.site, "reference", REFERENCE_PROGRAMS[config.reference.engine].program)
    ran = apps.run_reference(prepared, **({"parsl_resource_specification": resources} if resources else {}))
    return dag.submit(
        "reference", apps.collect_reference, workdir, iteration, config, system, task, structures, index, gate, prepared, ran
    )


def root_cause(exc: BaseException) -> BaseException:
    """The first real error behind Parsl's dependency errors."""
    from parsl.dataflow.errors import DependencyError

    while isinstance(exc, DependencyError) and exc.dependent_exceptions_tids:
        exc = exc.dependent_exceptions_tids[0][0]
    return exc


def run_campaign(
    config: CampaignConfig, site: SiteConfig, workdir: Path, hook: ProgressHook | None = None, *,
    force_unlock: bool = False, warn: Callable[[str], None] = logging.getLogger("cagoflow").warning,
) -> None:  # fmt: skip
    """Run (or continue) ``config`` in ``workdir`` on ``site``; raise CampaignFailed on a stage failure.

    The run holds the work directory's lock (:mod:`cagoflow.workflows.lock`) from before it
    writes anything until it ends: a second run refuses with
    :class:`~cagoflow.workflows.lock.CampaignLocked`; ``force_unlock`` takes the lock of a run
    that is gone but looks alive. ``warn`` gets the warning of a lock taken over (default: the log).
    """
    import parsl

    from cagoflow.apps import make_apps
    from cagoflow.apps.tasks import StageFailed
    from cagoflow.executors.parsl_config import build_config
    from cagoflow.workflows.lock import CampaignLock

    workdir = workdir.resolve()
    lock = CampaignLock(workdir)
    lock.acquire(force=force_unlock)
    try:
        for warning in lock.warnings:
            warn(warning)
        atomic_write_json(workdir / "campaign.json", config.model_dump(mode="json"))
        parsl.load(build_config(site, workdir / "runinfo"))  # resume comes from our records
        try:
            dag = Dag(make_apps(site), config, site, str(workdir), hook)
            try:
                build(dag)
                for _, future in dag.futures:  # the evaluation of the last iteration too, not only its merge
                    future.result()
            except Exception as exc:  # a stage failed: report its own message
                cause = root_cause(exc)
                if not isinstance(cause, (StageFailed, CagoflowError)):
                    cause = f"a task raised {type(cause).__name__}: {cause} (the traceback is in {workdir / 'runinfo'})"
                raise CampaignFailed(f"the campaign stopped: {cause}") from None
        finally:
            parsl.dfk().cleanup()
            parsl.clear()
    finally:
        lock.release()
