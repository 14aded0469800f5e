"""Calibration and target control, and committee size (Cezar et al., Figs. 2 and 3) at small scale.

Does calibrated CAGO land at the target error δ, and what do a small committee and the
safeguards change? On two systems (``--system``, facts in :mod:`systems`), for one or more seeds:

- ``water``: 16 H2O, GFN1-xTB (tblite) as teacher, MD at 300 K — the project's own study;
- ``copper``: 32-atom fcc Cu, ASE's EMT as teacher, MD at 500 K — a metal CAGO was not tuned on.

1. Teacher: three MD runs driven by it give the training pool, the calibration frames (rattled
   by 0–0.06 Å in turn so that the errors span the range CAGO goes to) and the CAGO starting
   frames; the teacher labels them all.
2. Students: ``--members`` tiny DeePMD-kit members, each trained on its own bootstrap resample of
   the training pool.
3. ``cagoflow calibrate`` (the CLI) fits the full committee and the subset (0, 1, 2) on the
   calibration frames, with their out-of-sample validity limits, and draws their reliability
   diagrams.
4. CAGO, through :func:`cagoflow.cago.run_cago_batch` (what ``cagoflow cago`` runs), pushes the
   starting frames to δ = 1.5, 2 and 3 × their own true error ("MD-frame error") and to
   1.5 × the validity limit, in these set-ups (safeguards: the defaults, i.e. close-contact guard,
   step limit 0.1 Å, trust region 3 × the RMS thermal displacement of the teacher MD frames the
   starts are, packing guard):

   - full committee calibrated; full committee uncalibrated (σ̂ itself, a = 1, b = 1);
   - the subset with the full committee's law; the subset with its own law;
   - the subset with its own law, clamped: δ clamped to the subset's real (out-of-sample)
     validity limit, as campaigns and the CLI do; without a limit its structures come back
     unpushed (``no_limit``) and are counted as such;
   - the subset with its own law without the trust region, without the packing guard, and with
     no safeguards at all (none of them, step limit 1 Å): what each safeguard does to the hit;
   - with ``--follow-cago``: the full committee under a law fitted on its calibration frames plus
     the teacher-labelled CAGO structures of the OTHER seeds' calibrated full committees (at 1.5,
     2 and 3 × their MD error) — calibration data that cover where CAGO goes, as a campaign
     routes CAGO structures into the next calibration, with nothing from this seed's starts.
   - with ``--trust-from-others``: the full committee with its trust radius set to the largest
     displacement up to which the OTHER seeds' labelled CAGO structures (the same rows) keep
     error / σ_cal from outgrowing the calibration's band (:mod:`cagoflow.walk_validity`), and
     the 3-member subset with its own law under the same radius; a seed whose others give no
     such displacement is refused.

   A table printed after the checks shows, over every seed of the call, the full committee's
   error / σ_cal where its walks stopped against the largest displacement of an atom from its
   start: how far along a walk the calibration holds.

   Every set-up but the clamped one uses δ as asked: CAGO is given ``validity_limit = math.inf``
   (trust the law everywhere), so that each row shows what that δ gives.
5. The teacher labels every CAGO structure; the hit is true error / δ (true error: RMS over atoms
   of the per-atom RMSE over the CAGO members, the paper's definition). Hits are taken over the
   structures that REACHED δ only; those that stopped before it (a safeguard, max_steps, ...) are
   counted apart ("reached n/N"), and so are the structures not pushed (``no_room``, ``no_limit``).
   For the structures a limit stopped before δ the table gives true error / σ_cal at the point
   where they stopped (mean [min–max] over structures): whether the calibration still holds there.

Every seed (``--seed`` or ``--seeds 0 1 2``) draws everything random anew (teacher MD and its
starting structure, rattles, bootstrap resamples, training seeds; seed 0 draws what the earlier
single-seed study drew) and runs in its own folder ``<workdir>/<system>/seed-<s>``:
``results.json``, ``calibration-target.png``, the calibrations and every intermediate file.
Every step is cached there, so a second run resumes (delete a file to redo its step); a CAGO
result is redone by itself when the committee, the calibrations or the starts it was computed
with have changed, and a folder refuses a run of other sizes (``sizes.json``). The combined
table over the seeds of a call (per set-up and δ: mean over seeds of each seed's mean and median
hit, their spread min–max over seeds, counts summed) goes to ``<workdir>/<system>/summary.json``
and ``calibration-target.png``, with the issue's acceptance checks. ``--quick`` (frames 8/8/3,
teacher MD 60 steps; default workdir ``runs/science/calibration-quick``) is a smoke test of the
whole chain, not a result.

    python benchmarks/science/calibration_target.py --system water --seeds 0 1 2 [--workdir runs/science/calibration]
    python benchmarks/science/calibration_target.py --system copper --seeds 0 1 2
    python benchmarks/science/calibration_target.py --system water --seed 1 --core   # the core set-ups only
    python benchmarks/science/calibration_target.py --system water --seeds 0 1 2 --core --follow-cago   # after all seeds ran
    python benchmarks/science/calibration_target.py --system water --seed 0 --core --trust-from-others   # after all seeds ran
    python benchmarks/science/calibration_target.py --quick --members 4 --steps 60 --seeds 0 1   # a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from cagoflow.apps.commands import thread_environment
from cagoflow.backends import TrainingSettings, get_backend, train
from cagoflow.cago import CagoCalibration, CagoSettings, TrustRegion, run_cago_batch, true_force_error
from cagoflow.calibration import CommitteeCalibration, PowerLaw
from cagoflow.evaluation import BenchmarkGeneration, benchmark_frames
from cagoflow.io import atomic_write_json, atomic_write_text, read_json, read_structures, write_structures
from cagoflow.models import load_committee_spec
from cagoflow.walk_validity import WalkCheck, check_walks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from systems import SYSTEMS, Frames, System  # noqa: E402

SUBSET = (0, 1, 2)
MULTIPLES = (1.5, 2.0, 3.0)  # δ as multiples of the MD-frame error
ABOVE_LIMIT = 1.5  # and δ = this × the validity limit
MAX_STEPS = 80  # CAGO iterations per structure at most
#: ``--quick``: sizes for a smoke test of the whole chain, not for results.
QUICK_FRAMES, QUICK_MD_STEPS = Frames(pool=8, calibration=8, starts=3), 60
#: The issue's acceptance checks: the full committee's mean and median hit within this band at
#: 1.5, 2 and 3 × the MD error; the subset (own law, safeguards on) at a mean hit at most this at 3 ×.
FULL_BAND = (0.8, 1.2)
MIN_SEEDS = 3
SUBSET_MEAN_AT_MOST = {"water": 1.3, "copper": 1.5}
#: Set-ups compared in the safeguards table (all on, one off at a time, none).
SAFEGUARD_ROWS = ("subset, own law", "subset, own law, no trust region", "subset, own law, no packing guard", "subset, own law, no safeguards")
NOT_PUSHED = ("no_room", "no_limit")
#: ``--core``: the set-ups the acceptance checks and the paper's heuristic (calibrate with many
#: members, push with few: Fig. 3 b) need.
CORE_SETUPS = ("full, calibrated", "subset, full law", "subset, own law")
FULL = CORE_SETUPS[0]
#: ``--follow-cago``: the full committee under a law fitted on its calibration frames plus the
#: other seeds' CAGO structures (:func:`following_calibration`).
FOLLOWING = "full, calibrated with CAGO structures"
#: ``--trust-from-others``: the full committee with the trust radius set to where the OTHER
#: seeds' labelled CAGO structures show the calibration still holding (:func:`walk_check`).
TRUSTED = "full, trust radius from other seeds"
#: ``--trust-from-others``: the 3-member subset with its own law under the same radius (judged on
#: the full committee's walks, pushed by the subset: as a campaign whose CAGO uses a subset).
TRUSTED_SUBSET = "subset, own law, trust radius from other seeds"
console = Console(width=200)
# One thread and no DataLoader worker processes per trainer (DeePMD-kit's NUM_WORKERS): on a small
# shared machine the workers' start-up and the threads' contention cost more than they give.
for _name, _value in {**thread_environment(1), "NUM_WORKERS": "0"}.items():
    os.environ.setdefault(_name, _value)
logging.getLogger("cagoflow.cago").setLevel(logging.ERROR)  # the clamp warns per structure; the tables say it once


def stamp(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False)


def seeded(seed: int, k: int) -> int:
    """The seed of random draw ``k`` under the study's ``seed`` (seed 0: ``k`` itself, as before)."""
    return 1000 * seed + k


