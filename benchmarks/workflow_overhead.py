"""Driver and Parsl overhead, and how fast a finished campaign is recognised.

1. Per-task overhead: N trivial tasks through the same record mechanism the stages use
   (``cagoflow.apps.tasks.run_task``), as Parsl python apps on a thread pool and on a local
   HTEX, against the same bodies called directly.
2. A real finished campaign of ``--iterations`` iterations (analytic committee, tblite): the
   time ``cagoflow run`` needs to find that nothing is left to do, and ``cagoflow status``.
   The overhead share of a realistic iteration is the per-task overhead × tasks per iteration
   over the iteration's measured wall time.

    python benchmarks/workflow_overhead.py [--tasks 200] [--iterations 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cagoflow.executors.site import ExecutorConfig, SiteConfig
from cagoflow.records import executions


def trivial(workdir: str, index: int):
    """A stage task whose body does nothing but write its record."""
    from pathlib import Path

    from cagoflow.apps.tasks import Outcome, TaskSpec, run_task

    spec = TaskSpec(Path(workdir), "bench", 0, f"task-{index:05d}")
    return run_task(spec, [], {"index": index}, lambda directory: Outcome(summary={"index": index}))


def per_task_seconds(kind: str, n: int) -> float:
    """Wall time per task of ``n`` trivial tasks through Parsl (kind: threads | htex_local) or directly."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        if kind == "direct":
            for index in range(n):
                trivial(folder, index)
            return (time.perf_counter() - start) / n
        import parsl
        from parsl import python_app

        from cagoflow.executors.parsl_config import build_config

        site = SiteConfig(name=kind, executors={"local": ExecutorConfig(kind=kind, max_workers=2)})
        parsl.load(build_config(site, Path(folder) / "runinfo"))
        try:
            app = python_app(trivial, executors=["local"])
            app(folder, -1).result()  # workers up
            start = time.perf_counter()
            futures = [app(folder, index) for index in range(n)]
            for future in futures:
                future.result()
            return (time.perf_counter() - start) / n
        finally:
            parsl.dfk().cleanup()
            parsl.clear()


def campaign_figures(iterations: int) -> dict[str, float]:
    """Run a small campaign to the end, then time recognising it as finished."""
    root = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp(prefix="cagoflow-bench-"))
    campaign = yaml_campaign(root, folder, iterations)
    command = [sys.executable, "-m", "cagoflow.cli"]
    start = time.perf_counter()
    subprocess.run([*command, "run", str(campaign), "--workdir", str(folder / "work")], check=True, capture_output=True)
    full = time.perf_counter() - start
    tasks = len(executions(folder / "work"))
    start = time.perf_counter()
    subprocess.run([*command, "run", str(campaign), "--workdir", str(folder / "work")], check=True, capture_output=True)
    rerun = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([*command, "status", str(folder / "work")], check=True, capture_output=True)
    status = time.perf_counter() - start
    return {"full": full, "tasks": tasks, "rerun": rerun, "status": status}


def yaml_campaign(root: Path, folder: Path, iterations: int) -> Path:
    import yaml

    settings = yaml.safe_load((root / "examples/water-analytic/campaign.yaml").read_text())
    settings["iterations"] = iterations
    settings["systems"]["water"]["structures"] = str(root / "examples/water/water-16.extxyz")
    path = folder / "campaign.yaml"
    path.write_text(json.dumps(settings))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    console = Console(width=150)
    direct = per_task_seconds("direct", args.tasks)
    table = Table(title=f"{args.tasks} trivial tasks (record written by each)")
    for column in ("executor", "ms per task", "overhead vs direct (ms)"):
        table.add_column(column, justify="right")
    table.add_row("direct call", f"{1000 * direct:.2f}", "—")
    overhead = {}
    for kind in ("threads", "htex_local"):
        seconds = per_task_seconds(kind, args.tasks)
        overhead[kind] = seconds - direct
        table.add_row(kind, f"{1000 * seconds:.2f}", f"{1000 * overhead[kind]:.2f}")
    console.print(table)
    figures = campaign_figures(args.iterations)
    per_iteration = figures["full"] / (args.iterations + 1)
    tasks_per_iteration = figures["tasks"] / (args.iterations + 1)
    share = max(overhead.values()) * tasks_per_iteration / per_iteration
    summary = Table(title=f"the analytic example campaign, {args.iterations} iterations, threads")
    for column in ("figure", "value"):
        summary.add_column(column)
    summary.add_row("full run", f"{figures['full']:.1f} s ({figures['tasks']} tasks)")
    summary.add_row("mean iteration", f"{per_iteration:.1f} s, {tasks_per_iteration:.0f} tasks")
    summary.add_row("Parsl + record overhead per iteration", f"{100 * share:.2f} % (goal < 2 %)")
    summary.add_row("`cagoflow run` on the finished campaign", f"{figures['rerun']:.2f} s (goal < 5 s)")
    summary.add_row("`cagoflow status`", f"{figures['status']:.2f} s (goal < 5 s)")
    console.print(summary)


if __name__ == "__main__":
    main()
