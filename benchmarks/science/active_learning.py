"""Active learning from one structure: CAGO against the two baselines of Cezar et al. (Fig. 4, scaled down).

Three strategies, each a real campaign run by ``cagoflow run`` on the README's example
(``examples/water/campaign.yaml``: 16 H2O, 4 tiny DeePMD-kit members, GFN1-xTB by tblite, the
same reference budget of ``sampling.per_iteration`` structures per iteration), for ``--seeds``
campaign seeds each:

- ``cago``: random frames of committee MD at 300 K, pushed by CAGO to δ (the example's settings);
- ``max-uncertainty``: the frames of the same MD with the largest committee spread, as they are;
- ``random-500K``: random frames of committee MD at 500 K, as they are.

Every campaign is scored on one held-out benchmark set, made here once (GFN1-xTB MD of the
same box, never trained on) and given to all of them as ``evaluation.benchmark.file``; the
evaluation stage also runs production MD per member (stability, density, coordination).
Prints the learning curves and which strategy reaches a held-out force error with the fewest
reference calculations, with the spread over seeds; writes ``learning-curves.png`` and
``results.json`` in ``--workdir``. Campaigns resume where they stopped, so a second run
only finishes what is missing.

    python benchmarks/science/active_learning.py [--workdir runs/science/active-learning] [--seeds 2] [--iterations 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from cagoflow.engines.md_settings import MDStage
from cagoflow.engines.tblite import TbliteReference
from cagoflow.evaluation import BenchmarkGeneration, benchmark_frames
from cagoflow.io import atomic_write_json, atomic_write_text, read_structures, write_structures
from cost import campaign_wall_time

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "water" / "campaign.yaml"
console = Console(width=140)


def strategies(base: dict) -> dict[str, dict]:
    """The campaign of each strategy, derived from the example's."""
    cago = copy.deepcopy(base)
    uncertain = copy.deepcopy(base)
    uncertain["sampling"]["strategy"] = "max_uncertainty"
    uncertain["sampling"]["cago_from"] = [{**entry, "optimize": False} for entry in base["sampling"]["cago_from"]]
    hot = copy.deepcopy(uncertain)
    hot["sampling"]["strategy"] = "random"
    hot["md"]["schedule"] = [{**entry, "temperature": 500} for entry in base["md"]["schedule"]]
    return {"cago": cago, "max-uncertainty": uncertain, "random-500K": hot}


def held_out_set(workdir: Path, start: Path) -> Path:
    """The benchmark set all campaigns are scored on: GFN1-xTB MD frames of the box (cached)."""
    path = workdir / "benchmark.extxyz"
    if not path.exists():
        console.print("held-out set: GFN1-xTB MD of the example's box, 10 frames")
        teacher = TbliteReference(method="GFN1-xTB")
        settings = BenchmarkGeneration(frames=10, md=MDStage(ensemble="nvt", temperature=300, steps=200, timestep=1.0, dump_interval=10))
        frames = benchmark_frames(read_structures(start)[0], teacher.calculator(), settings, seed=2024)
        write_structures(path, [teacher.compute(atoms).labelled() for atoms in frames])
    return path


def run_campaigns(args, base: dict) -> dict[str, dict]:
    """Run (or resume) every strategy and seed; their ``cagoflow status --json`` figures."""
    cagoflow = str(Path(sys.executable).with_name("cagoflow"))
    benchmark = held_out_set(args.workdir, EXAMPLE.parent / base["systems"]["water"]["structures"])
    statuses = {}
    for name, campaign in strategies(base).items():
        for seed in range(args.seeds):
            folder = args.workdir / f"{name}-seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            settings = copy.deepcopy(campaign)
            settings.update(name=f"{name}-seed{seed}", seed=7 + seed, iterations=args.iterations)
            settings["systems"]["water"]["structures"] = str(EXAMPLE.parent / base["systems"]["water"]["structures"])
            settings["evaluation"]["benchmark"] = {"file": str(benchmark.resolve())}
            file = atomic_write_text(folder / "campaign.yaml", yaml.safe_dump(settings, sort_keys=False))
            console.print(f"[bold]{name}, seed {seed}[/]: cagoflow run {file}")
            subprocess.run([cagoflow, "run", str(file), "--workdir", str(folder / "work")], check=True, stdout=subprocess.DEVNULL)
            status = subprocess.run([cagoflow, "status", str(folder / "work"), "--json"], check=True, capture_output=True, text=True)
            statuses[f"{name}|{seed}"] = {"status": json.loads(status.stdout), "seconds": campaign_wall_time(folder / "work")}
    return statuses


