"""Vectorised CAGO: K structures optimised together (one committee call per round) vs one at a time.

Per backend (``--backends``, default: analytic deepmd nequip allegro) a committee of
``--members`` tiny members (the analytic Morse committee, or members trained here for
``--train-steps`` steps on GFN1-xTB water frames) pushes K rattled boxes of ``--molecules`` H2O
for exactly ``--cago-steps`` L-BFGS iterations (δ out of reach, guard on, exact gradients), for
each K of ``--sizes``: once all K together (:func:`cagoflow.cago.run_cago_batch`) and once one
after another (:func:`cagoflow.cago.run_cago`). It prints CAGO structures finished per second
both ways and their ratio, and checks that both give the same structures.

    python benchmarks/cago_batch.py [--backends deepmd] [--sizes 1 4 16 64] [--device cpu|cuda] [--markdown FILE]
"""

from __future__ import annotations

import math

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cagoflow.morse_committee import MorseCommittee, MorseModel
from cagoflow.cago import CagoCalibration, CagoSettings, run_cago, run_cago_batch
from cagoflow.calibration import PowerLaw
from cagoflow.geometry import shortest_pair_distances
from cagoflow.structures import water_box
from common import labelled_frames, trained_committee

#: Calibration of the benchmark: the raw spread (a = b = 1).
LAW = PowerLaw(1.0, 1.0)


def starts(count: int, molecules: int) -> list:
    """``count`` rattled boxes of ``molecules`` H2O (different seeds)."""
    structures = []
    for k in range(count):
        atoms = water_box(molecules, seed=k % 5)
        atoms.rattle(stdev=0.02, seed=k)
        structures.append(atoms)
    return structures


def measure(committee, structures: list, cago_steps: int) -> tuple[float, float, float]:
    """Seconds for all structures together and one at a time, and the largest position difference (Å)."""
    settings = CagoSettings(delta=100.0, max_steps=cago_steps, trust_region=None, packing_guard=None)
    calibration = CagoCalibration(LAW, validity_limit=math.inf, contact_distances=shortest_pair_distances(structures))
    warm_up = settings.model_copy(update={"max_steps": 1})
    run_cago_batch(structures[:2], committee, calibration, warm_up)
    run_cago(structures[0], committee, calibration, warm_up)
    begin = time.perf_counter()
    together = run_cago_batch(structures, committee, calibration, settings)
    batched = time.perf_counter() - begin
    begin = time.perf_counter()
    alone = [run_cago(atoms, committee, calibration, settings) for atoms in structures]
    single = time.perf_counter() - begin
    difference = max(float(np.abs(a.atoms.positions - b.atoms.positions).max()) for a, b in zip(together, alone))
    return batched, single, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["morse", "deepmd", "nequip", "allegro"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="structures optimised together (K)")
    parser.add_argument("--molecules", type=int, default=64, help="H2O per box")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=100, help="training steps per member")
    parser.add_argument("--cago-steps", type=int, default=5, help="L-BFGS iterations per structure")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args()

    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} torch threads"
    table = Table(title=f"CAGO structures per second, {args.molecules} H2O, {args.members} members, "
                        f"{args.cago_steps} steps each, {where}")  # fmt: skip
    columns = ("backend", "K", "together (s)", "one at a time (s)", "together (struct/s)", "one at a time (struct/s)", "gain", "max |Δx| (Å)")
    for column in columns:
        table.add_column(column, justify="right")
    rows = []
    structures = starts(max(args.sizes), args.molecules)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        files = None
        for backend in args.backends:
            if backend == "morse":  # the fixed, untrained test committee
                committee = MorseCommittee(MorseModel.for_symbols(["O", "H"], n_members=args.members, spread=0.05, seed=1))
            else:
                files = files or labelled_frames(folder)
                committee = trained_committee(backend, folder, files, args.members, args.train_steps, device=args.device)
            for k in args.sizes:
                batched, single, difference = measure(committee, structures[:k], args.cago_steps)
                row = (backend, str(k), f"{batched:.2f}", f"{single:.2f}", f"{k / batched:.2f}", f"{k / single:.2f}",
                       f"{single / batched:.2f}×", f"{difference:.1e}")  # fmt: skip
                rows.append(row)
                table.add_row(*row)
                Console(width=160).print(f"{backend} K={k}: {single / batched:.2f}× ({batched:.1f} s vs {single:.1f} s)")
    Console(width=160).print(table)
    if args.markdown:
        lines = [f"{table.title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