# --- teacher, students, calibration ---------------------------------------------------------------


def labelled(teacher, structures) -> list:
    """Copies of ``structures`` labelled by the teacher (energy, forces, stress); None where it failed."""
    results = [teacher.compute(atoms) for atoms in structures]
    return [result.labelled() if result.ok else None for result in results]


def true_errors(committee, labels: list) -> list[float | None]:
    """Each labelled structure's true force error under ``committee`` (eV/Å; None where the
    teacher failed), in one committee call."""
    done = [k for k, atoms in enumerate(labels) if atoms is not None]
    errors: list[float | None] = [None] * len(labels)
    if done:
        prediction = committee.predict([labels[k] for k in done])
        for position, k in enumerate(done):
            errors[k] = true_force_error(prediction.structure_forces(position), labels[k].get_forces())
    return errors


def check_sizes(workdir: Path, facts: dict) -> None:
    """Refuse to mix sizes in one folder: its cached files hold the sizes of its first run."""
    path = workdir / "sizes.json"
    if path.exists():
        before = read_json(path)
        if before != facts:
            changed = ", ".join(f"{key} {before.get(key)} → {facts.get(key)}" for key in sorted(set(before) | set(facts)) if before.get(key) != facts.get(key))
            raise SystemExit(f"{workdir} holds a run of other sizes ({changed}): give another --workdir")
    else:
        atomic_write_json(path, facts)


def teacher_frames(workdir: Path, system: System, seed: int) -> dict[str, Path]:
    """Training pool, calibration frames and CAGO starts, each from its own teacher MD (cached)."""
    files = {name: workdir / f"{name}.extxyz" for name, _ in system.frames.items()}
    if all(path.exists() for path in files.values()):
        return files
    teacher = system.teacher()
    md = system.md
    for index, (name, count) in enumerate(system.frames.items()):
        draw = seeded(seed, index)
        stamp(f"teacher MD for the {name} frames ({system.title}, {md.steps} steps, {system.teacher_name})")
        frames = benchmark_frames(system.build(draw), teacher.calculator(), BenchmarkGeneration(frames=count, md=md), draw)
        if name == "calibration":  # reach the errors CAGO goes to: rattle by each of system.rattles in turn
            for k, atoms in enumerate(frames):
                atoms.rattle(stdev=system.rattles[k % len(system.rattles)], seed=seeded(seed, 100 + k))
        labels = labelled(teacher, frames)
        if any(atoms is None for atoms in labels):
            raise SystemExit(f"the teacher failed on {labels.count(None)} of the {name} frames")
        write_structures(files[name], labels)
    return files


def students(workdir: Path, system: System, pool: Path, members: int, steps: int, seed: int) -> Path:
    """A committee file of ``members`` tiny DeePMD members on bootstrap resamples of the pool (cached)."""
    return train_committee(workdir / "committee.yaml", read_structures(pool), system, members, steps, seed)


def train_committee(
    committee: Path, frames: list, system: System, members: int, steps: int, seed: int, init_models: list[Path] | None = None, workers: int = 2
) -> Path:
    """``committee`` (a committee file): ``members`` tiny DeePMD members in ``students/`` beside it,
    member m trained ``steps`` steps on its own bootstrap resample of ``frames`` (draw
    ``seeded(seed, m)``, training seed ``seeded(seed, m + 1)``: equal for equal ``seed`` and frame
    count), from ``init_models[m]`` when given (fine-tuning), ``workers`` at a time (cached)."""
    if committee.exists():
        return committee
    backend = get_backend("deepmd")

    def member(m: int) -> str:
        rng = np.random.default_rng(seeded(seed, m))
        chosen = rng.choice(len(frames), size=len(frames), replace=True)
        left_out = sorted(set(range(len(frames))) - set(chosen.tolist()))[:4] or [0]
        folder = committee.parent / "students" / f"member-{m:02d}"
        train_file = write_structures(folder / "train.extxyz", [frames[k] for k in chosen])
        validation_file = write_structures(folder / "validation.extxyz", [frames[k] for k in left_out])
        result = backend.read_training_result(folder) if folder.exists() else None
        if result is None or result.status != "success" or result.metrics.get("steps") != steps:  # else: trained before
            stamp(f"training {committee.parent.name} member {m + 1}/{members} ({steps} steps{', fine-tuned' if init_models else ''})")
            settings = TrainingSettings(
                steps=steps, seed=seeded(seed, m + 1), type_map=system.type_map, hyperparameters=system.hyperparameters,
                init_model=None if init_models is None else init_models[m],
            )  # fmt: skip
            result = train(backend, train_file, validation_file, folder, settings)
        if result.status != "success":
            raise SystemExit(f"{committee.parent.name} member {m} did not train: {result.message}")
        return str(Path(result.model).resolve().relative_to(committee.parent.resolve()))

    with ThreadPoolExecutor(workers) as pool:  # each member trains in its own process
        models = list(pool.map(member, range(members)))
    return write_committee(committee, models)