def curves(statuses: dict) -> dict[str, dict[int, list[dict]]]:
    """Per strategy and seed, one point per evaluated iteration: training set, held-out errors, MD."""
    result: dict[str, dict[int, list[dict]]] = {}
    for key, entry in statuses.items():
        name, seed = key.split("|")
        points = []
        for iteration in entry["status"]["iterations"]:
            evaluation = iteration.get("systems", {}).get("water", {}).get("evaluation")
            if iteration["iteration"] < 0 or not evaluation:
                continue
            points.append({
                "iteration": iteration["iteration"], "training_set": iteration["training_set"],
                "force_rmse": evaluation["force_rmse"], "stable": evaluation["stable_members"], "members": evaluation["members"],
                "density": evaluation.get("density_mean"), "coordination": evaluation.get("coordination_mean"),
                "hit": iteration.get("hit_ratio_mean"),
            })  # fmt: skip
        result.setdefault(name, {})[int(seed)] = points
    return result


def learning_table(data: dict) -> Table:
    """Per strategy and iteration: held-out force RMSE, mean [min–max] over seeds, with the
    training-set sizes; then the last iteration's stable members and coordination per seed."""
    iterations = sorted({p["iteration"] for seeds in data.values() for points in seeds.values() for p in points})
    table = Table(title="Held-out force RMSE of the committee (meV/Å): mean, min–max over seeds, (training structures)")
    table.add_column("strategy")
    for iteration in iterations:
        table.add_column(f"iteration {iteration}", justify="right")
    table.add_column("stable, last", justify="right")
    table.add_column("coordination, last", justify="right")
    for name, seeds in data.items():
        row = [name]
        for iteration in iterations:
            points = [p for points in seeds.values() for p in points if p["iteration"] == iteration]
            values = [1000 * p["force_rmse"] for p in points]
            sizes = "/".join(str(p["training_set"]) for p in points)
            row.append(f"{np.mean(values):.0f} [{min(values):.0f}–{max(values):.0f}] ({sizes})" if values else "—")
        last = [points[-1] for points in seeds.values() if points]
        row.append(", ".join(f"{p['stable']}/{p['members']}" for p in last))
        row.append(", ".join("—" if p["coordination"] is None else f"{p['coordination']:.1f}" for p in last))
        table.add_row(*row)
    return table


def verdict(data: dict) -> str:
    """Each strategy's final error against the best one's, and whether the gap exceeds the seed spread."""
    final = {name: [1000 * points[-1]["force_rmse"] for points in seeds.values() if points] for name, seeds in data.items()}
    sizes = {name: [points[-1]["training_set"] for points in seeds.values() if points] for name, seeds in data.items()}
    best = min(final, key=lambda name: np.mean(final[name]))
    spread = max(max(v) - min(v) for v in final.values())
    lines = [f"largest spread over seeds of a final error: {spread:.0f} meV/Å"]
    for name, values in final.items():
        gap = np.mean(values) - np.mean(final[best])
        judged = "best" if name == best else f"{gap:+.0f} meV/Å vs {best}: {'larger' if gap > spread else 'not larger'} than the spread"
        lines.append(
            f"{name}: final {np.mean(values):.0f} meV/Å (seeds {', '.join(f'{v:.0f}' for v in values)}) "
            f"with {', '.join(map(str, sizes[name]))} training structures — {judged}"
        )
    return "\n".join(lines)


def plot(data: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    from cagoflow.io import write_figure

    figure = Figure(figsize=(11.0, 3.6))
    axes = figure.subplots(1, 3)
    for name, seeds in data.items():
        iterations = sorted({p["iteration"] for points in seeds.values() for p in points})
        for column, (key, scale) in enumerate((("force_rmse", 1000.0), ("stable", 1.0), ("coordination", 1.0))):
            points = [[p for ps in seeds.values() for p in ps if p["iteration"] == i] for i in iterations]
            sizes = [np.mean([p["training_set"] for p in group]) for group in points]
            values = [[p[key] * scale for p in group if p[key] is not None] for group in points]
            mean = np.array([np.mean(v) if v else np.nan for v in values])
            spans = [[m - min(v) if v else 0 for m, v in zip(mean, values)], [max(v) - m if v else 0 for m, v in zip(mean, values)]]
            axes[column].errorbar(sizes, mean, yerr=spans, marker="o", capsize=3, label=name)
    axes[1].set_ylim(0, max(p["members"] for seeds in data.values() for ps in seeds.values() for p in ps) + 0.5)
    for ax, label in zip(axes, ("held-out force RMSE (meV/Å)", "stable members", "O–O coordination number")):
        ax.set_xlabel("training structures (mean over seeds)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    figure.suptitle("16 H2O, 4 DeePMD members, GFN1-xTB: per iteration, mean over seeds, bars min–max")
    figure.tight_layout()
    return write_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/science/active-learning"))
    parser.add_argument("--seeds", type=int, default=2, help="campaign seeds per strategy")
    parser.add_argument("--iterations", type=int, default=3, help="iterations per campaign")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    statuses = run_campaigns(args, yaml.safe_load(EXAMPLE.read_text()))
    data = curves(statuses)
    atomic_write_json(args.workdir / "results.json", {"curves": data, "campaign_seconds": {k: v["seconds"] for k, v in statuses.items()}})
    console.print(learning_table(data))
    console.print(verdict(data))
    console.print(f"plot: {plot(data, args.workdir / 'learning-curves.png')}")
    console.print(f"wall time of this run: {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
