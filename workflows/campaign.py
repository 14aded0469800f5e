"""The DAG driver: a whole campaign as chained Parsl futures, resumable from its work directory.

All iterations are submitted at once; each iteration's tasks depend on the previous
iteration's merge through futures, so Parsl runs whatever is ready on whichever executor the
site-config maps its stage to. Every task checks its own content-keyed record first
(:mod:`cagoflow.records`), so running the driver again on the same work directory — after a
crash, a SIGKILL, a lost SLURM job — redoes exactly what had not finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cagoflow.config import CampaignConfig, SiteConfig
from cagoflow.errors import CagoflowError
from cagoflow.io import atomic_write_json

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
        future = app(*args, **kwargs)
        self.futures.append((stage, future))
        if self.hook is not None:
            self.hook(stage, "submitted")
            future.add_done_callback(lambda f, s=stage: self.hook(s, "failed" if f.exception() else "done"))
        return future


def build(dag: Dag):
    """Submit the whole campaign; return the future of the last merge."""
    config, apps, workdir = dag.config, dag.apps, dag.workdir
    from cagoflow.apps.stages import initial_count

    postfilters = []
    for system in sorted(config.systems):
        initial = dag.submit("initial", apps.initial, workdir, config, system)
        references = [reference(dag, -1, system, f"{system}-init-{k:03d}", initial, k, None, [])
                      for k in range(initial_count(config, system))]  # fmt: skip
        postfilters.append(dag.submit("postfilter", apps.postfilter, workdir, -1, config, system, *references))
    merged = dag.submit("merge", apps.merge, workdir, -1, config, None, *postfilters)
    previous: list = [None] * config.committee.size
    for iteration in range(config.iterations):
        split = dag.submit("split", apps.split, workdir, iteration, config, merged)
        members = []
        for m in range(config.committee.size):
            prepared = dag.submit("train", apps.prepare_training, workdir, iteration, config, dag.site, m, split, previous[m])
            ran = apps.run_training(prepared)
            members.append(dag.submit("train", apps.collect_training, workdir, iteration, m, prepared, ran))
        previous = members
        calibration = dag.submit("calibrate", apps.calibrate, workdir, iteration, config, split, *members)
        source = config.cago_source(iteration)
        postfilters = []
        for system in sorted(config.systems):
            md = []
            if source.source == "md":
                md = [dag.submit("md", apps.md, workdir, iteration, config, system, r, *members)
                      for r in range(config.md.replicas)]  # fmt: skip
            sample = dag.submit("sample", apps.sample, workdir, iteration, config, system, split, *md, *members)
            cagos = [
                dag.submit("cago", apps.cago, workdir, iteration, config, system, k, sample, calibration, *members)
                for k in range(config.n_samples(iteration))
            ]
            gate = dag.submit("prefilter", apps.prefilter, workdir, iteration, config, system, *cagos, *members)
            references = [
                reference(dag, iteration, system, f"{system}-{k:03d}", cago, 0, gate, members) for k, cago in enumerate(cagos)
            ]
            postfilters.append(dag.submit("postfilter", apps.postfilter, workdir, iteration, config, system, *references))
        merged = dag.submit("merge", apps.merge, workdir, iteration, config, merged, *postfilters)
    return merged


def reference(dag: Dag, iteration: int, system: str, task: str, structures, index: int, gate, members: list):
    """A reference task: one in-process app (tblite, ASE), or prepare → bash → collect (CP2K)."""
    config, apps, workdir = dag.config, dag.apps, dag.workdir
    if config.reference.engine != "cp2k" or (iteration < 0 and config.systems[system].labelled):
        return dag.submit("reference", apps.reference, workdir, iteration, config, system, task, structures, index, gate, *members)
    from cagoflow.apps.commands import resource_specification

    prepared = apps.prepare_reference(workdir, iteration, config, dag.site, system, task, structures, index, gate)
    resources = resource_specification(dag.site, "reference", "cp2k.psmp")
    ran = apps.run_reference(prepared, **({"parsl_resource_specification": resources} if resources else {}))
    return dag.submit(
        "reference", apps.collect_reference, workdir, iteration, config, system, task, structures, index, gate, prepared, ran,
        *members,
    )  # fmt: skip


def root_cause(exc: BaseException) -> BaseException:
    """The first real error behind Parsl's dependency errors."""
    from parsl.dataflow.errors import DependencyError

    while isinstance(exc, DependencyError) and exc.dependent_exceptions_tids:
        exc = exc.dependent_exceptions_tids[0][0]
    return exc


def run_campaign(config: CampaignConfig, site: SiteConfig, workdir: Path, hook: ProgressHook | None = None) -> None:
    """Run (or continue) ``config`` in ``workdir`` on ``site``; raise CampaignFailed on a stage failure."""
    import parsl

    from cagoflow.apps import make_apps
    from cagoflow.apps.tasks import StageFailed
    from cagoflow.executors.parsl_config import build_config

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(workdir / "campaign.json", config.model_dump(mode="json"))
    parsl.load(build_config(site, workdir / "runinfo", checkpoint=False))  # resume comes from our records
    try:
        dag = Dag(make_apps(site), config, site, str(workdir), hook)
        final = build(dag)
        try:
            final.result()
        except Exception as exc:  # a stage failed: report its own message
            cause = root_cause(exc)
            if not isinstance(cause, (StageFailed, CagoflowError)):
                cause = f"a task raised {type(cause).__name__}: {cause} (the traceback is in {workdir / 'runinfo'})"
            raise CampaignFailed(f"the campaign stopped: {cause}") from None
    finally:
        parsl.dfk().cleanup()
        parsl.clear()