def write_committee(path: Path, models: list) -> Path:
    """A DeePMD committee file listing ``models`` (paths relative to it, or absolute)."""
    return atomic_write_text(path, "backend: deepmd\nmodels:\n" + "".join(f"  - {model}\n" for model in models))


def calibrate(workdir: Path, committee: Path, files: dict[str, Path], name: str = "calibration", subset: bool = True) -> Path:
    """``cagoflow calibrate`` on the calibration frames, full committee and (``subset``) subset,
    into ``workdir/name`` (cached)."""
    folder = workdir / name
    if not (folder / ("calibration-subset.json" if subset else "calibration.json")).exists():
        stamp(f"cagoflow calibrate (full committee{' and subset ' + ','.join(map(str, SUBSET)) if subset else ''}) → {name}")
        command = [
            str(Path(sys.executable).with_name("cagoflow")), "calibrate", "--committee", str(committee),
            "--structures", str(files["calibration"]), "--output", str(folder), "--training", str(files["pool"]),
        ]  # fmt: skip
        subprocess.run(command + (["--subset", ",".join(map(str, SUBSET))] if subset else []), check=True)
    return folder


def following_calibration(workdir: Path, committee: Path, files: dict[str, Path], seed: int) -> Path | None:
    """The full committee calibrated on its calibration frames plus the teacher-labelled CAGO
    structures that the OTHER seeds' calibrated full committees made (at 1.5, 2 and 3 × their MD
    error): calibration data that cover where CAGO goes, as a campaign routes its CAGO
    structures into the next calibration, without any structure from this seed's own starts.
    None when no other seed has them yet; cached in ``workdir/calibration-cago``."""
    folder = workdir / "calibration-cago"
    if not (folder / "calibration.json").exists():
        pushed = [
            atoms for m in MULTIPLES for path in sorted(workdir.parent.glob(f"seed-*/cago/{_cago_file(f'{FULL} | {m:g} × MD error')}"))
            if path.parent.parent.name != f"seed-{seed}" for atoms in read_structures(path)
        ]  # fmt: skip
        if not pushed:
            return None
        frames = write_structures(folder / "frames.extxyz", read_structures(files["calibration"]) + pushed)
        stamp(f"calibration frames + {len(pushed)} CAGO structures of the other seeds")
        calibrate(workdir, committee, {"calibration": frames, "pool": files["pool"]}, "calibration-cago", subset=False)
    return folder / "calibration.json"


def displaced(results_by_seed: dict[int, dict]) -> list[dict]:
    """The labelled CAGO structures of the full committee at 1.5, 2 and 3 × the MD error, each
    with its seed and start (``group``), largest displacement from the start (Å), true error
    and σ_cal where it stopped (eV/Å)."""
    return [
        {"group": f"{seed}/{k}", "displacement": s["max_displacement"], "true_error": s["true_error"], "sigma_cal": s["sigma_cal_rms"]}
        for seed, results in results_by_seed.items() for m in MULTIPLES
        for k, s in enumerate(results.get(f"{FULL} | {m:g} × MD error", {}).get("structures", []))
        if s["true_error"] is not None and s["sigma_cal_rms"] is not None and s["max_displacement"] is not None
    ]  # fmt: skip


def walk_check(structures: list[dict]) -> WalkCheck:
    """Where along the walks of ``structures`` (:func:`displaced`) the calibration holds: one
    sample per walk (its RMS true error and σ_cal), bootstrapped over starts
    (:func:`cagoflow.walk_validity.check_walks`)."""
    if not structures:
        return WalkCheck(0, (), None)
    return check_walks(
        [s["displacement"] for s in structures], [s["sigma_cal"] for s in structures], [s["true_error"] for s in structures],
        group=[s["group"] for s in structures],
    )  # fmt: skip


def trust_from_others(folder: Path, seed: int) -> Path:
    """``folder/trust-radius.json``: the displacement bins and limit of the other seeds'
    labelled CAGO structures (the full committee at 1.5–3 × its MD error), this seed's trust
    radius for the :data:`TRUSTED` set-up. Exits with a message when no other seed has them or
    they give no limit."""
    others = {
        int(path.parent.name.removeprefix("seed-")): read_json(path)
        for path in sorted(folder.parent.glob("seed-*/results.json")) if path.parent != folder
    }  # fmt: skip
    check = walk_check(displaced(others))
    if check.radius is None:
        raise SystemExit(f"--trust-from-others: the other seeds of {folder.parent} give no displacement up to which the calibration holds ({len(check.bins)} bins)")
    path = folder / "trust-radius.json"
    if not path.exists() or read_json(path).get("radius") != check.radius:
        atomic_write_json(path, {"from_seeds": sorted(others), **check.to_dict()})
    return path


def trusted_setup(path: Path, full: CagoCalibration, own: CagoCalibration, safe: CagoSettings, as_asked: dict) -> dict[str, Setup]:
    """The :data:`TRUSTED` and :data:`TRUSTED_SUBSET` set-ups where their radius exists (``--trust-from-others``)."""
    if not path.exists():
        return {}
    radius = read_json(path)["radius"]
    settings = safe.model_copy(update={"trust_region": TrustRegion(radius=radius)})
    return {
        TRUSTED: Setup(None, replace(full, **as_asked), settings, full.validity_limit, source=path),
        TRUSTED_SUBSET: Setup(SUBSET, replace(own, **as_asked), settings, own.validity_limit, source=path),
    }


