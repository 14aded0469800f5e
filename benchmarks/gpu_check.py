"""The GPU check: tiny members of every backend trained on the device, batched committee
prediction, vectorised CAGO and LAMMPS committee MD, measured side by side; one Markdown table.

Run by ``benchmarks/gpu_check.sh`` one part at a time, each part under its own time limit, so
that a part that fails or runs out of time costs only its own rows:

    python benchmarks/gpu_check.py --part info|train|predict|lammps|cago|report
        --device cuda|cpu --work DIR --out DIR [--size full|small] [--frames DIR] [--seconds S]

- ``info``: the GPU (torch, nvidia-smi), the CPU, the versions, whether each backend imports.
- ``train``: the size's ``members`` tiny members per backend (deepmd, nequip, allegro), all at once (the
  device runs them side by side), with cagoflow's backends and :func:`cagoflow.backends.train`;
  NequIP and Allegro compiled with AOTInductor for the device (a failed compile falls back to
  the checkpoint, eager, and says so). Frames: ``--frames DIR`` (train.extxyz,
  validation.extxyz, as ``benchmarks/gpu_bundle.sh`` labels them), else labelled here (tblite).
- ``predict``: ``boxes`` rattled boxes of ``molecules`` H2O through each committee, batched vs
  one at a time (best of 3 and of 1, after a warm-up that runs both once).
- ``lammps``: committee MD with ``pair_style deepmd`` (all members, the first drives,
  DeePMD's model deviation every ``dump_interval`` steps) through
  :func:`cagoflow.engines.lammps.run_lammps`; whether DeePMD put the models on the GPU is read
  from LAMMPS's output ("load model from: ... to gpu"). On the GPU also a shorter run with the
  GPU hidden (CUDA_VISIBLE_DEVICES=""), for the ratio.
- ``cago``: :func:`cago_batch.measure` (vectorised CAGO vs one structure at a time) per backend
  and K, after one CAGO step of the K structures together (:func:`warm_up`); last, since it
  skips the sizes that no longer fit in its time (each backend gets an equal share).
- ``report``: ``gpu_check.md`` in ``--out`` from what the parts left (``results.jsonl``,
  ``parts.tsv``): every failure as a row with its reason, parts that ran out of time named.

Each row goes to ``WORK/results.jsonl`` as soon as it is measured.
"""

from __future__ import annotations

import math

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("deepmd", "nequip", "allegro")
LABELS = {"deepmd": "DeePMD (se_e2_a tiny)", "nequip": "NequIP (tiny)", "allegro": "Allegro (tiny)"}
PARTS = ("info", "train", "predict", "lammps", "cago")
RESULTS = "results.jsonl"
REPORT = "gpu_check.md"


@dataclass(frozen=True)
class Size:
    """How much each part does."""

    members: int
    train_steps: int
    predict_boxes: int
    predict_molecules: int
    cago_sizes: tuple[int, ...]
    cago_molecules: int
    cago_steps: int
    md_steps: int
    md_molecules: int
    md_cpu_steps: int  # the same run with the GPU hidden, for the ratio (0: none)
    compile: bool  # NequIP/Allegro: AOTInductor for the device (else the eager checkpoint)


SIZES = {
    "full": Size(3, 300, 64, 64, (1, 4, 16, 64), 64, 5, 1000, 64, 200, True),
    # a 2-core CPU: an AOTInductor compile alone takes minutes there
    "small": Size(3, 40, 8, 16, (1, 4), 8, 3, 200, 16, 0, False),
}
#: MD time step, fs: short, so that a tiny model on 8-H2O frames stays inside the stability
#: checks for the whole run (the run measures throughput, not water).
MD_TIMESTEP = 0.1


# --- results --------------------------------------------------------------------------------------


def emit(work: Path, part: str, **row) -> None:
    """Append one row (measured or failed) to WORK/results.jsonl and echo it."""
    row = {"part": part, **row}
    with open(work / RESULTS, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(f"[{part}] " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "part"), flush=True)


def read_rows(work: Path) -> list[dict]:
    path = work / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def reason_of(exc: BaseException) -> str:
    """One line: the exception's type and first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def one_line(text: str, limit: int = 300) -> str:
    """The most telling line of a program's message: the last one naming an error, else the last."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|exception|not found|cannot|failed", line, re.IGNORECASE)]
    pick = errors[-1] if errors else (lines[-1] if lines else "")
    return pick.replace("|", "/")[:limit]


