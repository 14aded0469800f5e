"""Paired, pre-registered: does CAGO's push buy a better potential per label? (docs/validation.md §5)

16 H2O, GFN1-xTB (tblite) teacher, tiny DeePMD-kit students. Per seed (paired: every arm of a
seed shares its base committee, its pools and its fine-tuning draws):

1. Teacher data: the training pool and the 24 rattled calibration frames of the calibration study
   (:mod:`calibration_target`, the same seed and folder: made there if missing); the base set is
   16 frames drawn from that pool.
2. Base committee: ``--members`` members on bootstrap resamples of the base set, ``--steps``
   steps each; calibrated by ``cagoflow calibrate`` on the calibration frames (out-of-sample
   validity limit). With ``--convergence-seeds``, a second base trained twice as long shows
   whether ``--steps`` converge for this set size.
3. Pools: committee MD of the base committee (its mean) at 300 K and at 500 K.
4. Five arms, each adding ``--labels`` teacher-labelled structures:
   ``unpushed`` (random frames of the 300 K pool, as they are), ``cago-relative`` (the same frames
   pushed to δ = 1.5 × their own σ_cal, one-sided; a frame without room is labelled as it is),
   ``cago-absolute`` (the same frames pushed to δ = 0.5 eV/Å, two-sided, clamped to the
   validity limit), ``max-uncertainty`` (the 300 K pool frames with the largest σ̂ on any atom)
   and ``random-500K`` (random frames of the 500 K pool).
5. Training of the arms: every arm's member m starts from base member m and trains
   ``--finetune-steps`` steps at the learning rate ``--finetune-lr`` (default: from the base's
   final rate down by 10) on the same bootstrap draw of base set + added structures (equal
   sizes: equal draws); the control ``no new data`` is fine-tuned the same way on the base set
   alone. With ``--from-scratch`` every arm's members train from scratch on the grown set exactly
   as the base members did on the base set (``--steps`` steps, the same seeds and learning
   rate), and the control is the base itself.
6. Scores on teacher-labelled held-out sets that nothing trains on (made once, shared by all
   seeds): in distribution, 20 frames of a 300 K run of a new 16-H2O box; out of distribution,
   10 frames each of a 24-H2O box at 300 K, a 16-H2O box at 600 K, one compressed to
   1.15 g/cm³ and one expanded to 0.87 g/cm³ (300 K). The out-of-distribution score is the mean
   of those four force RMSEs of the committee mean.
7. Stability (``--stability``): members 0 … k-1 of every committee each run NVT at 600 K in
   LAMMPS (DeePMD-kit's pair style) from the in-distribution box; unstable below 0.4 Å or outside
   0.25–2 × the density.

With ``--gate-only`` only the base, the control and the ``unpushed`` arm are made and the gate is
printed: the check, before a design is registered, that its training can learn the added
frames at all (none of the CAGO arms is made or looked at).

Then the decision rule of docs/validation.md §5: the gate (adding the unpushed frames lowers the
in-distribution error below the control's by more than the base's spread over seeds), and cago-relative against
``unpushed`` and ``max-uncertainty`` out of distribution (wins per seed, one-sided sign test,
bootstrap interval over seeds of the mean paired difference) with no loss in distribution.
Everything is cached per seed under ``--workdir`` (delete a file to redo its step); prints the
tables and writes ``summary.json`` and ``paired-active-learning.png`` there.

    python benchmarks/science/paired_active_learning.py --seeds 0 1 2 3 4 [--workdir runs/science/paired-al]
    python benchmarks/science/paired_active_learning.py --quick   # a smoke test of the chain, not a result
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cagoflow.analysis import model_errors
from cagoflow.cago import CagoSettings, run_cago_batch
from cagoflow.calibration import CommitteeCalibration
from cagoflow.engines.lammps import run_lammps
from cagoflow.engines.md_settings import MDStage
from cagoflow.evaluation import BenchmarkGeneration, benchmark_frames
from cagoflow.io import atomic_write_json, read_json, read_structures, write_structures
from cagoflow.models import load_committee_spec
from cagoflow.sampling import max_uncertainty_frames, random_frames, structure_force_uncertainty
from cagoflow.structures import water_box

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_target import calibrate, header, labelled, seeded, stamp, teacher_frames, train_committee, true_errors, write_committee  # noqa: E402
from systems import SYSTEMS, Frames  # noqa: E402

SYSTEM = SYSTEMS["water"]
ARMS = ("unpushed", "cago-relative", "cago-absolute", "max-uncertainty", "random-500K")
#: The control: the base members fine-tuned exactly like the arms on the base set alone (what
#: the extra training steps give without new data).
CONTROL = "no new data"
FINETUNED = (CONTROL, *ARMS)
PRIMARY, RIVALS, SECONDARY = "cago-relative", ("unpushed", "max-uncertainty"), ("cago-absolute", "random-500K")
RELATIVE, ABSOLUTE = 1.5, 0.5  # δ of the CAGO arms: × the start's σ_cal; eV/Å
BASE_FRAMES = 16
#: The held-out sets: (molecules, density g/cm³, temperature K, frames, box seed); the first is
#: in distribution, the others are the out-of-distribution score.
HELD_OUT = {
    "in distribution (300 K)": (16, 1.0, 300.0, 20, 90001),
    "new box (24 H2O)": (24, 1.0, 300.0, 10, 90002),
    "600 K": (16, 1.0, 600.0, 10, 90003),
    "compressed 1.15 g/cm³": (16, 1.15, 300.0, 10, 90004),
    "expanded 0.87 g/cm³": (16, 0.87, 300.0, 10, 90005),
}
IN_DISTRIBUTION = next(iter(HELD_OUT))
HELD_OUT_MD_STEPS = 200
MAX_ID_LOSS = 0.05  # "no loss in distribution": the upper end of the 95 % interval below +5 %
console = Console(width=180)  # one thread and no DataLoader workers per trainer: calibration_target sets them


# --- data -----------------------------------------------------------------------------------------


def held_out_sets(workdir: Path, md_steps: int) -> dict[str, list]:
    """The teacher-labelled held-out sets, from teacher MD of ``md_steps`` steps (made once, cached
    in ``workdir/held-out``)."""
    sets = {}
    for index, (name, (molecules, density, temperature, frames, box_seed)) in enumerate(HELD_OUT.items()):
        path = workdir / "held-out" / f"set-{index}.extxyz"
        frames = min(frames, md_steps // SYSTEM.md.dump_interval)
        if not path.exists():
            stamp(f"held-out set '{name}': teacher MD, {md_steps} steps, {frames} frames")
            md = SYSTEM.md.model_copy(update={"temperature": temperature, "steps": md_steps})
            start = water_box(molecules, density_g_cm3=density, seed=box_seed)
            teacher = SYSTEM.teacher()
            structures = benchmark_frames(start, teacher.calculator(), BenchmarkGeneration(frames=frames, md=md), box_seed)
            labels = labelled(teacher, structures)
            write_structures(path, [atoms for atoms in labels if atoms is not None])
        sets[name] = read_structures(path, require_labels=True)
    return sets


def base_set(folder: Path, calibration_dir: Path, seed: int, size: int) -> dict[str, Path]:
    """The base set (``size`` frames of the calibration study's pool) and its calibration frames."""
    files = teacher_frames(calibration_dir / SYSTEM.name / f"seed-{seed}", SYSTEM, seed)
    base = folder / "base-set.extxyz"
    if not base.exists():
        pool = read_structures(files["pool"])
        write_structures(base, [pool[k] for k in random_frames(len(pool), size, seeded(seed, 500))])
    return {"pool": base, "calibration": files["calibration"]}


def md_pool(folder: Path, committee, start, temperature: float, seed: int) -> list:
    """Frames of committee-mean MD at ``temperature`` (the teacher MD's settings otherwise; cached)."""
    from cagoflow.engines.ase_md import run_md

    path = folder / f"pool-{temperature:.0f}K.extxyz"
    if not path.exists():
        stamp(f"committee MD at {temperature:.0f} K for the pool")
        result = run_md(start, committee, SYSTEM.md.model_copy(update={"temperature": temperature}), seed=seed)
        if len(result.frames) < 1:
            raise SystemExit(f"committee MD at {temperature:.0f} K gave no frame: {result.reason}")
        write_structures(path, result.frames)
    return read_structures(path)


# --- arms -----------------------------------------------------------------------------------------


def choose(folder: Path, seed: int, committee, calibration_file: Path, labels: int, arms_made: tuple[str, ...] = ARMS) -> dict[str, dict]:
    """The added structures of the arms in ``arms_made``, teacher-labelled (cached per arm), and
    what CAGO did."""
    base = read_structures(folder / "base-set.extxyz")
    cool = md_pool(folder, committee, base[-1], 300.0, seeded(seed, 700))
    hot = md_pool(folder, committee, base[-1], 500.0, seeded(seed, 701))
    picks = random_frames(len(cool), labels, seeded(seed, 702))
    sigma = structure_force_uncertainty(committee.predict(cool), "max_atom")
    calibration = CommitteeCalibration.load(calibration_file).for_cago()
    candidates = {
        "unpushed": lambda: ([cool[k] for k in picks], None),
        "cago-relative": lambda: push([cool[k] for k in picks], committee, calibration, {"relative": RELATIVE}),
        "cago-absolute": lambda: push([cool[k] for k in picks], committee, calibration, ABSOLUTE),
        "max-uncertainty": lambda: ([cool[k] for k in max_uncertainty_frames(sigma, labels)], None),
        "random-500K": lambda: ([hot[k] for k in random_frames(len(hot), labels, seeded(seed, 703))], None),
    }
    teacher = SYSTEM.teacher()
    arms = {}
    for arm in arms_made:
        make = candidates[arm]
        path, record = folder / arm / "added.extxyz", folder / arm / "added.json"
        if not record.exists():
            stamp(f"seed {seed}: the {arm} structures")
            structures, runs = make()
            labels_ = labelled(teacher, structures)
            kept = [atoms for atoms in labels_ if atoms is not None]
            write_structures(path, kept)
            atomic_write_json(record, {"labelled": len(kept), "teacher_failed": len(labels_) - len(kept), "cago": cago_records(runs, labels_, committee)})
        arms[arm] = read_json(record)
    return arms


def push(structures: list, committee, calibration, delta) -> tuple[list, list]:
    """CAGO with the default safeguards and at most 80 steps (as in the calibration study)."""
    runs = run_cago_batch(structures, committee, calibration, CagoSettings(delta=delta, max_steps=80))
    return [run.atoms for run in runs], runs


def cago_records(runs, labels: list, committee) -> list[dict] | None:
    """Per pushed structure: reason, direction, δ asked and used, steps, true error / δ (eV/Å)."""
    if runs is None:
        return None
    records = []
    for run, true in zip(runs, true_errors(committee, labels)):
        records.append({
            "reason": run.reason, "direction": run.direction, "steps": run.n_steps, "requested_delta": float(run.requested_delta),
            "delta": None if run.delta is None else float(run.delta), "start_sigma_cal": float(run.start_sigma_cal),
            "true_error": true, "hit": None if true is None or run.delta is None else true / run.delta,
            "max_displacement": float(run.max_displacement),
        })  # fmt: skip
    return records


# --- scores ---------------------------------------------------------------------------------------


def scores(committee_file: Path, sets: dict[str, list]) -> dict[str, float]:
    """Force RMSE of the committee mean on every held-out set, eV/Å, and the OOD mean."""
    committee = load_committee_spec(committee_file).build()
    result = {name: float(model_errors(committee.predict(structures), structures).force_rmse) for name, structures in sets.items()}
    result["out of distribution (mean of 4)"] = float(np.mean([value for name, value in result.items() if name != IN_DISTRIBUTION]))
    return result


def stability(folder: Path, committee_file: Path, start, members: int, steps: int, seed: int, workers: int) -> list[dict]:
    """Members 0 … ``members``-1 each alone in LAMMPS NVT at 600 K (cached in ``folder``)."""
    path = folder / f"stability-{steps}.json"
    if path.exists():
        return read_json(path)
    models = [Path(model) for model in load_committee_spec(committee_file).models]

    def one(m: int) -> dict:
        run = folder / f"stability-{steps}" / f"member-{m:02d}"
        pair = [models[m], models[(m + 1) % len(models)]]  # member m drives; the other only samples the deviation
        spec = write_committee(run / "committee.yaml", [p.resolve() for p in pair])
        stage = MDStage(ensemble="nvt", temperature=600.0, steps=steps, timestep=0.5, dump_interval=100, thermostat_damping=50)
        result = run_lammps(start, spec, stage, run / "md", seed=seeded(seed, 800 + m), mode="native", driver="first")
        return {"member": m, "stable": bool(result.stable), "steps_done": int(result.steps_done), "reason": result.reason}

    stamp(f"stability: {members} members of {folder.name}, {steps} steps at 600 K")
    with ThreadPoolExecutor(workers) as pool:
        records = list(pool.map(one, range(members)))
    atomic_write_json(path, records)
    return records


def run_seed(args, seed: int, sets: dict[str, list]) -> dict:
    """One seed: base, arms, fine-tuning, scores (cached in ``<workdir>/seed-<s>``)."""
    folder = args.workdir / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    stamp(f"[bold]seed {seed}[/] → {folder}")
    files = base_set(folder, args.calibration_dir, seed, args.base)
    base_frames = read_structures(files["pool"])
    base = train_committee(folder / "base" / "committee.yaml", base_frames, SYSTEM, args.members, args.steps, seed, workers=args.workers)
    committees = {"base": base}
    if seed in args.convergence_seeds:
        committees["base, 2 × steps"] = train_committee(folder / "base-2x" / "committee.yaml", base_frames, SYSTEM, args.members, 2 * args.steps, seed, workers=args.workers)
    calibration = calibrate(folder / "base", base, files) / "calibration.json"
    committee = load_committee_spec(base).build()
    arms = ("unpushed",) if args.gate_only else ARMS
    added = choose(folder, seed, committee, calibration, args.labels, arms)
    if args.from_scratch:  # the arms train as the base did; the control is the base itself
        system, steps, init = SYSTEM, args.steps, None
        committees[CONTROL] = base
    else:
        start_lr, stop_lr = args.finetune_lr
        system = replace(SYSTEM, hyperparameters={**SYSTEM.hyperparameters, "learning_rate": {"start_lr": start_lr, "stop_lr": stop_lr}})
        steps, init = args.finetune_steps, [folder / "base" / model for model in load_committee_spec(base).models]
    for name in (CONTROL, *arms):
        if name not in committees:
            frames = base_frames + (read_structures(folder / name / "added.extxyz") if name in ARMS else [])
            committees[name] = train_committee(
                arms_folder(folder, args) / name / "committee.yaml", frames, system, args.members, steps, seed, init_models=init, workers=args.workers
            )  # fmt: skip
    result = {
        "seed": seed, "added": added, "training_set": {name: args.base + (added[name]["labelled"] if name in ARMS else 0) for name in committees},
        "training": {"from_scratch": args.from_scratch, "steps": steps, "learning_rate": None if args.from_scratch else list(args.finetune_lr)},
        "validity_limit": CommitteeCalibration.load(calibration).force_validity_limit,
        "committees": {name: str(path) for name, path in committees.items() if name != "base, 2 × steps"},
        "scores": {name: scores(path, sets) for name, path in committees.items()}, "seconds": time.perf_counter() - begin,
    }  # fmt: skip
    atomic_write_json(folder / "results.json", result)
    stamp(f"seed {seed}: scored in {time.perf_counter() - begin:.0f} s")
    return result


def arms_folder(folder: Path, args) -> Path:
    """Where a seed's arm committees live: one folder per way of training them (fine-tuning's
    steps and rate, or from scratch and its steps)."""
    if args.from_scratch:
        return folder / f"scratch-{args.steps}-steps"
    return folder / f"finetuned-{args.finetune_steps}-steps-lr{args.finetune_lr[0]:g}"


def run_stability(args, seed: int, result: dict, start) -> dict:
    folder = args.workdir / f"seed-{seed}"
    places = {name: Path(path).parent for name, path in result["committees"].items()}
    result["stability"] = {
        name: stability(place, place / "committee.yaml", start, *args.stability, seed, args.workers) for name, place in places.items()
    }  # the control of --from-scratch is the base's folder: run once, read from the cache
    atomic_write_json(folder / "results.json", result)
    return result


# --- statistics -----------------------------------------------------------------------------------


def sign_test(wins: int, n: int) -> float:
    """One-sided p of at least ``wins`` successes in ``n`` fair coin flips."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def bootstrap_interval(values: list[float], draws: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values``, resampled with replacement."""
    values_ = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values_[rng.integers(0, len(values_), size=(draws, len(values_)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired(results: list[dict], arm: str, rival: str, score: str) -> dict:
    """``arm`` − ``rival`` per seed on ``score``: differences (meV/Å), relative differences, wins
    (seeds where ``arm`` is lower), the sign test and the bootstrap interval of the mean."""
    mine = np.array([1000 * r["scores"][arm][score] for r in results])
    theirs = np.array([1000 * r["scores"][rival][score] for r in results])
    difference, relative = (mine - theirs).tolist(), ((mine - theirs) / theirs).tolist()
    wins = int(np.sum(mine < theirs))
    return {
        "differences": difference, "relative": relative, "mean": float(np.mean(difference)), "interval": bootstrap_interval(difference),
        "relative_mean": float(np.mean(relative)), "relative_interval": bootstrap_interval(relative),
        "wins": wins, "n": len(results), "p": sign_test(wins, len(results)),
    }  # fmt: skip


def gate(results: list[dict]) -> dict:
    """The gate and the convergence check (meV/Å): the base's in-distribution spread over seeds
    (max − min), the mean over seeds of control − unpushed in distribution, and how much doubling
    the base's steps changes its in-distribution RMSE."""
    base_id = [1000 * r["scores"]["base"][IN_DISTRIBUTION] for r in results]
    spread = max(base_id) - min(base_id)
    gains = [1000 * (r["scores"][CONTROL][IN_DISTRIBUTION] - r["scores"]["unpushed"][IN_DISTRIBUTION]) for r in results]
    doubled = [r for r in results if "base, 2 × steps" in r["scores"]]
    change = [1000 * abs(r["scores"]["base, 2 × steps"][IN_DISTRIBUTION] - r["scores"]["base"][IN_DISTRIBUTION]) for r in doubled]
    return {
        "base_in_distribution_spread": spread, "unpushed_gains": gains, "unpushed_gain": float(np.mean(gains)),
        "informative": float(np.mean(gains)) > spread,
        "convergence": {"seeds": [r["seed"] for r in doubled], "changes": change, "converged": bool(change) and max(change) < spread},
    }  # fmt: skip


def decision(results: list[dict]) -> dict:
    """The pre-registered rule (docs/validation.md §5), with the gate and the convergence check."""
    ood = "out of distribution (mean of 4)"
    checks = gate(results)
    comparisons = {
        f"{arm} − {rival}": {score: paired(results, arm, rival, score) for score in (ood, IN_DISTRIBUTION)}
        for arm in (PRIMARY, *SECONDARY) for rival in RIVALS
    }  # fmt: skip
    beats = all(comparisons[f"{PRIMARY} − {rival}"][ood]["wins"] >= len(results) - 1 for rival in RIVALS)
    no_loss = comparisons[f"{PRIMARY} − unpushed"][IN_DISTRIBUTION]["relative_interval"][1] < MAX_ID_LOSS
    verdict = (
        "uninformative: adding the unpushed frames does not lower the in-distribution error below the control's by more than the base's seed spread"
        if not checks["informative"]
        else ("CAGO's push helps" if beats and no_loss else "CAGO's push is not shown to help")
    )
    return {
        **checks, "comparisons": comparisons, "beats_both_out_of_distribution": beats, "no_loss_in_distribution": no_loss,
        "seeds_needed": max(len(results) - 1, 1), "verdict": verdict,
    }  # fmt: skip


# --- output ---------------------------------------------------------------------------------------


def _span(values: list[float]) -> str:
    return f"{np.mean(values):.0f} [{min(values):.0f}–{max(values):.0f}]" if values else "—"


def score_table(results: list[dict]) -> Table:
    names = list(dict.fromkeys(name for r in results for name in r["scores"]))
    table = Table(title=f"Force RMSE of the committee mean (meV/Å): mean [min–max] over {len(results)} seeds")
    for column in ("committee", "training set", *HELD_OUT, "out of distribution (mean of 4)", "stable members"):
        table.add_column(column, justify="right")
    for name in names:
        rows = [r for r in results if name in r["scores"]]
        sizes = sorted({r["training_set"][name] for r in rows})
        stable = [s for r in rows for s in r.get("stability", {}).get(name, [])]
        table.add_row(
            name, "/".join(map(str, sizes)),
            *(_span([1000 * r["scores"][name][score] for r in rows]) for score in (*HELD_OUT, "out of distribution (mean of 4)")),
            f"{sum(s['stable'] for s in stable)}/{len(stable)}" if stable else "—",
        )  # fmt: skip
    return table


def cago_table(results: list[dict]) -> Table:
    table = Table(title="What CAGO did in the two CAGO arms (summed over seeds; hit = true error / δ used, over the reached)")
    for column in ("arm", "pushed", "reached", "directions", "not pushed", "mean hit", "median hit", "steps (median)"):
        table.add_column(column, justify="right")
    for arm in ("cago-relative", "cago-absolute"):
        records = [c for r in results for c in (r["added"][arm]["cago"] or [])]
        pushed = [c for c in records if c["delta"] is not None]
        hits = [c["hit"] for c in pushed if c["reason"] == "reached" and c["hit"] is not None]
        directions = {}
        for c in pushed:
            directions[c["direction"]] = directions.get(c["direction"], 0) + 1
        not_pushed = {}
        for c in records:
            if c["delta"] is None:
                not_pushed[c["reason"]] = not_pushed.get(c["reason"], 0) + 1
        table.add_row(
            arm, f"{len(pushed)}/{len(records)}", f"{sum(c['reason'] == 'reached' for c in pushed)}/{len(pushed)}",
            ", ".join(f"{k} {v}" for k, v in sorted(directions.items())) or "—", ", ".join(f"{k} {v}" for k, v in sorted(not_pushed.items())) or "—",
            f"{np.mean(hits):.2f}" if hits else "—", f"{np.median(hits):.2f}" if hits else "—",
            f"{np.median([c['steps'] for c in pushed]):.0f}" if pushed else "—",
        )  # fmt: skip
    return table


def decision_table(verdict: dict) -> Table:
    table = Table(title="Paired differences, arm − rival (meV/Å; negative: the arm is better), over seeds")
    for column in ("comparison", "score", "per seed", "mean [95 % bootstrap]", "relative mean [95 %]", "arm better in", "sign test p (one-sided)"):
        table.add_column(column, justify="right")
    for name, by_score in verdict["comparisons"].items():
        for score, p in by_score.items():
            table.add_row(
                name, score, ", ".join(f"{d:+.0f}" for d in p["differences"]), f"{p['mean']:+.1f} [{p['interval'][0]:+.1f}, {p['interval'][1]:+.1f}]",
                f"{100 * p['relative_mean']:+.1f} % [{100 * p['relative_interval'][0]:+.1f}, {100 * p['relative_interval'][1]:+.1f}]",
                f"{p['wins']}/{p['n']}", f"{p['p']:.2f}",
            )  # fmt: skip
    return table


def plot(results: list[dict], verdict: dict, path: Path) -> Path:
    """Left, middle: in- and out-of-distribution RMSE from the base (16) to each arm (24), mean
    over seeds, bars min–max. Right: the primary arm's paired OOD difference per seed."""
    from matplotlib.figure import Figure

    from cagoflow.io import write_figure

    figure = Figure(figsize=(12.0, 3.8))
    axes = figure.subplots(1, 3)
    for column, score in enumerate((IN_DISTRIBUTION, "out of distribution (mean of 4)")):
        base = np.array([1000 * r["scores"]["base"][score] for r in results])
        for k, arm in enumerate(FINETUNED):
            values = np.array([1000 * r["scores"][arm][score] for r in results])
            size = np.mean([r["training_set"][arm] for r in results])
            x = np.array([np.mean([r["training_set"]["base"] for r in results]), size]) + 0.15 * (k - 3)
            means = np.array([base.mean(), values.mean()])
            spans = [[means[0] - base.min(), means[1] - values.min()], [base.max() - means[0], values.max() - means[1]]]
            axes[column].errorbar(x, means, yerr=spans, marker="o", capsize=3, color=f"C{k}", label=arm)
        axes[column].set_xlabel("training structures (base set + added)")
        axes[column].set_ylabel(f"force RMSE, {score} (meV/Å)")
    axes[0].legend(fontsize=7)
    ood = "out of distribution (mean of 4)"
    for k, rival in enumerate(RIVALS):
        p = verdict["comparisons"][f"{PRIMARY} − {rival}"][ood]
        axes[2].plot([r["seed"] for r in results], p["differences"], "o", color=f"C{k}", label=f"{PRIMARY} − {rival}")
    axes[2].axhline(0, color="black", lw=1)
    axes[2].set_xlabel("seed")
    axes[2].set_ylabel("paired OOD difference (meV/Å)")
    axes[2].legend(fontsize=7)
    figure.suptitle(f"Paired active learning, 16 H2O, GFN1-xTB teacher, {len(results)} seeds; bars: min–max over seeds\n{verdict['verdict']}", fontsize=9)
    figure.tight_layout()
    return write_figure(figure, path)


def report_gate(checks: dict) -> None:
    convergence = checks["convergence"]
    if not convergence["seeds"]:
        console.print("convergence: not checked in this run (no --convergence-seeds)")
    else:
        console.print(
            f"convergence: doubling the base's steps changes its in-distribution RMSE by {', '.join(f'{c:.1f}' for c in convergence['changes'])} meV/Å "
            f"(seeds {convergence['seeds']}); the base's spread over seeds is {checks['base_in_distribution_spread']:.1f} meV/Å → "
            f"{'converged' if convergence['converged'] else 'NOT converged'}", highlight=False,
        )  # fmt: skip
    console.print(
        f"gate: the unpushed frames lower the in-distribution RMSE below the control's by {', '.join(f'{g:.1f}' for g in checks['unpushed_gains'])} "
        f"(mean {checks['unpushed_gain']:.1f}) meV/Å (needed: more than {checks['base_in_distribution_spread']:.1f}) → "
        f"{'informative' if checks['informative'] else 'UNINFORMATIVE'}", highlight=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="default runs/science/paired-al (--quick: runs/science/paired-al-quick)")
    parser.add_argument("--calibration-dir", type=Path, default=None, help="the calibration study's folder (default runs/science/calibration)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600, help="training steps of the base members")
    parser.add_argument("--finetune-steps", type=int, default=300, help="training steps of every arm's fine-tuning (from the base members)")
    parser.add_argument("--finetune-lr", type=float, nargs=2, default=[0.001, 0.0001], metavar=("START", "STOP"), help="the fine-tuning's learning rate")
    parser.add_argument("--base", type=int, default=BASE_FRAMES, help="frames in the base set")
    parser.add_argument("--labels", type=int, default=8, help="structures every arm adds")
    parser.add_argument("--convergence-seeds", type=int, nargs="*", default=[0, 1], help="seeds whose base is also trained 2 × --steps")
    parser.add_argument("--stability", type=int, nargs=2, default=[1, 2000], metavar=("MEMBERS", "STEPS"), help="members per committee and 0.5 fs steps at 600 K (0 0: none)")
    parser.add_argument("--workers", type=int, default=2, help="trainings and stability runs at a time (one process each)")
    parser.add_argument("--held-out-only", action="store_true", help="make the held-out sets and stop (before seeds run in parallel calls)")
    parser.add_argument("--from-scratch", action="store_true", help="the arms train from scratch on the grown set as the base did (--steps); the control is the base")
    parser.add_argument("--gate-only", action="store_true", help="only the base, the control and the unpushed arm: print the gate (no CAGO arm is made)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the chain, not a result")
    args = parser.parse_args()
    if args.quick:
        global SYSTEM
        SYSTEM = SYSTEM.sized(Frames(pool=8, calibration=8, starts=2), 40)
        args.steps, args.finetune_steps, args.base, args.labels, args.members, args.stability = 20, 10, 6, 2, 3, [1, 100]
        args.seeds, args.convergence_seeds = args.seeds[:2], args.convergence_seeds[:1]
    args.workdir = args.workdir or Path("runs/science/paired-al-quick" if args.quick else "runs/science/paired-al")
    args.calibration_dir = args.calibration_dir or Path("runs/science/calibration-quick" if args.quick else "runs/science/calibration")
    facts = header()
    console.print(f"[bold]paired_active_learning[/]: {facts['command']}\n  {facts['date']} on {facts['host']}, commit {facts['commit']}", highlight=False)
    begin = time.perf_counter()
    sets = held_out_sets(args.workdir, SYSTEM.md.steps if args.quick else HELD_OUT_MD_STEPS)
    if args.held_out_only:
        return
    results = [run_seed(args, seed, sets) for seed in args.seeds]
    if args.gate_only:
        console.print(score_table(results))
        report_gate(gate(results))
        return
    if args.stability[0] > 0:
        start = sets[IN_DISTRIBUTION][0]
        results = [run_stability(args, r["seed"], r, start) for r in results]
    verdict = decision(results)
    console.print(score_table(results))
    console.print(cago_table(results))
    console.print(decision_table(verdict))
    report_gate(verdict)
    console.print(f"[bold]verdict[/]: {verdict['verdict']}")
    summary = {**facts, "seeds": args.seeds, "quick": args.quick, "sizes": {k: getattr(args, k) for k in ("members", "steps", "finetune_steps", "from_scratch", "base", "labels", "stability")},
               "results": results, "decision": verdict}  # fmt: skip
    console.print(f"summary: {atomic_write_json(args.workdir / 'summary.json', summary)}")
    console.print(f"plot: {plot(results, verdict, args.workdir / 'paired-active-learning.png')}")
    console.print(f"wall time of this run: {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