def _cago_file(key: str) -> str:
    """The file of one set-up and δ's labelled CAGO structures, in ``cago/``."""
    return f"{key.replace(' | ', '--').replace(' ', '_')}.extxyz"


# --- CAGO set-ups ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One CAGO set-up.

    Attributes:
        members: the members CAGO uses (None: all).
        calibration: what CAGO is told of the calibration (``validity_limit = math.inf``: δ as asked).
        settings: CAGO's settings (δ is set per target).
        limit: the real (out-of-sample) validity limit of these members' calibration, eV/Å (None:
            none found): the "1.5 × validity limit" target and the "above validity" column.
        source: a calibration file beyond the two every set-up depends on (its results are
            redone when it changes).
    """

    members: tuple[int, ...] | None
    calibration: CagoCalibration
    settings: CagoSettings
    limit: float | None
    source: Path | None = None

    @property
    def clamped(self) -> bool:
        return self.calibration.validity_limit != math.inf


def setups(calibrations: Path) -> dict[str, Setup]:
    """The CAGO set-ups, in the order of the tables."""
    full = CommitteeCalibration.load(calibrations / "calibration.json").for_cago()
    own = CommitteeCalibration.load(calibrations / "calibration-subset.json").for_cago()
    safe = CagoSettings(delta=0.1, max_steps=MAX_STEPS)  # the default safeguards
    as_asked = {"validity_limit": math.inf}  # trust the law everywhere: δ as asked, no clamp
    raw = replace(full, law=PowerLaw(1.0, 1.0), test_sigma_cal=None, **as_asked)
    return {
        "full, calibrated": Setup(None, replace(full, **as_asked), safe, full.validity_limit),
        "full, uncalibrated (σ̂)": Setup(None, raw, safe, full.validity_limit),
        # the subset's rows share its δ values (its MD-frame error, its own validity limit)
        "subset, full law": Setup(SUBSET, replace(full, **as_asked), safe, own.validity_limit),
        "subset, own law": Setup(SUBSET, replace(own, **as_asked), safe, own.validity_limit),
        "subset, own law, clamped": Setup(SUBSET, own, safe, own.validity_limit),
        "subset, own law, no trust region": Setup(SUBSET, replace(own, **as_asked), safe.model_copy(update={"trust_region": None}), own.validity_limit),
        "subset, own law, no packing guard": Setup(SUBSET, replace(own, **as_asked), safe.model_copy(update={"packing_guard": None}), own.validity_limit),
        "subset, own law, no safeguards": Setup(
            SUBSET, replace(own, **as_asked),
            safe.model_copy(update={"contact_guard": None, "trust_region": None, "packing_guard": None, "max_step": 1.0}),
            own.validity_limit,
        ),
        **following_setup(calibrations.parent / "calibration-cago" / "calibration.json", safe, as_asked),
        **trusted_setup(calibrations.parent / "trust-radius.json", full, own, safe, as_asked),
    }  # fmt: skip


def following_setup(path: Path, safe: CagoSettings, as_asked: dict) -> dict[str, Setup]:
    """The :data:`FOLLOWING` set-up where its calibration exists (``--follow-cago``)."""
    if not path.exists():
        return {}
    law = CommitteeCalibration.load(path).for_cago()
    return {FOLLOWING: Setup(None, replace(law, **as_asked), safe, law.validity_limit, source=path)}


def _float(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def structure_record(run, label, true_error: float | None) -> dict:
    """What results.json keeps of one CAGO structure (eV/Å, Å)."""
    summary = run.summary()
    pushed = run.delta is not None
    return {
        "reason": run.reason, "direction": run.direction, "steps": run.n_steps, "flags": list(run.flags),
        "delta_used": _float(run.delta), "requested_delta": float(run.requested_delta),
        "start_sigma_cal": float(run.start_sigma_cal), "sigma_cal_rms": float(run.sigma_cal_rms),
        "true_error": true_error, "hit": None if true_error is None or not pushed else true_error / run.delta,
        "max_displacement": float(run.max_displacement), "trust_radius": _float(run.trust_radius),
        "packing_departure": float(summary["packing_departure"]), "closest_pair_ratio": _float(summary["closest_pair_ratio"]),
        "teacher": "ok" if label is not None else "failed",
    }  # fmt: skip


def fingerprint(*paths: Path) -> str:
    """A digest of the files a CAGO result depends on: a result cached against other files
    (a redone calibration, say) is computed again."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run_setups(
    workdir: Path, system: System, committee_file: Path, files: dict[str, Path], calibrations: Path, only: tuple[str, ...] | None = None
) -> dict:
    """Every set-up (``only``: these; the others' results cached by an earlier run are kept) at
    every δ, labelled by the teacher; results.json (cached per set-up and δ)."""
    results_file = workdir / "results.json"
    results = read_json(results_file) if results_file.exists() else {}
    committee = load_committee_spec(committee_file).build()
    starts = read_structures(files["starts"])
    teacher = system.teacher()
    md_errors_of: dict = {}
    order: list[str] = []  # the keys in the order of the set-ups and targets (results.json sorts them)
    common = (committee_file, calibrations / "calibration.json", calibrations / "calibration-subset.json", files["starts"])
    for name, setup in setups(calibrations).items():
        inputs = fingerprint(*common, *([setup.source] if setup.source else []))
        engine = committee if setup.members is None else committee.subset(setup.members)
        if setup.members not in md_errors_of:
            prediction = engine.predict(starts)
            md_errors_of[setup.members] = [true_force_error(prediction.structure_forces(k), a.get_forces()) for k, a in enumerate(starts)]
        md_errors = md_errors_of[setup.members]
        md_error = float(np.mean(md_errors))
        targets = {f"{m:g} × MD error": m * md_error for m in MULTIPLES}
        if setup.limit is not None:
            targets[f"{ABOVE_LIMIT:g} × validity limit"] = ABOVE_LIMIT * setup.limit
        trust_radius = None if setup.settings.trust_region is None else setup.settings.trust_region.resolve(starts)
        for label, delta in targets.items():
            key = f"{name} | {label}"
            cached = key in results and results[key].get("inputs") == inputs
            if cached or only is None or name in only:
                order.append(key)
            if cached or (only is not None and name not in only):
                continue
            stamp(f"CAGO {key}: δ = {1000 * delta:.0f} meV/Å")
            start = time.perf_counter()
            settings = setup.settings.model_copy(update={"delta": delta})
            runs = run_cago_batch(starts, engine, setup.calibration, settings, trust_radius=trust_radius)
            seconds = time.perf_counter() - start
            labels = labelled(teacher, [run.atoms for run in runs])
            true = true_errors(engine, labels)
            write_structures(workdir / "cago" / _cago_file(key), [a for a in labels if a is not None])
            results[key] = {
                "setup": name, "target": label, "members": None if setup.members is None else list(setup.members),
                "delta": delta, "md_error": md_error, "validity_limit": setup.limit, "clamped": setup.clamped,
                "above_limit": None if setup.limit is None else delta > setup.limit, "trust_radius": trust_radius,
                "md_hits": [e / delta for e in md_errors], "start_sigma_ratio": [run.start_sigma_cal / delta for run in runs],
                "structures": [structure_record(run, lab, t) for run, lab, t in zip(runs, labels, true)],
                "seconds": seconds, "inputs": inputs,
            }  # fmt: skip
            atomic_write_json(results_file, results)
    return {key: results[key] for key in order}


