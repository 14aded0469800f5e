"""Calibration and target control, and committee size (Cezar et al., Figs. 2 and 3) at small scale.

Does calibrated CAGO land at the target error δ, and what happens with a small committee?

1. Teacher: GFN1-xTB (tblite), a real and cheap reference. Three MD runs of 16 H2O at 300 K
   driven by it give the training pool, the calibration frames (rattled by 0–0.06 Å so that the
   errors span the range CAGO goes to) and the CAGO starting frames; the teacher labels them all.
2. Students: ``--members`` tiny DeePMD-kit members, each trained on its own bootstrap resample of
   the training pool.
3. ``cagoflow calibrate`` (the CLI) fits the full committee and the subset (0, 1, 2) on the
   calibration frames and draws their reliability diagrams with the validity limit.
4. CAGO, through :func:`cagoflow.cago.run_cago_batch` (what ``cagoflow cago`` runs), pushes the
   starting frames to δ = 1.5, 2 and 3 × their own true error ("MD-frame error") and to
   1.5 × the validity limit, in these set-ups:
   full committee calibrated, full committee uncalibrated (σ̂ itself, a = 1, b = 1), the subset
   with the full committee's law, the subset with its own law, and the subset with its own law
   but no safeguards (no close-contact guard, no step limit). δ is used as asked (no clamp to the
   validity limit, which campaigns and the CLI apply by default) so that each row shows what
   that δ gives; one more subset set-up has the default clamp, for what the clamp changes.
5. The teacher labels every CAGO structure; the hit is true error / δ (true error: RMS over atoms
   of the per-atom RMSE over the CAGO members, the paper's definition).

Prints two tables and writes ``results.json`` and ``calibration-target.png`` in ``--workdir``;
every step is cached there, so a second run resumes (delete a file to redo its step).

    python benchmarks/science/calibration_target.py [--workdir runs/science/calibration] [--members 8]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cagoflow.backends import TrainingSettings, get_backend, train
from cagoflow.cago import CagoCalibration, CagoSettings, run_cago_batch, true_force_error
from cagoflow.calibration import CommitteeCalibration, PowerLaw
from cagoflow.committee import force_sigma_hat
from cagoflow.engines.md_settings import MDStage
from cagoflow.engines.tblite import TbliteReference
from cagoflow.evaluation import BenchmarkGeneration, benchmark_frames
from cagoflow.io import atomic_write_json, atomic_write_text, read_json, read_structures, write_structures
from cagoflow.models import load_committee_spec
from cagoflow.structures import water_box

SUBSET = (0, 1, 2)
MULTIPLES = (1.5, 2.0, 3.0)  # δ as multiples of the MD-frame error
ABOVE_LIMIT = 1.5  # and δ = this × the validity limit
HYPERPARAMETERS = {"model": {"descriptor": {"rcut": 4.5, "rcut_smth": 0.5}}, "learning_rate": {"start_lr": 0.01, "stop_lr": 0.001}}
console = Console(width=160)
logging.getLogger("cagoflow.cago").setLevel(logging.ERROR)  # the clamp warns per structure; the tables say it once


def stamp(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False)


def labelled(structures):
    """Copies of ``structures`` labelled by the teacher (energy, forces)."""
    teacher = TbliteReference(method="GFN1-xTB")
    return [teacher.compute(atoms).labelled() for atoms in structures]


def teacher_frames(workdir: Path) -> dict[str, Path]:
    """Training pool, calibration frames and CAGO starts, each from its own teacher MD (cached)."""
    files = {name: workdir / f"{name}.extxyz" for name in ("pool", "calibration", "starts")}
    if all(path.exists() for path in files.values()):
        return files
    teacher = TbliteReference(method="GFN1-xTB")
    md = MDStage(ensemble="nvt", temperature=300, steps=400, timestep=1.0, dump_interval=5, thermostat_damping=50)
    wanted = {"pool": 40, "calibration": 24, "starts": 8}
    for seed, (name, count) in enumerate(wanted.items()):
        stamp(f"teacher MD for the {name} frames (16 H2O, {md.steps} steps)")
        frames = benchmark_frames(water_box(16, seed=seed), teacher.calculator(), BenchmarkGeneration(frames=count, md=md), seed)
        if name == "calibration":  # reach the errors CAGO goes to: rattle by 0, 0.02, 0.04, 0.06 Å in turn
            for k, atoms in enumerate(frames):
                atoms.rattle(stdev=0.02 * (k % 4), seed=100 + k)
        write_structures(files[name], labelled(frames))
    return files


def students(workdir: Path, pool: Path, members: int, steps: int) -> Path:
    """A committee file of ``members`` tiny DeePMD members on bootstrap resamples of the pool (cached)."""
    committee = workdir / "committee.yaml"
    if committee.exists():
        return committee
    frames = read_structures(pool)
    backend = get_backend("deepmd")
    models = []
    for m in range(members):
        rng = np.random.default_rng(m)
        chosen = rng.choice(len(frames), size=len(frames), replace=True)
        left_out = sorted(set(range(len(frames))) - set(chosen.tolist()))[:4] or [0]
        folder = workdir / "students" / f"member-{m:02d}"
        train_file = write_structures(folder / "train.extxyz", [frames[k] for k in chosen])
        validation_file = write_structures(folder / "validation.extxyz", [frames[k] for k in left_out])
        stamp(f"training student {m + 1}/{members} ({steps} steps)")
        settings = TrainingSettings(steps=steps, seed=m + 1, type_map=("H", "O"), hyperparameters=HYPERPARAMETERS)
        result = train(backend, train_file, validation_file, folder, settings)
        if result.status != "success":
            raise SystemExit(f"student {m} did not train: {result.message}")
        models.append(str(Path(result.model).resolve().relative_to(workdir.resolve())))
    atomic_write_text(committee, "backend: deepmd\nmodels:\n" + "".join(f"  - {path}\n" for path in models))
    return committee


def calibrate(workdir: Path, committee: Path, files: dict[str, Path]) -> Path:
    """``cagoflow calibrate`` on the calibration frames, full committee and subset (cached)."""
    folder = workdir / "calibration"
    if not (folder / "calibration-subset.json").exists():
        stamp("cagoflow calibrate (full committee and subset 0,1,2)")
        command = [
            str(Path(sys.executable).with_name("cagoflow")), "calibrate", "--committee", str(committee),
            "--structures", str(files["calibration"]), "--output", str(folder),
            "--subset", ",".join(map(str, SUBSET)), "--training", str(files["pool"]),
        ]  # fmt: skip
        subprocess.run(command, check=True)
    return folder


def setups(calibrations: Path) -> dict[str, tuple[tuple[int, ...] | None, CagoCalibration, CagoSettings, bool]]:
    """The CAGO set-ups: members (None: all), what CAGO knows of the calibration, settings, and
    whether δ is clamped to the validity limit (the default of campaigns and the CLI)."""
    full = CommitteeCalibration.load(calibrations / "calibration.json").for_cago()
    own = CommitteeCalibration.load(calibrations / "calibration-subset.json").for_cago()
    safe = CagoSettings(delta=0.1, max_steps=80)
    unprotected = safe.model_copy(update={"contact_guard": None, "max_step": 1.0})
    raw = CagoCalibration(PowerLaw(1.0, 1.0), None, full.contact_distances)
    return {
        "full, calibrated": (None, full, safe, False),
        "full, uncalibrated (σ̂)": (None, raw, safe, False),
        # the subset's rows share its δ values (its MD-frame error, its own validity limit)
        "subset, full law": (SUBSET, replace(full, validity_limit=own.validity_limit), safe, False),
        "subset, own law": (SUBSET, own, safe, False),
        "subset, own law, clamped": (SUBSET, own, safe, True),
        "subset, own law, no safeguards": (SUBSET, own, unprotected, False),
    }


def run_setups(workdir: Path, committee_file: Path, files: dict[str, Path], calibrations: Path) -> dict:
    """Every set-up at every δ, labelled by the teacher; results.json (cached per set-up and δ)."""
    results_file = workdir / "results.json"
    results = read_json(results_file) if results_file.exists() else {}
    committee = load_committee_spec(committee_file).build()
    starts = read_structures(files["starts"])
    for name, (members, calibration, settings, clamp) in setups(calibrations).items():
        engine = committee if members is None else committee.subset(members)
        md_errors = [true_force_error(engine.predict([a]).forces, a.get_forces()) for a in starts]
        md_error = float(np.mean(md_errors))
        start_sigma = [float(np.sqrt(np.mean(calibration.law(force_sigma_hat(engine.predict([a]).forces)) ** 2))) for a in starts]
        limit = calibration.validity_limit
        targets = {f"{m:g} × MD error": m * md_error for m in MULTIPLES}
        if limit is not None:
            targets[f"{ABOVE_LIMIT:g} × validity limit"] = ABOVE_LIMIT * limit
        for label, delta in targets.items():
            key = f"{name} | {label}"
            if key in results:
                results[key]["start_sigma_ratio"] = [sigma / delta for sigma in start_sigma]
                continue
            stamp(f"CAGO {key}: δ = {1000 * delta:.0f} meV/Å")
            start = time.perf_counter()
            known = calibration if clamp else replace(calibration, validity_limit=None)
            runs = run_cago_batch(starts, engine, known, settings.model_copy(update={"delta": delta}))
            seconds = time.perf_counter() - start
            pushed = labelled([run.atoms for run in runs])
            write_structures(workdir / "cago" / f"{key.replace(' | ', '--').replace(' ', '_')}.extxyz", pushed)
            true = [true_force_error(engine.predict([a]).forces, a.get_forces()) for a in pushed]
            results[key] = {
                "setup": name, "target": label, "delta": delta, "md_error": md_error, "validity_limit": limit,
                "above_limit": limit is not None and delta > limit, "delta_used": [run.delta for run in runs],
                "hits": [t / run.delta for t, run in zip(true, runs)],
                "reasons": [run.reason for run in runs], "steps": [run.n_steps for run in runs],
                "flags": [list(run.flags) for run in runs], "closest_pair_ratio": [_finite(run.closest_contact[0]) for run in runs],
                "md_hits": [e / delta for e in md_errors], "start_sigma_ratio": [sigma / delta for sigma in start_sigma],
                "seconds": seconds,
            }  # fmt: skip
            atomic_write_json(results_file, results)
    return results


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _within(hits: list[float]) -> float:
    return float(np.mean(np.abs(np.asarray(hits) - 1) <= 0.2))


def target_table(results: dict) -> Table:
    """Table 1: the full committee, calibrated against uncalibrated, and the plain MD frames."""
    table = Table(title="Target control, full committee (hit = true error / δ; mean over the starting frames)")
    for column in ("δ", "δ meV/Å", "above validity", "calibrated hit", "within ±20 %", "uncalibrated hit", "within ±20 %", "MD frames", "start σ_cal / δ"):
        table.add_column(column, justify="right")
    for key, row in results.items():
        if row["setup"] != "full, calibrated":
            continue
        raw = results.get(key.replace("full, calibrated", "full, uncalibrated (σ̂)"))
        table.add_row(
            row["target"], f"{1000 * row['delta']:.0f}", "yes" if row["above_limit"] else "no",
            f"{np.mean(row['hits']):.2f}", f"{_within(row['hits']):.0%}",
            "—" if raw is None else f"{np.mean(raw['hits']):.2f}", "—" if raw is None else f"{_within(raw['hits']):.0%}",
            f"{np.mean(row['md_hits']):.2f}", f"{np.mean(row['start_sigma_ratio']):.2f}",
        )  # fmt: skip
    return table


def size_table(results: dict) -> Table:
    """Table 2: every set-up, with the safeguards' traces (flags, closest pair)."""
    table = Table(title="Committee size and safeguards (hit = true error / δ over the starting frames)")
    for column in ("set-up", "δ", "δ meV/Å", "δ used", "start σ_cal / δ", "mean hit", "median hit", "max hit", "within ±20 %", "reached", "steps", "contact", "closest pair / training", "s"):
        table.add_column(column, justify="right")
    for row in results.values():
        ratios = [r for r in row["closest_pair_ratio"] if r is not None]
        table.add_row(
            row["setup"], row["target"], f"{1000 * row['delta']:.0f}", f"{1000 * np.mean(row.get('delta_used', row['delta'])):.0f}",
            f"{np.mean(row['start_sigma_ratio']):.2f}",
            f"{np.mean(row['hits']):.2f}", f"{np.median(row['hits']):.2f}", f"{np.max(row['hits']):.2f}", f"{_within(row['hits']):.0%}",
            f"{row['reasons'].count('reached')}/{len(row['reasons'])}", f"{np.median(row['steps']):.0f}",
            str(sum('contact' in flags for flags in row["flags"])), f"{min(ratios):.2f}" if ratios else "—",
            f"{row['seconds']:.0f}",
        )  # fmt: skip
    return table


