"""Per MLIP backend: single-point throughput (batch 1 vs batched) and one CAGO gradient by
batched finite differences vs autograd, measured side by side in one run.

Trains a tiny committee of ``--members`` members per backend (``--steps`` steps) on
tblite-labelled water frames, then on a box of ``--molecules`` H2O (default 64: 192 atoms):

- structures per second predicting 64 rattled copies one at a time and in one call;
- one CAGO gradient (3N + 6 + 1 structures in one batched call) vs the exact gradient.

    python benchmarks/backend_throughput.py [--backends deepmd nequip allegro] [--molecules 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cagoflow.autograd import ExactGradient
from cagoflow.backends import TrainingSettings, get_backend, train
from cagoflow.cago import CagoSettings, FiniteDifferenceGradient, Geometry, Objective
from cagoflow.calibration import PowerLaw
from cagoflow.engines.tblite import TbliteReference
from cagoflow.io import write_structures
from cagoflow.structures import water_box


def labelled_frames(folder: Path, count: int = 24) -> tuple[Path, Path]:
    """Rattled 8-water boxes labelled with GFN1-xTB, as train and validation files."""
    reference = TbliteReference(method="GFN1-xTB")
    frames = []
    for k in range(count):
        atoms = water_box(8, seed=k % 3)
        atoms.rattle(stdev=0.03, seed=k)
        frames.append(reference.compute(atoms).labelled())
    return write_structures(folder / "train.extxyz", frames[:-4]), write_structures(folder / "validation.extxyz", frames[-4:])


def committee(backend_name: str, folder: Path, files: tuple[Path, Path], members: int, steps: int):
    backend = get_backend(backend_name)
    models = []
    for m in range(members):
        settings = TrainingSettings(steps=steps, seed=m + 1, type_map=("O", "H"))
        result = train(backend, files[0], files[1], folder / backend_name / f"member-{m}", settings)
        if result.status != "success":
            raise SystemExit(f"{backend_name} member {m} did not train: {result.message}")
        models.append(result.model)
    return backend.load(models)


def seconds(function, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["deepmd", "nequip", "allegro"])
    parser.add_argument("--molecules", type=int, default=64)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    table = Table(title=f"{args.molecules} H2O, committee of {args.members} tiny members, CPU")
    for column in ("backend", "predict batch 1 (struct/s)", "predict batched (struct/s)", "batched gain",
                   "FD gradient batched (s)", "autograd (s)", "autograd speed-up"):  # fmt: skip
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        files = labelled_frames(folder)
        box = water_box(args.molecules, seed=0)
        copies = []
        for k in range(64):
            atoms = box.copy()
            atoms.rattle(stdev=0.02, seed=k)
            copies.append(atoms)
        for backend_name in args.backends:
            model = committee(backend_name, folder, files, args.members, args.steps)
            model.predict(copies[:2])  # warm up
            single = seconds(lambda: [model.predict([atoms]) for atoms in copies], 1)
            batched = seconds(lambda: model.predict(copies))
            geometry = Geometry(box, optimize_cell=True)
            settings = CagoSettings(delta=0.2)
            objective = Objective(PowerLaw(1.0, 1.0), settings, settings.delta)
            z = geometry.initial()
            fd = seconds(lambda: FiniteDifferenceGradient(model, geometry, objective, 1e-4)(z), 1)
            exact = seconds(lambda: ExactGradient(model, geometry, objective)(z))
            table.add_row(
                backend_name, f"{64 / single:.1f}", f"{64 / batched:.1f}", f"{single / batched:.2f}×",
                f"{fd:.2f}", f"{exact:.3f}", f"{fd / exact:.0f}×",
            )  # fmt: skip
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