# --- summary over seeds ---------------------------------------------------------------------------


def _spread(values: list[float]) -> dict | None:
    """Mean, min and max of ``values`` (None when empty)."""
    if not values:
        return None
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)), "n": len(values)}


def _seed_figures(row: dict) -> dict:
    """One seed's figures of one set-up and δ; hits over the structures that reached δ only."""
    structures = row["structures"]
    reached = [s for s in structures if s["reason"] == "reached" and s["hit"] is not None]
    hits = [s["hit"] for s in reached]
    # where a limit stopped a walk before δ: does σ_cal still predict the true error there?
    stopped = [s for s in structures if s["delta_used"] is not None and s["reason"] != "reached" and s["true_error"] is not None]
    return {
        "stopped_ratio": [s["true_error"] / s["sigma_cal_rms"] for s in stopped],
        "delta": row["delta"], "md_error": row["md_error"], "validity_limit": row["validity_limit"],
        "above_limit": row["above_limit"], "trust_radius": row.get("trust_radius"),
        "mean_hit": float(np.mean(hits)) if hits else None, "median_hit": float(np.median(hits)) if hits else None,
        "hits": hits, "n": len(structures), "n_reached": len(reached),
        "n_pushed": sum(s["delta_used"] is not None for s in structures),
        "not_pushed": dict(Counter(s["reason"] for s in structures if s["reason"] in NOT_PUSHED)),
        "stopped": dict(Counter(s["reason"] for s in structures if s["reason"] not in NOT_PUSHED + ("reached",))),
        "unlabelled": sum(s["teacher"] != "ok" for s in structures),
        "touched": dict(Counter(flag for s in structures for flag in s["flags"] if flag != "fast")),
        "steps": [s["steps"] for s in structures if s["delta_used"] is not None],
        "md_hit": float(np.mean(row["md_hits"])), "start_sigma_ratio": float(np.mean(row["start_sigma_ratio"])),
        "seconds": row["seconds"],
    }  # fmt: skip


def summarise(results_by_seed: dict[int, dict]) -> list[dict]:
    """Per set-up and δ, the figures over seeds: mean over seeds of each seed's mean and median
    hit with the spread (min–max over seeds), and the counts summed over seeds."""
    keys = list(dict.fromkeys(key for results in results_by_seed.values() for key in results))
    rows = []
    for key in keys:
        per_seed = {seed: _seed_figures(results[key]) for seed, results in results_by_seed.items() if key in results and "structures" in results[key]}
        if not per_seed:
            continue
        figures = list(per_seed.values())
        hits = [h for f in figures for h in f["hits"]]
        first = next(iter(results_by_seed[s][key] for s in per_seed))

        def total(name: str) -> dict:
            return dict(sum((Counter(f[name]) for f in figures), Counter()))

        rows.append({
            "setup": first["setup"], "target": first["target"], "seeds": list(per_seed),
            "delta": _spread([f["delta"] for f in figures]), "md_error": _spread([f["md_error"] for f in figures]),
            "validity_limit": _spread([f["validity_limit"] for f in figures if f["validity_limit"] is not None]),
            "seeds_without_limit": sum(f["validity_limit"] is None for f in figures),
            "above_limit": sum(bool(f["above_limit"]) for f in figures),
            "mean_hit": _spread([f["mean_hit"] for f in figures if f["mean_hit"] is not None]),
            "stopped_ratio": _spread([r for f in figures for r in f["stopped_ratio"]]),
            "median_hit": _spread([f["median_hit"] for f in figures if f["median_hit"] is not None]),
            "max_hit": max(hits) if hits else None, "within_20": float(np.mean(np.abs(np.asarray(hits) - 1) <= 0.2)) if hits else None,
            "n": sum(f["n"] for f in figures), "n_reached": sum(f["n_reached"] for f in figures),
            "n_pushed": sum(f["n_pushed"] for f in figures),
            "not_pushed": total("not_pushed"), "stopped": total("stopped"), "touched": total("touched"),
            "unlabelled": sum(f["unlabelled"] for f in figures),
            "steps": float(np.median([s for f in figures for s in f["steps"]])) if any(f["steps"] for f in figures) else None,
            "md_hit": _spread([f["md_hit"] for f in figures]), "start_sigma_ratio": _spread([f["start_sigma_ratio"] for f in figures]),
            "seconds": float(sum(f["seconds"] for f in figures)), "per_seed": {str(seed): f for seed, f in per_seed.items()},
        })  # fmt: skip
    return rows


