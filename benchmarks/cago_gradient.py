"""Wall time of one CAGO gradient: batched vs one-at-a-time finite differences, and autograd.

Water boxes of 16 and 64 H2O, a committee of 3 (the analytic Morse committee), the full
objective with the cell. Each form is timed side by side in one run (best of ``--repeat``);
the table gives seconds per gradient and the ratios.

    python benchmarks/cago_gradient.py [--sizes 16 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cagoflow.analytic import MorseCommittee, MorseModel
from cagoflow.autograd import ExactGradient
from cagoflow.cago import CagoSettings, FiniteDifferenceGradient, Geometry, Objective
from cagoflow.calibration import PowerLaw
from cagoflow.structures import water_box


def best_time(function, repeat: int) -> float:
    """Smallest wall time of ``repeat`` calls, s."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="water molecules per box")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    committee = MorseCommittee(MorseModel.for_symbols(["O", "H"], n_members=args.members, spread=0.05, seed=1))
    settings = CagoSettings(delta=0.2, l_bias=0.1, min_distance=0.8)
    table = Table(title=f"one CAGO gradient, committee of {args.members}, {torch.get_num_threads()} torch threads")
    for column in ("H2O", "atoms", "structures / FD gradient", "FD one at a time (s)", "FD batched (s)",
                   "batched speed-up", "autograd (s)", "autograd vs batched FD"):  # fmt: skip
        table.add_column(column, justify="right")
    for n in args.sizes:
        atoms = water_box(n, seed=0)
        geometry = Geometry(atoms, optimize_cell=True)
        objective = Objective(PowerLaw(1.0, 1.0), settings, settings.delta)
        z = geometry.initial()
        single = FiniteDifferenceGradient(committee, geometry, objective, settings.fd_step, batch_size=1)
        batched = FiniteDifferenceGradient(committee, geometry, objective, settings.fd_step, batch_size=None)
        exact = ExactGradient(committee, geometry, objective)
        t_single = best_time(lambda: single(z), 1 if n > 32 else args.repeat)
        t_batched = best_time(lambda: batched(z), args.repeat)
        t_exact = best_time(lambda: exact(z), args.repeat)
        assert np.allclose(single(z).gradient, batched(z).gradient, rtol=0, atol=1e-10)
        table.add_row(
            str(n), str(len(atoms)), str(geometry.n_variables + 1), f"{t_single:.3f}", f"{t_batched:.3f}",
            f"{t_single / t_batched:.1f}×", f"{t_exact:.4f}", f"{t_batched / t_exact:.0f}×",
        )  # fmt: skip
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