class Clock:
    """The part's time budget: ``seconds`` from the start, less a margin for writing results."""

    def __init__(self, seconds: float, margin: float = 10.0):
        self.end = time.monotonic() + max(1.0, seconds - margin)

    def left(self) -> float:
        return self.end - time.monotonic()


# --- info -----------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def part_info(args, work: Path) -> None:
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": f"{cpu_name()}, {os.cpu_count()} cores",
        "device": args.device,
        "size": args.size,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{torch.cuda.get_device_name(0)} ({properties.total_memory / 2**30:.0f} GiB, {properties.multi_processor_count} SMs)"
    else:
        info["gpu"] = "none visible to torch"
    try:
        query = "name,memory.total,driver_version"
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=False)
        info["nvidia_smi"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else f"failed: {one_line(smi.stderr)}"
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"not available ({reason_of(exc)})"
    from importlib.metadata import PackageNotFoundError, version

    for name in ("cagoflow", "deepmd-kit", "nequip", "nequip-allegro", "lammps", "ase", "e3nn", "lightning"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = "not installed"
    for module in ("deepmd.pt", "nequip", "allegro", "cagoflow.backends.deepmd", "cagoflow.backends.nequip"):
        try:
            __import__(module)
            info[f"import {module}"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            info[f"import {module}"] = f"failed: {reason_of(exc)}"
    if "deepmd.pt" in sys.modules:
        from deepmd.pt.cxx_op import ENABLE_CUSTOMIZED_OP

        info["deepmd custom ops"] = "loaded" if ENABLE_CUSTOMIZED_OP else "not loaded"
    (work / "info.json").write_text(json.dumps(info, indent=1))
    for key, value in info.items():
        print(f"  {key}: {value}", flush=True)


# --- train ----------------------------------------------------------------------------------------


def frame_files(args, work: Path) -> tuple[Path, Path]:
    """train.extxyz and validation.extxyz: from --frames, else labelled here with tblite."""
    if args.frames:
        files = Path(args.frames) / "train.extxyz", Path(args.frames) / "validation.extxyz"
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (run benchmarks/gpu_bundle.sh)")
        return files
    from common import labelled_frames

    return labelled_frames(work / "frames")


def backend_for(name: str, device: str, compile: bool):
    """cagoflow's backend; NequIP and Allegro compiled for the device (``compile``)."""
    from cagoflow.backends import get_backend

    if name == "deepmd":
        return get_backend(name)
    from cagoflow.backends.nequip import NequipBackend

    return NequipBackend(name=name, compile_device=("cuda" if device == "cuda" else "cpu") if compile else None)


def train_member(name: str, member: int, files, work: Path, size: Size, device: str, clock: Clock) -> dict:
    from cagoflow.backends import TrainingSettings, train

    workdir = work / "models" / name / f"member-{member}"
    settings = TrainingSettings(steps=size.train_steps, seed=member + 1, type_map=("O", "H"))
    started, begun = time.perf_counter(), time.time()
    # each command (train, then freeze or compile) gets half of what is left, so that a slow
    # compile ends in time for the eager checkpoint to stand in
    timeout = max(5.0, clock.left() / 2)
    result = train(backend_for(name, device, size.compile), files[0], files[1], workdir, settings, timeout=timeout)
    wall = time.perf_counter() - started
    row = {"backend": name, "member": member, "steps": size.train_steps, "wall_s": round(wall, 1),
           "used": device_used_in_training(workdir), **command_times(workdir, begun)}  # fmt: skip
    if result.status == "success":
        compiled = name != "deepmd" and size.compile
        return {**row, "status": "ok", "model": str(result.model), "compiled": compiled}
    from cagoflow.backends.nequip import CHECKPOINT_NAME

    checkpoint = workdir / CHECKPOINT_NAME
    if name != "deepmd" and size.compile and checkpoint.is_file():  # trained, but the compile failed: the eager model
        return {**row, "status": "ok", "model": str(checkpoint), "compiled": False,
                "note": f"compile failed, eager checkpoint used: {one_line(result.message)}"}  # fmt: skip
    return {**row, "status": "failed", "reason": one_line(result.message) or "no model"}


def command_times(workdir: Path, begun: float) -> dict:
    """Seconds of the trainer and of the step after it (freeze or compile), from the times their
    logs (step-0.log, step-1.log, written by :func:`cagoflow.backends.train`) were last written."""
    try:
        first = (workdir / "step-0.log").stat().st_mtime
    except OSError:
        return {}
    times = {"train_s": round(first - begun, 1)}
    try:
        times["after_s"] = round((workdir / "step-1.log").stat().st_mtime - first, 1)
    except OSError:
        pass
    return times


def device_used_in_training(workdir: Path) -> str:
    """What the trainer's log says about its device (DeePMD's summary, Lightning's GPU line)."""
    text = ""
    for log in sorted(workdir.glob("*.log")) + sorted(workdir.glob("**/*.log"))[:5]:
        try:
            text += log.read_text(errors="replace")
        except OSError:
            continue
    match = re.search(r"Computing Device:\s*(\S+)", text)  # DeePMD-kit: CPU, CUDA:0
    if match:
        return match.group(1).lower()
    match = re.search(r"GPU available: \w+(?: \(\w+\))?, us(?:ed|ing): (\w+)", text)  # Lightning
    if match:
        return "cuda" if match.group(1) in ("True",) or match.group(1).isdigit() and int(match.group(1)) > 0 else "cpu"
    return "?"


def part_train(args, work: Path) -> None:
    size, clock = SIZES[args.size], Clock(args.seconds)
    files = frame_files(args, work)
    jobs = [(name, member) for name in args.backends for member in range(size.members)]
    cores = os.cpu_count() or 1
    # the device runs every member at once; a CPU only as many as it has cores
    workers = len(jobs) if args.device == "cuda" else max(1, min(len(jobs), cores))
    threads = str(max(1, cores // workers))
    compiles = sum(1 for name, _ in jobs if name != "deepmd") if size.compile else 0
    os.environ.update({"OMP_NUM_THREADS": threads, "DP_INTRA_OP_PARALLELISM_THREADS": threads,
                       "DP_INTER_OP_PARALLELISM_THREADS": "1", "NUM_WORKERS": "0",
                       "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, cores // max(1, min(compiles, workers))))})  # fmt: skip
    print(f"training {len(jobs)} members, {workers} at a time, {threads} threads each", flush=True)
    started = time.perf_counter()

    def job(name_member):
        name, member = name_member
        try:
            return train_member(name, member, files, work, size, args.device, clock)
        except Exception as exc:  # noqa: BLE001 - a row, not a crash
            return {"backend": name, "member": member, "status": "failed", "reason": reason_of(exc)}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(job, name_member) for name_member in jobs]):
            emit(work, "train", **future.result())  # at once: a later timeout keeps the members done
    emit(work, "train-phase", wall_s=round(time.perf_counter() - started, 1), members=len(jobs), concurrent=workers)


def load_models(work: Path) -> dict[str, list[str]]:
    """The trained members' model files per backend (member order), from the train rows."""
    rows = sorted((row for row in read_rows(work) if row["part"] == "train" and row["status"] == "ok"), key=lambda r: r["member"])
    models: dict[str, list[str]] = {}
    for row in rows:
        models.setdefault(row["backend"], []).append(row["model"])
    return models


def committee_of(name: str, models: list[str], device: str):
    from cagoflow.backends import get_backend

    return get_backend(name).load([Path(model) for model in models], device=device)


# --- predict --------------------------------------------------------------------------------------


def part_predict(args, work: Path) -> None:
    import numpy as np
    from cago_batch import starts
    from common import best_time

    size, clock = SIZES[args.size], Clock(args.seconds)
    models = load_models(work)
    boxes = starts(size.predict_boxes, size.predict_molecules)
    base = {"boxes": size.predict_boxes, "molecules": size.predict_molecules}
    for name in args.backends:
        if len(models.get(name, [])) == 0:
            emit(work, "predict", backend=name, **base, status="failed", reason="no trained member")
            continue
        if clock.left() < 5:
            emit(work, "predict", backend=name, **base, status="failed", reason="skipped: the part's time ran out")
            continue
        try:
            committee = committee_of(name, models[name], args.device)
            # warm up, both ways: CUDA kernels, compiled models, and TorchScript (DeePMD, e3nn), which
            # profiles and optimises each new input shape (each box has its own count of neighbours)
            # on its first calls: seconds each on a CPU
            committee.predict(boxes)
            committee.predict(boxes)
            for atoms in boxes:
                committee.predict([atoms])
            single = best_time(lambda c=committee: [c.predict([atoms]) for atoms in boxes], 1)
            batched = best_time(lambda c=committee: c.predict(boxes), 3 if single < 0.3 * max(clock.left(), 1) else 1)
            together = committee.predict(boxes).forces
            alone = np.concatenate([committee.predict([atoms]).forces for atoms in boxes[:4]], axis=1)
            difference = float(np.abs(together[:, : alone.shape[1]] - alone).max())  # structures concatenated
            emit(work, "predict", backend=name, **base, members=len(models[name]), batched_s=batched, single_s=single,
                 difference=difference, status="ok")  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            emit(work, "predict", backend=name, **base, status="failed", reason=reason_of(exc))


# --- cago -----------------------------------------------------------------------------------------


def warm_up(committee, structures: list) -> None:
    """One CAGO step of all ``structures`` together, before :func:`cago_batch.measure` times them:
    its own warm-up runs 2 structures, and TorchScript (DeePMD, e3nn) profiles and optimises
    each new input shape on its first calls, which would land in the timed batched run."""
    from cago_batch import LAW

    from cagoflow.cago import CagoCalibration, CagoSettings, run_cago_batch
    from cagoflow.geometry import shortest_pair_distances

    calibration = CagoCalibration(LAW, validity_limit=math.inf, contact_distances=shortest_pair_distances(structures))
    run_cago_batch(structures, committee, calibration, CagoSettings(delta=100.0, max_steps=1, trust_region=None, packing_guard=None))


def part_cago(args, work: Path) -> None:
    from cago_batch import measure, starts

    size, clock = SIZES[args.size], Clock(args.seconds)
    models = load_models(work)
    structures = starts(max(size.cago_sizes), size.cago_molecules)
    base = {"molecules": size.cago_molecules, "cago_steps": size.cago_steps}
    # each backend gets an equal share of what is left, so that a slow one cannot starve the others
    for index, name in enumerate(args.backends):
        share_end = time.monotonic() + clock.left() / (len(args.backends) - index)
        if len(models.get(name, [])) == 0:
            emit(work, "cago", backend=name, K=0, **base, status="failed", reason="no trained member")
            continue
        try:
            committee = committee_of(name, models[name], args.device)
        except Exception as exc:  # noqa: BLE001
            emit(work, "cago", backend=name, K=0, **base, status="failed", reason=reason_of(exc))
            continue
        last = None  # K, seconds of the timed runs, seconds of the warm-ups of the previous size
        for k in size.cago_sizes:
            left = share_end - time.monotonic()
            needed = 0.0 if last is None else last[1] * k / last[0] * 1.2 + last[2]
            if needed > left:
                emit(work, "cago", backend=name, K=k, **base, status="failed",
                     reason=f"skipped: about {needed:.0f} s needed, {max(left, 0):.0f} s left")  # fmt: skip
                continue
            try:
                started = time.perf_counter()
                warm_up(committee, structures[:k])
                batched, single, difference = measure(committee, structures[:k], size.cago_steps)
                last = (k, batched + single, time.perf_counter() - started - batched - single)
                emit(work, "cago", backend=name, K=k, **base, batched_s=batched, single_s=single,
                     difference=difference, status="ok")  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                emit(work, "cago", backend=name, K=k, **base, status="failed", reason=reason_of(exc))
                break


# --- lammps ---------------------------------------------------------------------------------------


def lammps_device(directory: Path) -> str:
    """Where DeePMD put its models, from LAMMPS's output ("load model from: X to gpu 0")."""
    text = ""
    for name in ("lammps.out", "log.lammps"):
        try:
            text += (directory / name).read_text(errors="replace")
        except OSError:
            continue
    places = sorted(set(re.findall(r"load model from: \S+ to (gpu|cpu)", text)))
    return "+".join(places) if places else "?"


def md_run(name: str, work: Path, committee_file: Path, molecules: int, steps: int, env: dict, timeout: float) -> dict:
    from cagoflow.engines.lammps import read_loop_time, run_lammps
    from cagoflow.engines.md_settings import MDStage
    from cagoflow.structures import water_box

    directory = work / "lammps" / name
    stage = MDStage(ensemble="nvt", steps=steps, timestep=MD_TIMESTEP, dump_interval=min(100, steps))
    atoms = water_box(molecules, seed=1)
    started = time.perf_counter()
    result = run_lammps(atoms, committee_file, stage, directory, seed=1, mode="native", env=env, timeout=timeout)
    wall = time.perf_counter() - started
    loop = read_loop_time(directory)
    row = {"run": name, "atoms": len(atoms), "steps": steps, "steps_done": result.steps_done, "wall_s": wall,
           "used": lammps_device(directory), "stable": result.stable}  # fmt: skip
    if loop is None or loop[1] == 0:
        return {**row, "status": "failed", "reason": one_line(result.reason) or "no loop time in the log"}
    row.update(loop_s=loop[0], loop_steps=loop[1])
    if not result.stable:
        row["note"] = one_line(result.reason)
    return {**row, "status": "ok"}


def part_lammps(args, work: Path) -> None:
    import shutil

    size, clock = SIZES[args.size], Clock(args.seconds)
    models = load_models(work).get("deepmd", [])
    if not models:
        emit(work, "lammps", run=args.device, status="failed", reason="no trained DeePMD member")
        return
    from cagoflow.engines.process import find_program

    command = (find_program("lmp"),)
    if shutil.which(command[0]) is None:
        emit(work, "lammps", run=args.device, status="failed", reason=f"no LAMMPS: {command[0]} not found")
        return
    committee_file = work / "lammps" / "committee.yaml"
    committee_file.parent.mkdir(parents=True, exist_ok=True)
    committee_file.write_text("backend: deepmd\nmodels: [" + ", ".join(models) + f"]\ndevice: {args.device}\n")
    cores = str(os.cpu_count() or 1)
    runs = [(args.device, size.md_steps, {"OMP_NUM_THREADS": "1" if args.device == "cuda" else cores})]
    if args.device == "cuda" and size.md_cpu_steps:
        runs.append(("cpu", size.md_cpu_steps, {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": cores}))
    for name, steps, env in runs:
        env = {**env, "DP_INTRA_OP_PARALLELISM_THREADS": env["OMP_NUM_THREADS"], "DP_INTER_OP_PARALLELISM_THREADS": "1"}
        if clock.left() < 10:
            emit(work, "lammps", run=name, steps=steps, status="failed", reason="skipped: the part's time ran out")
            continue
        try:
            row = md_run(name, work, committee_file, size.md_molecules, steps, env, clock.left())
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            row = {"run": name, "steps": steps, "status": "failed", "reason": reason_of(exc)}
        emit(work, "lammps", members=len(models), **row)


# --- report ---------------------------------------------------------------------------------------


def seconds(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def rate(count, value) -> str:
    return "—" if not value else f"{count / value:.3g}"


def ratio(slow, fast) -> str:
    return "—" if not slow or not fast else f"{slow / fast:.2f}×"


def table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def read_parts(work: Path) -> dict[str, tuple[int, float]]:
    """Exit code and seconds of each part, as gpu_check.sh recorded them."""
    parts = {}
    path = work / "parts.tsv"
    if path.exists():
        for line in path.read_text().splitlines():
            words = line.split("\t")
            if len(words) == 3:
                parts[words[0]] = (int(words[1]), float(words[2]))
    return parts


def problem_of(parts: dict, part: str) -> str:
    """Why a part's rows may be missing: "timed out after N s", "exited with code C", or ""."""
    if part not in parts:
        return "did not run (no time left)"
    code, spent = parts[part]
    if code in (124, 137):
        return f"{part} part timed out after {spent:.0f} s"
    if code:
        return f"{part} part exited with code {code} (see gpu_check.log)"
    return ""


def part_report(args, work: Path, out: Path) -> None:
    rows = read_rows(work)
    parts = read_parts(work)
    # rows of a whole part (no GPU, a crash before any backend): named at the top and in each table
    whole = {row["part"]: row.get("reason", "?") for row in rows if not {"backend", "run", "wall_s"} & set(row)}
    rows = [row for row in rows if {"backend", "run", "wall_s"} & set(row)]

    def part_problem(part: str) -> str:
        return whole[part] if part in whole else problem_of(parts, part)

    info = json.loads((work / "info.json").read_text()) if (work / "info.json").exists() else {}
    where = info.get("gpu", "?") if args.device == "cuda" else f"CPU ({info.get('cpu', cpu_name())})"
    lines = [
        f"# cagoflow GPU check ({info.get('date', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))})",
        "",
        f"- device: **{args.device}** — {where}",
        f"- nvidia-smi: {info.get('nvidia_smi', '?')}",
        f"- CPU: {info.get('cpu', cpu_name())}",
        (
            f"- Python {info.get('python', platform.python_version())}, torch {info.get('torch', '?')} "
            f"(CUDA {info.get('torch_cuda', '—')}), deepmd-kit {info.get('deepmd-kit', '?')}, nequip {info.get('nequip', '?')}, "
            f"nequip-allegro {info.get('nequip-allegro', '?')}, lammps {info.get('lammps', '?')}; "
            f"DeePMD custom ops: {info.get('deepmd custom ops', '?')}"
        ),
        f"- sizes: `{args.size}` {SIZES[args.size]}",
        "- parts (exit code, s): " + ", ".join(f"{name} {code} ({spent:.0f} s)" for name, (code, spent) in parts.items()),
    ]
    for part, reason in whole.items():
        lines.append(f"- **{part} failed as a whole**: {reason}")
    imports = [f"{key[7:]}: {value}" for key, value in info.items() if key.startswith("import ") and value != "ok"]
    if imports:
        lines.append("- imports that failed: " + "; ".join(imports))
    lines.append("")
    size = SIZES[args.size]

    def status(row) -> str:
        return "ok" + (f" ({row['note']})" if row.get("note") else "") if row["status"] == "ok" else f"failed: {row.get('reason', '?')}"

    # training
    train = [row for row in rows if row["part"] == "train"]
    phase = next((row for row in rows if row["part"] == "train-phase"), None)
    lines += [f"## Training: tiny members, {size.train_steps} steps each, {args.device}", ""]
    body = []
    for name in args.backends:
        mine = [row for row in train if row["backend"] == name]
        ok = [row for row in mine if row["status"] == "ok"]
        walls = [row["wall_s"] for row in mine if "wall_s" in row]
        if not mine:
            body.append([LABELS[name], "0", "—", "—", "—", "—", f"failed: {part_problem('train') or 'no rows'}"])
            continue
        trains = [row["train_s"] for row in mine if "train_s" in row]
        afters = [row["after_s"] for row in mine if "after_s" in row]
        split = (f"{min(trains):.0f}–{max(trains):.0f}" if trains else "—") + " / " + (f"{min(afters):.0f}–{max(afters):.0f}" if afters else "—")
        used = ",".join(sorted({row.get("used", "?") for row in mine}))
        compiled = {row.get("compiled") for row in ok}
        model = "—" if name == "deepmd" else ("AOTInductor, " + args.device if compiled == {True} else "eager checkpoint" if compiled == {False} else "mixed")
        failures = "; ".join(f"member {row['member']}: {row['reason']}" for row in mine if row["status"] != "ok")
        notes = "; ".join(sorted({row["note"] for row in ok if row.get("note")}))
        state = ("ok" if not failures else f"{len(ok)} ok; failed: {failures}") + (f" ({notes})" if notes else "")
        body.append([LABELS[name], f"{len(ok)}/{len(mine)}", f"{min(walls):.0f}–{max(walls):.0f}" if walls else "—", split,
                     used, model, state])  # fmt: skip
    lines += table(["backend", "members trained", "wall per member (s)", "of which train / freeze or compile (s)",
                    "trainer's device", "compiled", "status"], body)  # fmt: skip
    if phase:
        lines += ["", f"All {phase['members']} members ran {phase['concurrent']} at a time: {phase['wall_s']:.0f} s in all."]
    lines.append("")

    # prediction
    lines += [f"## Committee prediction: {size.predict_boxes} rattled boxes of {size.predict_molecules} H2O, {size.members} members, {args.device}", ""]
    body = []
    for name in args.backends:
        row = next((row for row in rows if row["part"] == "predict" and row["backend"] == name), None)
        if row is None:
            body.append([LABELS[name]] + ["—"] * 6 + [f"failed: {part_problem('predict') or 'no row'}"])
        elif row["status"] != "ok":
            body.append([LABELS[name]] + ["—"] * 6 + [status(row)])
        else:
            n = row["boxes"]
            body.append([LABELS[name], seconds(row["single_s"]), seconds(row["batched_s"]), rate(n, row["single_s"]),
                         rate(n, row["batched_s"]), ratio(row["single_s"], row["batched_s"]), f"{row['difference']:.1e}", "ok"])  # fmt: skip
    lines += table(["backend", "one at a time (s)", "batched (s)", "one at a time (struct/s)", "batched (struct/s)",
                    "batched gain", "max \\|ΔF\\| (eV/Å)", "status"], body)  # fmt: skip
    lines.append("")

    # CAGO
    lines += [(f"## Vectorised CAGO: K boxes of {size.cago_molecules} H2O together vs one at a time, {size.members} members, "
               f"{size.cago_steps} L-BFGS steps each, {args.device}"), ""]  # fmt: skip
    body = []
    for name in args.backends:
        mine = [row for row in rows if row["part"] == "cago" and row["backend"] == name]
        done = {row["K"] for row in mine}
        for row in mine:
            if row["status"] != "ok":
                body.append([LABELS[name], row["K"] or "—"] + ["—"] * 6 + [status(row)])
                continue
            k = row["K"]
            body.append([LABELS[name], k, seconds(row["single_s"]), seconds(row["batched_s"]), rate(k, row["single_s"]),
                         rate(k, row["batched_s"]), ratio(row["single_s"], row["batched_s"]), f"{row['difference']:.1e}", "ok"])  # fmt: skip
        missing = [k for k in size.cago_sizes if k not in done]
        if missing and not any(row["status"] != "ok" and not row["K"] for row in mine):
            problem = part_problem("cago") or "no row"
            body.append([LABELS[name], ", ".join(map(str, missing))] + ["—"] * 6 + [f"failed: {problem}"])
    lines += table(["backend", "K", "one at a time (s)", "together (s)", "one at a time (struct/s)", "together (struct/s)",
                    "gain", "max \\|Δx\\| (Å)", "status"], body)  # fmt: skip
    lines.append("")

    # LAMMPS
    lines += [(f"## Committee MD: LAMMPS `pair_style deepmd`, {size.members} members (the first drives, model deviation "
               f"every 100 steps), NVT {MD_TIMESTEP} fs"), ""]  # fmt: skip
    body = []
    md = [row for row in rows if row["part"] == "lammps"]
    for row in md:
        if row["status"] != "ok":
            body.append([row.get("run", "?"), row.get("used", "—"), row.get("atoms", "—"), f"{row.get('steps_done', '—')}/{row.get('steps', '—')}",
                         "—", "—", "—", status(row)])  # fmt: skip
            continue
        per_step = row["loop_s"] / row["loop_steps"]
        body.append([row["run"], row["used"], row["atoms"], f"{row['steps_done']}/{row['steps']}", seconds(row["loop_s"]),
                     f"{1 / per_step:.3g}", f"{1e3 * per_step:.3g}", status(row)])  # fmt: skip
    if not md:
        body.append([args.device, "—", "—", "—", "—", "—", "—", f"failed: {part_problem('lammps') or 'no row'}"])
    lines += table(["run", "DeePMD models on", "atoms", "steps done", "loop time (s)", "steps/s", "ms/step", "status"], body)
    gpu = next((r for r in md if r["status"] == "ok" and r["run"] == "cuda"), None)
    cpu = next((r for r in md if r["status"] == "ok" and r["run"] == "cpu"), None)
    if gpu and cpu:
        speedup = (cpu["loop_s"] / cpu["loop_steps"]) / (gpu["loop_s"] / gpu["loop_steps"])
        lines += ["", f"GPU vs CPU ({os.cpu_count()} threads) per MD step: {speedup:.2f}×."]
    lines.append("")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).write_text(text)
    print(text)


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=(*PARTS, "report"), required=True)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=tuple(SIZES), help="default: full on cuda, small on cpu")
    parser.add_argument("--work", type=Path, required=True, help="models, runs and results.jsonl")
    parser.add_argument("--out", type=Path, help="where gpu_check.md goes (report)")
    parser.add_argument("--frames", type=Path, help="folder with train.extxyz and validation.extxyz")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--seconds", type=float, default=600.0, help="the part's time budget")
    args = parser.parse_args()
    args.size = args.size or ("full" if args.device == "cuda" else "small")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and args.part != "report":
        import torch

        if not torch.cuda.is_available():
            emit(args.work, args.part, status="failed", reason="--device cuda, but torch sees no GPU")
            if args.part == "info":
                part_info(args, args.work)
            sys.exit(1)
    handlers = {"info": part_info, "train": part_train, "predict": part_predict, "cago": part_cago, "lammps": part_lammps}
    if args.part == "report":
        part_report(args, args.work, args.out or args.work)
    else:
        handlers[args.part](args, args.work)


if __name__ == "__main__":
    main()