def acceptance(rows: list[dict], system: str, members: int) -> list[dict]:
    """The issue's checks, judged on the mean over seeds (and shown for every seed)."""
    by_key = {(row["setup"], row["target"]): row for row in rows}
    checks = []
    low, high = FULL_BAND
    for name in (FULL, *(extra for extra in (FOLLOWING, TRUSTED) if any(row["setup"] == extra for row in rows))):
        for m in MULTIPLES:
            row = by_key.get((name, f"{m:g} × MD error"))
            for figure in ("mean_hit", "median_hit"):
                text = f"{members}-member {name.removeprefix('full, ')}, {m:g} × MD error: {figure.replace('_', ' ')} in {low:g}–{high:g}"
                checks.append(_check(row, figure, text, lambda v: low <= v <= high))
    bound = SUBSET_MEAN_AT_MOST.get(system, 1.5)
    for name, words in (("subset, own law", "own law, safeguards on"), (TRUSTED_SUBSET, "own law, trust radius from other seeds")):
        if name == "subset, own law" or any(row["setup"] == name for row in rows):
            row = by_key.get((name, "3 × MD error"))
            checks.append(_check(row, "mean_hit", f"{len(SUBSET)}-member subset ({words}), 3 × MD error: mean hit ≤ {bound:g}", lambda v: v <= bound))
    return checks


def _check(row: dict | None, figure: str, text: str, passes) -> dict:
    """One check: the mean over seeds of ``figure``; it passes when that mean does, every seed run
    has structures that reached δ, and at least :data:`MIN_SEEDS` seeds were run."""
    if row is None:
        return {"check": text, "value": None, "spread": None, "seeds": "0/0", "reached": None, "every_seed": False,
                "passes": False, "notes": ["not run"]}  # fmt: skip
    spread, per_seed = row[figure], {seed: f[figure] for seed, f in row["per_seed"].items()}
    empty = [seed for seed, value in per_seed.items() if value is None]
    notes = [f"only {len(per_seed)} seed(s), the issue asks for ≥ {MIN_SEEDS}"] if len(per_seed) < MIN_SEEDS else []
    notes += [f"no structure reached δ in seed(s) {', '.join(empty)}"] if empty else []
    notes += ["fewer than half reached δ"] if row["n_reached"] < row["n"] / 2 else []
    return {
        "check": text, "value": None if spread is None else spread["mean"],
        "spread": None if spread is None else [spread["min"], spread["max"]],
        "seeds": f"{len(per_seed) - len(empty)}/{len(per_seed)}", "reached": f"{row['n_reached']}/{row['n']}",
        "every_seed": not empty and all(passes(v) for v in per_seed.values()),
        "passes": spread is not None and bool(passes(spread["mean"])) and not empty and len(per_seed) >= MIN_SEEDS,
        "notes": notes,
    }  # fmt: skip


# --- tables and plot ------------------------------------------------------------------------------


def _hit(spread: dict | None) -> str:
    """"1.07 [0.95–1.20]": mean over seeds [min–max over seeds]; one seed: the value."""
    if spread is None:
        return "—"
    if spread["n"] == 1:
        return f"{spread['mean']:.2f}"
    return f"{spread['mean']:.2f} [{spread['min']:.2f}–{spread['max']:.2f}]"


def _delta(spread: dict | None) -> str:
    if spread is None:
        return "—"
    if spread["n"] == 1 or spread["min"] == spread["max"]:
        return f"{1000 * spread['mean']:.0f}"
    return f"{1000 * spread['mean']:.0f} [{1000 * spread['min']:.0f}–{1000 * spread['max']:.0f}]"


def _ratio(spread: dict | None) -> str:
    """"1.05 [0.80–1.40]": mean [min–max] over structures."""
    return "—" if spread is None else f"{spread['mean']:.2f} [{spread['min']:.2f}–{spread['max']:.2f}]"


def _counts(counter: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items())) or "—"


def _reached(row: dict) -> str:
    return f"{row['n_reached']}/{row['n']}"


def target_table(rows: list[dict], n_seeds: int) -> Table:
    """Table 1: the full committee, calibrated against uncalibrated, and the plain MD frames."""
    spread = r" \[min–max over seeds]" if n_seeds > 1 else ""
    table = Table(title=f"Target control, full committee (hit = true error / δ over the structures that reached δ; mean over seeds{spread})")
    for column in ("δ", "δ meV/Å", "above validity", "calibrated mean hit", "median hit", "reached", "uncalibrated mean hit", "median hit", "reached", "MD frames' error / δ", "start σ_cal / δ"):
        table.add_column(column, justify="right")
    by_key = {(row["setup"], row["target"]): row for row in rows}
    for row in rows:
        if row["setup"] != "full, calibrated":
            continue
        raw = by_key.get(("full, uncalibrated (σ̂)", row["target"]))
        table.add_row(
            row["target"], _delta(row["delta"]), _above(row),
            _hit(row["mean_hit"]), _hit(row["median_hit"]), _reached(row),
            "—" if raw is None else _hit(raw["mean_hit"]), "—" if raw is None else _hit(raw["median_hit"]), "—" if raw is None else _reached(raw),
            "1/k by construction" if "MD error" in row["target"] else _hit(row["md_hit"]), _hit(row["start_sigma_ratio"]),
        )  # fmt: skip
    return table


def _above(row: dict) -> str:
    seeds = len(row["seeds"])
    judged = seeds - row["seeds_without_limit"]
    text = "no limit" if judged == 0 else ("yes" if row["above_limit"] == judged else "no" if row["above_limit"] == 0 else f"{row['above_limit']}/{judged} seeds")
    return text if row["seeds_without_limit"] in (0, seeds) else f"{text}; {row['seeds_without_limit']} without limit"


def size_table(rows: list[dict], n_seeds: int) -> Table:
    """Table 2: every set-up, with the counts and the safeguards' traces."""
    spread = r" \[min–max over seeds]" if n_seeds > 1 else ""
    table = Table(title=f"Committee size and safeguards (hits over the structures that reached δ; mean over seeds{spread}; counts summed over seeds)")
    for column in ("set-up", "δ", "δ meV/Å", "start σ_cal / δ", "mean hit", "median hit", "max hit", "within ±20 %", "reached", "not pushed", "stopped by", "stopped: error / σ_cal", "touched", "steps", "s"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["setup"], row["target"], _delta(row["delta"]), _hit(row["start_sigma_ratio"]),
            _hit(row["mean_hit"]), _hit(row["median_hit"]), "—" if row["max_hit"] is None else f"{row['max_hit']:.2f}",
            "—" if row["within_20"] is None else f"{row['within_20']:.0%}", _reached(row),
            _counts(row["not_pushed"]), _counts(row["stopped"]) + (f", teacher failed {row['unlabelled']}" if row["unlabelled"] else ""),
            _ratio(row["stopped_ratio"]), _counts(row["touched"]), "—" if row["steps"] is None else f"{row['steps']:.0f}", f"{row['seconds']:.0f}",
        )  # fmt: skip
    return table


