"""Where a campaign's time goes: each stage's task time and share, per iteration and in all.

Reads the task records of a finished (or stopped) campaign's work directory — each task records
the wall time of its body and of the programs it ran (trainer, CP2K) — and prints:

1. per stage: tasks, task-seconds in all, share of all task-seconds, and the cost per unit a
   chemist plans with (training: per member; CAGO: per structure and per optimiser step;
   reference: per structure; evaluation: per task);
2. per iteration: task-seconds per stage, and the size of the members' training set (the split's
   dataset less its test split, which only the calibration sees).

Task-seconds add up the time of tasks that ran side by side, so their sum exceeds the
campaign's wall time on a machine with several workers; the shares say what to make faster.

    python benchmarks/science/cost.py runs/water
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cagoflow.records import all_records
from cagoflow.stages import STAGE_ORDER
from cagoflow.workflows.status import campaign_figures

UNITS = {"train": "member", "cago": "structure", "reference": "structure", "evaluate": "task", "md": "trajectory"}


def campaign_wall_time(workdir: Path) -> float | None:
    """Seconds between the first and the last task that finished (executions.jsonl), or None."""
    path = workdir / "executions.jsonl"
    if not path.exists():
        return None
    times = [json.loads(line)["time"] for line in path.read_text().splitlines() if line.strip()]
    return max(times) - min(times) if len(times) > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="a campaign's work directory")
    args = parser.parse_args()
    records = [r for r in all_records(args.workdir) if r.status == "done" and not r.summary.get("skipped")]
    if not records:
        raise SystemExit(f"{args.workdir}: no finished task records")
    by_stage: dict[str, list] = defaultdict(list)
    for record in records:
        by_stage[record.stage].append(record)
    total = sum(r.seconds for r in records)
    console = Console()
    table = Table(title=f"{args.workdir}: task time per stage ({total:.0f} task-seconds in all)")
    for column in ("stage", "tasks", "task-s", "share", "s per unit", "unit"):
        table.add_column(column, justify="right")
    for stage in sorted(by_stage, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER)):
        tasks = by_stage[stage]
        seconds = [r.seconds for r in tasks]
        table.add_row(
            stage, str(len(tasks)), f"{sum(seconds):.1f}", f"{sum(seconds) / total:.0%}",
            f"{np.mean(seconds):.2f} ± {np.std(seconds):.2f}", UNITS.get(stage, "task"),
        )  # fmt: skip
    console.print(table)
    cago = by_stage.get("cago", [])
    steps = sum(int(r.summary.get("steps", 0)) for r in cago)
    if steps:
        unmoved = sum(int(r.summary.get("steps", 0)) == 0 for r in cago)
        console.print(
            f"CAGO: {sum(r.seconds for r in cago) / steps:.3f} s per optimiser step over {steps} steps "
            f"({len(cago)} structures, {unmoved} already at δ when they started)"
        )
    iterations = sorted({r.iteration for r in records})
    per_iteration = Table(title="task-seconds per stage and iteration (init: before iteration 0)")
    per_iteration.add_column("stage")
    for iteration in iterations:
        per_iteration.add_column("init" if iteration < 0 else str(iteration), justify="right")
    for stage in (s for s in STAGE_ORDER if s in by_stage):
        row = [sum(r.seconds for r in by_stage[stage] if r.iteration == iteration) for iteration in iterations]
        per_iteration.add_row(stage, *(f"{value:.1f}" for value in row))
    training = {it["iteration"]: it["training_set"] for it in campaign_figures(args.workdir)["iterations"]}
    per_iteration.add_row(
        "members' training set (structures, without the test split)",
        *("—" if training.get(i) is None else str(training[i]) for i in iterations),
    )
    console.print(per_iteration)
    wall = campaign_wall_time(args.workdir)
    if wall is not None:
        console.print(f"first to last finished task: {wall:.0f} s wall time ({total / wall:.2f} task-seconds per second)")


if __name__ == "__main__":
    main()
