"""Which optimiser walks CAGO to δ in the fewest committee evaluations, and how safely.

On ``--structures`` rattled boxes of ``--molecules`` H2O and an analytic committee of 3 whose
unperturbed model is the truth (so the hit, true error / δ, is known), CAGO runs to δ =
``--factors`` × each start's calibrated error with the exact gradient, three ways:

- SciPy L-BFGS-B with its line search and no step limit (CAGO's optimiser before the step limit);
- ASE's L-BFGS with ``maxstep`` (what :func:`cagoflow.cago.run_cago` uses);
- ASE's FIRE with ``maxstep`` (a limit on the norm of the whole step, ASE's definition).

It prints, per optimiser and δ: structures that reached δ, mean committee evaluations (objective
and gradient at one point = one), the largest move of any atom in one iteration (Å), the
closest pair over the training set's shortest distance, and the hit.

    python benchmarks/cago_optimizer.py [--structures 8] [--molecules 16] [--factors 1.5 3]
"""

from __future__ import annotations

import math

import argparse
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.optimize import FIRE
from ase.utils.abc import Optimizable
from rich.console import Console
from rich.table import Table
from scipy.optimize import minimize

from cagoflow.morse_committee import MorseCalculator, MorseCommittee, MorseModel
from cagoflow.cago import CagoCalibration, CagoSettings, cago_hit, run_cago
from cagoflow.cago_gradients import ExactGradient
from cagoflow.cago_objective import Geometry, Objective, Problem
from cagoflow.calibration import PowerLaw, calibrate_committee
from cagoflow.committee import force_sigma_hat
from cagoflow.demo import label
from cagoflow.geometry import closest_contact, shortest_pair_distances
from cagoflow.structures import water_box

MAX_STEPS = 200


@dataclass(frozen=True)
class Outcome:
    """One structure's CAGO run: reached δ, committee evaluations, largest move in one iteration (Å), end point."""

    reached: bool
    evaluations: int
    largest_step: float
    final: Atoms
    delta: float


def rms(values) -> float:
    return float(np.sqrt(np.mean(np.asarray(values) ** 2)))


class Walk:
    """One structure's path under an optimiser: points, σ_cal RMS and evaluations."""

    def __init__(self, committee, law: PowerLaw, atoms, delta: float):
        self.problem = Problem(Geometry(atoms.copy(), optimize_cell=True), Objective(law, delta))
        self.gradient = ExactGradient(committee)
        self.delta = delta
        self.evaluations = 0
        self.cache: dict[bytes, object] = {}
        self.points: list[np.ndarray] = []
        self.reached = False

    def evaluate(self, z: np.ndarray):
        """Objective and gradient at ``z`` (a point asked for again costs nothing: SciPy does that)."""
        key = z.tobytes()
        if key not in self.cache:
            (self.cache[key],) = self.gradient([self.problem], [z])
            self.evaluations += 1
        return self.cache[key]

    def accept(self, z: np.ndarray, sigma: np.ndarray) -> bool:
        """Record a new iterate; True once its σ_cal RMS is within 5 % of δ."""
        self.points.append(np.array(z))
        self.reached = abs(rms(sigma) - self.delta) <= 0.05 * self.delta
        return self.reached

    def outcome(self) -> Outcome:
        geometry = self.problem.geometry
        steps = [geometry.displacements(a, b - a).max() for a, b in zip(self.points, self.points[1:])]
        final = geometry.atoms(self.points[-1])
        return Outcome(self.reached, self.evaluations, float(max(steps, default=0.0)), final, self.delta)


def scipy_walk(walk: Walk) -> Outcome:
    z0 = walk.problem.geometry.initial()
    first = walk.evaluate(z0)
    if walk.accept(z0, first.sigma_cal):
        return walk.outcome()

    def fun(z):
        evaluation = walk.evaluate(z)
        return evaluation.value, evaluation.gradient

    def callback(intermediate_result):
        z = np.array(intermediate_result.x)
        if walk.accept(z, walk.evaluate(z).sigma_cal):
            raise StopIteration

    minimize(fun, z0, jac=True, method="L-BFGS-B", callback=callback, options={"maxiter": MAX_STEPS, "ftol": 1e-12, "gtol": 1e-9})
    return walk.outcome()