def safeguard_table(rows: list[dict]) -> Table:
    """Table 3: what each safeguard does to the hit (subset, own law): mean hit (reached/total)."""
    table = Table(title=r"What each safeguard does (subset, own law): mean hit over the reached \[min–max over seeds] · reached/total · stopped by")
    table.add_column("δ", justify="right")
    for name in SAFEGUARD_ROWS:
        table.add_column(name.replace("subset, own law", "all on").replace("all on, ", ""), justify="right")
    by_key = {(row["setup"], row["target"]): row for row in rows}
    for target in dict.fromkeys(row["target"] for row in rows if row["setup"] == SAFEGUARD_ROWS[0]):
        cells = []
        for name in SAFEGUARD_ROWS:
            row = by_key.get((name, target))
            cells.append("—" if row is None else f"{_hit(row['mean_hit'])} · {_reached(row)}" + (f" · {_counts(row['stopped'])}" if row["stopped"] else ""))
        table.add_row(target, *cells)
    return table


def acceptance_table(checks: list[dict], system: System) -> Table:
    title = f"The issue's checks on {system.title} (on the mean over seeds; hits over the reached structures; passes: also ≥ {MIN_SEEDS} seeds, each with hits)"
    table = Table(title=title)
    for column in ("check", "value", "min–max over seeds", "seeds with hits", "reached", "every seed", "passes", "notes"):
        table.add_column(column, justify="right")
    for check in checks:
        spread = "—" if check["spread"] is None else f"{check['spread'][0]:.2f}–{check['spread'][1]:.2f}"
        table.add_row(
            check["check"], "—" if check["value"] is None else f"{check['value']:.2f}", spread, check["seeds"],
            check["reached"] or "—", "yes" if check["every_seed"] else "no", "[green]yes[/]" if check["passes"] else "[red]no[/]",
            "; ".join(check["notes"]) or "—",
        )  # fmt: skip
    return table


def displacement_table(check: WalkCheck, n_seeds: int) -> Table:
    """Where the calibration holds along the walks of every seed (:func:`walk_check`; Å)."""
    limit = check.radius
    table = Table(
        title=f"Error / σ_cal where the full committee's walks stopped (1.5–3 × MD error, {n_seeds} seed(s)), by the largest "
        f"displacement of an atom from its start; limit (band's upper edge ≤ 1.25): {'none' if limit is None else f'{limit:.3f} Å'}"
    )  # fmt: skip
    for column in ("largest displacement (Å)", "structures", "RMS error / RMS σ_cal", "band"):
        table.add_column(column, justify="right")
    for b in check.bins:
        table.add_row(f"{b.low:.3f}–{b.high:.3f}", str(b.walks), f"{b.ratio:.2f}", f"{b.band_low:.2f}–{b.band_high:.2f}")
    return table


def plot(rows: list[dict], path: Path, system: System, n_seeds: int) -> Path:
    """Top: mean hit (over the reached structures) against δ for every set-up — bars: the spread
    over seeds (one seed: over the structures) — with the MD frames' true error / δ and the
    ideal hit 1 with ±20 %. Bottom: the fraction of structures that reached δ."""
    from matplotlib.figure import Figure

    from cagoflow.io import write_figure

    figure = Figure(figsize=(8.5, 7.0))
    axes, below = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    names = list(dict.fromkeys(row["setup"] for row in rows))
    for offset, name in enumerate(names):
        chosen = sorted((row for row in rows if row["setup"] == name), key=lambda row: row["delta"]["mean"])
        deltas = np.array([1000 * row["delta"]["mean"] for row in chosen]) * (1 + 0.015 * (offset - len(names) / 2))
        with_hits = [k for k, row in enumerate(chosen) if row["mean_hit"] is not None]
        if with_hits:
            means = np.array([chosen[k]["mean_hit"]["mean"] for k in with_hits])
            if n_seeds > 1:
                lows, highs = [chosen[k]["mean_hit"]["min"] for k in with_hits], [chosen[k]["mean_hit"]["max"] for k in with_hits]
            else:
                hits = [chosen[k]["per_seed"][next(iter(chosen[k]["per_seed"]))]["hits"] for k in with_hits]
                lows, highs = [min(h) for h in hits], [max(h) for h in hits]
            axes.errorbar(deltas[with_hits], means, yerr=[means - lows, np.asarray(highs) - means], marker="o", capsize=3, color=f"C{offset}", label=name)
        below.plot(deltas, [row["n_reached"] / row["n"] for row in chosen], marker="o", color=f"C{offset}", label=name)
    for name, style in (("full, calibrated", "k:"), ("subset, own law", "k--")):
        chosen = sorted((row for row in rows if row["setup"] == name), key=lambda row: row["delta"]["mean"])
        axes.plot([1000 * row["delta"]["mean"] for row in chosen], [row["md_hit"]["mean"] for row in chosen], style, marker="x",
                  label=f"MD frames ({name.split(',')[0]})")  # fmt: skip
    axes.axhline(1.0, color="black", lw=1)
    axes.axhspan(0.8, 1.2, color="tab:green", alpha=0.1, label="±20 % of δ")
    axes.set_xscale("log")
    axes.set_yscale("log")
    bars = f"min–max over {n_seeds} seeds" if n_seeds > 1 else "min–max over the structures"
    axes.set_ylabel(f"true error / δ (mean over reached;\nbars: {bars})")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(f"Does CAGO land at δ? ({system.title}, DeePMD students, {system.teacher_name} teacher, {n_seeds} seed(s))")
    below.set_xlabel("target error δ (meV/Å; mean over seeds)")
    below.set_ylabel("reached δ")
    below.set_ylim(-0.05, 1.05)
    below.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return write_figure(figure, path)


# --- main -----------------------------------------------------------------------------------------


