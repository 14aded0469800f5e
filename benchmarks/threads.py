"""Threads per task: DeePMD-kit training members alone and side by side, with and without the
derived thread settings.

A tiny DeePMD member (``preset: tiny``, ``--steps`` steps, then ``dp freeze``) is trained on
GFN1-xTB (tblite) labels of rattled boxes of ``--waters`` H2O, started by the campaign's own
shell line (:func:`cagoflow.apps.commands.shell_command`) from an environment without any thread
variable, as a campaign starts it:

(a) one member alone with ``engines.deepmd.threads: 1``;
(b) one member alone with ``engines.deepmd.threads`` = every core of this machine;
(c) two members at once, each with the derived share of a 2-worker pool (cores / 2);
(d) two members at once with no thread settings (``dp`` started as before this change).

It prints the wall times (best of ``--repeat`` interleaved runs) and the ratio of two
concurrent members to one member per core ((c) / (a); goal ≤ 1.3 on a 2-core machine, where (c)
runs 1 thread per member).

    python benchmarks/threads.py [--steps 100] [--waters 16] [--frames 24] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from cagoflow.apps.commands import shell_command, thread_environment
from cagoflow.backends import TrainingSettings, get_backend
from cagoflow.executors.site import SiteConfig, machine_cores
from common import labelled_frames

#: The environment a campaign's driver gives its programs: this one without thread variables.
BARE = {key: value for key, value in os.environ.items() if key not in thread_environment(1, "dp")}


def site(workers: int, threads: int | None) -> SiteConfig:
    """A pool of ``workers`` threads on this machine; DeePMD's threads fixed, or derived (None)."""
    return SiteConfig.model_validate(
        {"executors": {"local": {"kind": "threads", "max_workers": workers}}, "engines": {"deepmd": {"threads": threads}}}
    )


def member_commands(folder: Path, files: tuple[Path, Path], steps: int, seed: int) -> list[list[str]]:
    """A fresh member directory with DeePMD's input; its train and freeze commands."""
    settings = TrainingSettings(steps=steps, seed=seed, type_map=("O", "H"))
    return get_backend("deepmd").write_training_input(files[0], files[1], folder, settings)


def campaign_line(folder: Path, commands: list[list[str]], config: SiteConfig) -> str:
    """The shell of a member as a campaign starts it (thread variables from ``config``)."""
    return shell_command(folder, commands, config, "train", "train.log")


def old_line(folder: Path, commands: list[list[str]], config: SiteConfig) -> str:
    """The shell of a member before threads per task: its programs, no thread variables."""
    programs = " && ".join(shlex.join(argv) for argv in commands)
    return f"cd {shlex.quote(str(folder))} && {{ {programs}; }} > train.log 2>&1"


Line = Callable[[Path, list[list[str]], SiteConfig], str]


def run_members(root: Path, files: tuple[Path, Path], steps: int, lines: list[Line], config: SiteConfig) -> float:
    """Wall time, s, of one member per shell line, all started at once; each must train."""
    folders = [root / f"member-{m}" for m in range(len(lines))]
    shells = [
        line(folder, member_commands(folder, files, steps, seed), config)
        for seed, (folder, line) in enumerate(zip(folders, lines), start=1)
    ]
    start = time.perf_counter()
    processes = [subprocess.Popen(["bash", "-c", shell], env=BARE) for shell in shells]
    for process in processes:
        process.wait()
    seconds = time.perf_counter() - start
    for folder in folders:
        result = get_backend("deepmd").read_training_result(folder)
        if result.status != "success":
            raise SystemExit(f"{folder} did not train: {result.message}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per member")
    parser.add_argument("--waters", type=int, default=16, help="H2O per box")
    parser.add_argument("--frames", type=int, default=24, help="labelled frames (4 for validation)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario; the best is shown")
    args = parser.parse_args()
    cores = machine_cores()
    derived = site(2, None)
    scenarios = [
        ("(a) one member, 1 thread", site(2, 1), [campaign_line]),
        (f"(b) one member, {cores} threads", site(2, cores), [campaign_line]),
        (f"(c) two at once, derived {derived.program_threads('train', derived.engines.deepmd)} each", derived,
         [campaign_line, campaign_line]),
        ("(d) two at once, no thread settings", derived, [old_line, old_line]),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cagoflow-threads-") as name:
        root = Path(name)
        files = labelled_frames(root, args.waters, args.frames)
        seconds = {label: float("inf") for label, _, _ in scenarios}
        for attempt in range(args.repeat):  # interleaved, so a busy spell of the machine hits every scenario
            for label, config, lines in scenarios:
                wall = run_members(root / f"{label[1]}-{attempt}", files, args.steps, lines, config)
                seconds[label] = min(seconds[label], wall)
    one = seconds[scenarios[0][0]]
    title = f"DeePMD tiny, {args.steps} steps + freeze, {3 * args.waters} atoms, {cores} cores, best of {args.repeat}"
    table = Table(title=title)
    for column in ("scenario", "wall time (s)", "vs (a)"):
        table.add_column(column, justify="right")
    for label, value in seconds.items():
        table.add_row(label, f"{value:.1f}", f"{value / one:.2f}×")
    Console(width=120).print(table)
    print(f"two concurrent members / one member per core: (c)/(a) = {seconds[scenarios[2][0]] / one:.2f} (goal ≤ 1.3)")


if __name__ == "__main__":
    main()
