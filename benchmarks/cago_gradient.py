"""Wall time of one CAGO gradient: batched vs one-at-a-time finite differences, and autograd.

1. The analytic Morse committee of 3 on water boxes of ``--sizes`` H2O (default 16 and 64),
   the full objective with the cell: each gradient form timed side by side (best of
   ``--repeat``), seconds per gradient and the ratios.
2. With ``--backends deepmd nequip allegro``: per MLIP backend, a tiny committee of
   ``--members`` members trained for ``--steps`` steps on GFN1-xTB water frames, then on a box
   of ``--molecules`` H2O (default 64): structures per second predicting 64 rattled copies one
   at a time and in one call, and one CAGO gradient by batched finite differences (3N + 7
   structures in one call) vs the exact gradient.

    python benchmarks/cago_gradient.py [--sizes 16 64] [--repeat 3] [--backends deepmd nequip allegro]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cagoflow.morse_committee import MorseCommittee, MorseModel
from cagoflow.cago_gradients import ExactGradient, FiniteDifferenceGradient
from cagoflow.cago_objective import Geometry, Objective, Problem
from cagoflow.calibration import PowerLaw
from cagoflow.structures import water_box
from common import best_time, labelled_frames, trained_committee


def backend_table(args) -> Table:
    """Throughput and gradient table of the trained MLIP backends (part 2 of the docstring)."""
    table = Table(title=f"{args.molecules} H2O, committee of {args.members} tiny members, {torch.get_num_threads()} torch threads")
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
            model = trained_committee(backend_name, folder, files, args.members, args.steps)
            model.predict(copies[:2])  # warm up
            single = best_time(lambda: [model.predict([atoms]) for atoms in copies], 1)
            batched = best_time(lambda: model.predict(copies), 2)
            problem = Problem(Geometry(box, optimize_cell=True), Objective(PowerLaw(1.0, 1.0), 0.2))
            z = problem.geometry.initial()
            fd = best_time(lambda: FiniteDifferenceGradient(model, 1e-4)([problem], [z]), 1)
            exact = best_time(lambda: ExactGradient(model)([problem], [z]), 2)
            table.add_row(
                backend_name, f"{64 / single:.1f}", f"{64 / batched:.1f}", f"{single / batched:.2f}×",
                f"{fd:.2f}", f"{exact:.3f}", f"{fd / exact:.0f}×",
            )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="water molecules per box")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", nargs="*", default=[], help="MLIP backends for part 2 (deepmd nequip allegro)")
    parser.add_argument("--molecules", type=int, default=64, help="H2O per box in part 2")
    parser.add_argument("--steps", type=int, default=100, help="training steps per member in part 2")
    args = parser.parse_args()

    committee = MorseCommittee(MorseModel.for_symbols(["O", "H"], n_members=args.members, spread=0.05, seed=1))
    step = 1e-3
    table = Table(title=f"one CAGO gradient, committee of {args.members}, {torch.get_num_threads()} torch threads")
    for column in ("H2O", "atoms", "structures / FD gradient", "FD one at a time (s)", "FD batched (s)",
                   "batched speed-up", "autograd (s)", "autograd vs batched FD"):  # fmt: skip
        table.add_column(column, justify="right")
    for n in args.sizes:
        atoms = water_box(n, seed=0)
        geometry = Geometry(atoms, optimize_cell=True)
        problem = Problem(geometry, Objective(PowerLaw(1.0, 1.0), 0.2, force_bias=0.1))
        z = geometry.initial()
        single = FiniteDifferenceGradient(committee, step, batch_size=1)
        batched = FiniteDifferenceGradient(committee, step, batch_size=None)
        exact = ExactGradient(committee)
        t_single = best_time(lambda: single([problem], [z]), 1 if n > 32 else args.repeat)
        t_batched = best_time(lambda: batched([problem], [z]), args.repeat)
        t_exact = best_time(lambda: exact([problem], [z]), args.repeat)
        assert np.allclose(single([problem], [z])[0].gradient, batched([problem], [z])[0].gradient, rtol=0, atol=1e-10)
        table.add_row(
            str(n), str(len(atoms)), str(geometry.n_variables + 1), f"{t_single:.3f}", f"{t_batched:.3f}",
            f"{t_single / t_batched:.1f}×", f"{t_exact:.4f}", f"{t_batched / t_exact:.0f}×",
        )  # fmt: skip
    Console(width=150).print(table)
    if args.backends:
        Console(width=150).print(backend_table(args))


if __name__ == "__main__":
    main()