def header() -> dict:
    """Command line, date, host and commit of this run."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(), "commit": commit,
    }  # fmt: skip


def run_seed(workdir: Path, system: System, seed: int, args) -> dict:
    """One seed's study, in its own folder; its results."""
    folder = workdir / system.name / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    check_sizes(folder, {
        "system": system.name, "seed": seed, "members": args.members, "steps": args.steps,
        "frames": [count for _, count in system.frames.items()], "md_steps": system.md.steps,
    })  # fmt: skip
    begin = time.perf_counter()
    stamp(f"[bold]{system.title}, seed {seed}[/] → {folder}")
    files = teacher_frames(folder, system, seed)
    committee = students(folder, system, files["pool"], args.members, args.steps, seed)
    calibrations = calibrate(folder, committee, files)
    only = CORE_SETUPS if args.core else None
    if args.follow_cago:
        if following_calibration(folder, committee, files, seed) is None:
            raise SystemExit(f"--follow-cago: no other seed of {workdir / system.name} has CAGO structures of '{FULL}' yet")
        only = None if only is None else (*only, FOLLOWING)
    if args.trust_from_others:
        trust_from_others(folder, seed)
        only = None if only is None else (*only, TRUSTED, TRUSTED_SUBSET)
    results = run_setups(folder, system, committee, files, calibrations, only)
    rows = summarise({seed: results})
    if args.per_seed:
        console.print(size_table(rows, 1))
    plot(rows, folder / "calibration-target.png", system, 1)
    stamp(f"seed {seed} done in {time.perf_counter() - begin:.0f} s; reliability diagrams: {calibrations}/calibration-forces_error_vs_sigma.png, calibration-subset-forces_error_vs_sigma.png")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="water")
    parser.add_argument("--workdir", type=Path, default=None, help="default: runs/science/calibration (--quick: runs/science/calibration-quick)")
    parser.add_argument("--members", type=int, default=8, help="students in the committee")
    parser.add_argument("--steps", type=int, default=600, help="training steps per student")
    parser.add_argument("--seed", type=int, default=0, help="the seed of everything random (teacher MD, rattles, bootstrap, training)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds in one call, with a combined table (overrides --seed)")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke test: frames {QUICK_FRAMES.pool}/{QUICK_FRAMES.calibration}/{QUICK_FRAMES.starts}, teacher MD {QUICK_MD_STEPS} steps")
    parser.add_argument("--frames", type=int, nargs=3, metavar=("POOL", "CALIBRATION", "STARTS"), default=None, help="teacher frames per set (default 40 24 8)")
    parser.add_argument("--md-steps", type=int, default=None, help="steps of each teacher MD run (default 400)")
    parser.add_argument("--per-seed", action="store_true", help="also print each seed's table")
    parser.add_argument("--follow-cago", action="store_true", help=f"also the set-up '{FOLLOWING}' (needs another seed's results)")
    parser.add_argument("--trust-from-others", action="store_true", help=f"also the set-up '{TRUSTED}' (needs the other seeds' results)")
    parser.add_argument("--core", action="store_true", help=f"compute only the set-ups {', '.join(CORE_SETUPS)} (others cached before are shown)")
    args = parser.parse_args()
    if args.members <= max(SUBSET):
        parser.error(f"--members must be at least {max(SUBSET) + 1} (the subset is members {SUBSET})")
    frames = Frames(*args.frames) if args.frames else (QUICK_FRAMES if args.quick else None)
    system = SYSTEMS[args.system].sized(frames, args.md_steps or (QUICK_MD_STEPS if args.quick else None))
    workdir = args.workdir or Path("runs/science/calibration-quick" if args.quick else "runs/science/calibration")
    seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else [args.seed]))
    facts = header()
    console.print(f"[bold]calibration_target[/]: {facts['command']}\n  {facts['date']} on {facts['host']}, commit {facts['commit']}", highlight=False)
    console.print(
        f"  {system.title}, teacher {system.teacher_name}, MD {system.md.temperature:g} K × {system.md.steps} steps, frames "
        f"{system.frames.pool}/{system.frames.calibration}/{system.frames.starts}, {args.members} students × {args.steps} steps, seeds {seeds}"
        + ("  [bold yellow](QUICK: a smoke test, not results)[/]" if args.quick else ""), highlight=False,
    )  # fmt: skip
    begin = time.perf_counter()
    results_by_seed = {seed: run_seed(workdir, system, seed, args) for seed in seeds}
    rows = summarise(results_by_seed)
    checks = acceptance(rows, system.name, args.members)
    console.print(target_table(rows, len(seeds)))
    console.print(size_table(rows, len(seeds)))
    console.print(safeguard_table(rows))
    console.print(acceptance_table(checks, system))
    for name in ("full", "subset"):
        limits = {seed: results.get(f"{'full, calibrated' if name == 'full' else 'subset, own law'} | 3 × MD error", {}).get("validity_limit") for seed, results in results_by_seed.items()}
        console.print(f"validity limit ({name}, out of sample), per seed: " + ", ".join(f"{seed}: {'none' if v is None else f'{1000 * v:.0f} meV/Å'}" for seed, v in limits.items()), highlight=False)
    walks = walk_check(displaced(results_by_seed))
    console.print(displacement_table(walks, len(seeds)))
    radii = {seed: results[trusted]["trust_radius"] for seed, results in results_by_seed.items() if (trusted := f"{TRUSTED} | 1.5 × MD error") in results}
    if radii:
        console.print(f"trust radius of '{TRUSTED}', per seed: " + ", ".join(f"{seed}: {r:.3f} Å" for seed, r in radii.items()), highlight=False)
    folder = workdir / system.name
    summary = {
        **facts, "system": system.name, "title": system.title, "teacher": system.teacher_name, "seeds": seeds, "quick": args.quick,
        "sizes": {"members": args.members, "steps": args.steps, "frames": [c for _, c in system.frames.items()], "md_steps": system.md.steps},
        "hit": "true error / δ used, over the structures that reached δ; per set-up and δ: mean over seeds of each seed's mean and median hit, min–max over seeds",
        "rows": [{key: value for key, value in row.items() if key != "per_seed"} | {"per_seed": {s: {k: v for k, v in f.items() if k != "hits"} for s, f in row["per_seed"].items()}} for row in rows],
        "checks": checks, "displacement_bins": walks.to_dict()["bins"], "displacement_limit": walks.radius, "trust_radius_from_others": radii,
    }  # fmt: skip
    console.print(f"summary: {atomic_write_json(folder / 'summary.json', summary)}")
    console.print(f"plot: {plot(rows, folder / 'calibration-target.png', system, len(seeds))}")
    console.print(f"wall time of this run: {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