class _Point(Optimizable):
    """The walk's variables for ASE's FIRE (one evaluation per step)."""

    def __init__(self, walk: Walk):
        self.walk, self.x = walk, walk.problem.geometry.initial()
        self.current = walk.evaluate(self.x)

    def ndofs(self):
        return self.x.size

    def get_x(self):
        return self.x.copy()

    def set_x(self, x):
        self.x = np.array(x)
        self.current = self.walk.evaluate(self.x)

    def get_gradient(self):
        return self.current.gradient

    def get_value(self):
        return self.current.value

    def iterimages(self):
        yield self.walk.problem.geometry.atoms(self.x)


def fire_walk(walk: Walk, max_step: float) -> Outcome:
    point = _Point(walk)
    if walk.accept(point.x, point.current.sigma_cal):
        return walk.outcome()
    scale = np.abs(point.current.gradient).max()  # the objective is dimensionless: unit forces at the start
    optimizer = FIRE(point, logfile=None, maxstep=max_step, dt=max_step / 10)
    point.current.gradient = point.current.gradient / scale
    for _ in range(MAX_STEPS):
        optimizer.step()
        point.current.gradient = point.current.gradient / scale
        if walk.accept(point.x, point.current.sigma_cal):
            break
    return walk.outcome()


def lbfgs_run(committee, law: PowerLaw, atoms: Atoms, delta: float, max_step: float) -> Outcome:
    """CAGO as cagoflow runs it (guard off, to compare the optimisers alone)."""
    settings = CagoSettings(delta=delta, max_steps=MAX_STEPS, max_step=max_step, contact_guard=None, trust_region=None, packing_guard=None)
    result = run_cago(atoms, committee, CagoCalibration(law, validity_limit=math.inf), settings)
    moves = [float(np.linalg.norm(b.positions - a.positions, axis=1).max()) for a, b in zip(result.trajectory, result.trajectory[1:])]
    return Outcome(result.reached, result.n_structure_evaluations, max(moves, default=0.0), result.atoms, delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=8)
    parser.add_argument("--molecules", type=int, default=16)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.5, 3.0], help="δ / each start's σ_cal")
    parser.add_argument("--max-step", type=float, default=0.1, help="Å")
    args = parser.parse_args()

    model = MorseModel.for_symbols(["O", "H"], n_members=3, spread=0.05, seed=1)
    committee, truth = MorseCommittee(model), MorseCalculator(MorseModel.for_symbols(["O", "H"]))
    rng = np.random.default_rng(0)
    training = []
    for k in range(24):
        atoms = water_box(args.molecules, seed=k % 4)
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.1)), seed=k)
        training.append(atoms)
    labelled = label(training, truth)
    law = calibrate_committee(committee.predict(labelled), labelled).forces.law
    shortest = shortest_pair_distances(training)
    starts = training[: args.structures]

    table = Table(title=f"CAGO optimisers: {args.structures} boxes of {args.molecules} H2O, analytic committee of 3, "
                        f"exact gradient, max_step {args.max_step} Å")  # fmt: skip
    for column in ("optimiser", "δ / σ_start", "reached", "evaluations (mean)", "largest step (Å)",
                   "closest pair / training", "hit (mean ± std)"):  # fmt: skip
        table.add_column(column, justify="right")
    for factor in args.factors:
        deltas = [factor * rms(law(force_sigma_hat(committee.predict([atoms]).forces))) for atoms in starts]
        runs = {
            "SciPy L-BFGS-B (no step limit)": [scipy_walk(Walk(committee, law, a, d)) for a, d in zip(starts, deltas)],
            "ASE L-BFGS, maxstep (kept)": [lbfgs_run(committee, law, a, d, args.max_step) for a, d in zip(starts, deltas)],
            "ASE FIRE, maxstep": [fire_walk(Walk(committee, law, a, d), args.max_step) for a, d in zip(starts, deltas)],
        }
        for name, outcomes in runs.items():
            references = label([o.final for o in outcomes], truth)
            hits = [cago_hit(committee.predict([r]).forces, r.get_forces(), o.delta).ratio for r, o in zip(references, outcomes)]
            contacts = [closest_contact(o.final, shortest)[0] for o in outcomes]
            table.add_row(
                name, f"{factor:g}", f"{sum(o.reached for o in outcomes)}/{len(outcomes)}",
                f"{np.mean([o.evaluations for o in outcomes]):.1f}", f"{max(o.largest_step for o in outcomes):.3f}",
                f"{min(contacts):.2f}", f"{np.mean(hits):.2f} ± {np.std(hits):.2f}",
            )  # fmt: skip
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