def plot(results: dict, path: Path) -> Path:
    """Mean hit against δ for every set-up (bars: smallest to largest over the frames), the MD
    frames' true error / δ, and the ideal hit 1 with ±20 %."""
    from matplotlib.figure import Figure

    from cagoflow.io import write_figure

    figure = Figure(figsize=(7.5, 4.8))
    axes = figure.add_subplot()
    names = list(dict.fromkeys(row["setup"] for row in results.values()))
    for offset, name in enumerate(names):
        rows = sorted((row for row in results.values() if row["setup"] == name), key=lambda row: row["delta"])
        deltas = np.array([1000 * row["delta"] for row in rows]) * (1 + 0.02 * (offset - len(names) / 2))
        means = np.array([np.mean(row["hits"]) for row in rows])
        spans = [means - [min(row["hits"]) for row in rows], [max(row["hits"]) for row in rows] - means]
        axes.errorbar(deltas, means, yerr=spans, marker="o", capsize=3, label=name)
    for name, style in (("full, calibrated", "k:"), ("subset, own law", "k--")):
        rows = sorted((row for row in results.values() if row["setup"] == name), key=lambda row: row["delta"])
        axes.plot([1000 * row["delta"] for row in rows], [np.mean(row["md_hits"]) for row in rows], style, marker="x",
                  label=f"MD frames ({name.split(',')[0]})")  # fmt: skip
    axes.axhline(1.0, color="black", lw=1)
    axes.axhspan(0.8, 1.2, color="tab:green", alpha=0.1, label="±20 % of δ")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("target error δ (meV/Å)")
    axes.set_ylabel("true error / δ (mean; bars: min–max over 8 frames)")
    axes.legend(fontsize=7)
    axes.set_title("Does CAGO land at δ? (16 H2O, DeePMD students, GFN1-xTB teacher)")
    return write_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/science/calibration"))
    parser.add_argument("--members", type=int, default=8, help="students in the committee")
    parser.add_argument("--steps", type=int, default=600, help="training steps per student")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    files = teacher_frames(args.workdir)
    committee = students(args.workdir, files["pool"], args.members, args.steps)
    calibrations = calibrate(args.workdir, committee, files)
    results = run_setups(args.workdir, committee, files, calibrations)
    console.print(target_table(results))
    console.print(size_table(results))
    console.print(f"plot: {plot(results, args.workdir / 'calibration-target.png')}")
    console.print(f"reliability diagrams: {calibrations}/calibration-forces_error_vs_sigma.png, calibration-subset-forces_error_vs_sigma.png")
    console.print(f"wall time of this run: {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
