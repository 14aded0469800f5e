"""Fit one analytic Morse member to labelled structures: the trainer of the "analytic" backend.

    python -m cagoflow.backends.analytic_train input.json

``input.json`` (:class:`cagoflow.backends.analytic.TrainingInput`, written by
:meth:`cagoflow.backends.analytic.AnalyticBackend.write_training_input`; relative paths start at
its folder) names the labelled training and validation structures, the type map, the member's
seed, the most L-BFGS iterations (0: evaluate and write the starting model), the
hyperparameters (:class:`cagoflow.backends.analytic.AnalyticHyperparameters`), a previous
``model.json`` to start from (fine-tuning) and the outputs (``model.json``, ``train.log``).

The parameters θ = (ln D, ln α, ln r0 of every species pair; the reference energy of every
species) minimise

    L = w_E · mean_s((E_s − E_s^ref) / N_s)² + w_F · mean_{i,k}(F_ik − F_ik^ref)²

with torch's L-BFGS (strong-Wolfe line search) in float64; the gradient comes from autograd
(forces by double backpropagation through :func:`cagoflow.morse_committee.pair_energies`). The pair
parameters are kept inside physical ranges (:class:`Parameters`). A fresh member starts from the
generic parameters of :meth:`MorseModel.for_symbols` times ``exp(perturbation · N(0, 1))`` drawn
from the seed, and from reference energies fitted by least squares to the remaining energy
per atom; a fine-tuned member starts from ``init_model`` exactly. The result depends only on the
input (no clock, no unseeded randomness).

Exit code 0: the model file is written. Exit code 1: bad input (a missing or empty file,
unlabelled structures, a species outside the type map, a bad hyperparameter) or a diverged fit,
with one message on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

import numpy as np

from cagoflow.morse_committee import MorseModel, PairList, build_pairs, pair_energies
from cagoflow.backends.analytic import (
    AnalyticHyperparameters,
    ReferencedMorseModel,
    TrainingInput,
    read_json_file,
    read_model_file,
    species_symbols,
    write_model_file,
)
from cagoflow.errors import InputError
from cagoflow.io import read_structures

#: L-BFGS stops when every gradient component is below this (loss units per unit of θ).
GRADIENT_TOLERANCE = 1e-12
#: Physical range of the fitted pair parameters: D (eV), α (1/Å); r0 lies between R0_MIN Å and
#: the cutoff. It keeps every line-search probe finite: e^{α (r0 − r)} < e^{α_max · cutoff}.
D_RANGE = (1e-4, 1e2)
ALPHA_RANGE = (0.05, 10.0)
R0_MIN = 0.2


class TrainingError(Exception):
    """The fit cannot run or did not converge to finite numbers (exit code 1)."""


# --- the starting model -------------------------------------------------------------------


def starting_model(settings: TrainingInput) -> tuple[ReferencedMorseModel, bool]:
    """The model to start from, and whether its reference energies still need a first fit.

    Fresh: :meth:`MorseModel.for_symbols` defaults for the type map, each parameter times
    ``exp(perturbation · N(0, 1))`` (seeded). Fine-tuning: ``init_model`` as it is (it must know
    every species of the type map and keep its cutoff and switch width).
    """
    hyper = settings.hyperparameters
    if settings.init_model is not None:
        model, _ = read_model_file(settings.init_model)
        missing = sorted(set(settings.type_map) - set(species_symbols(model.species)))
        if missing:
            message = f"the initial model has no parameters for {missing} of the type map"
            raise InputError(message, file=settings.init_model)
        for name in ("cutoff", "switch_width"):
            if name in hyper.model_fields_set and getattr(hyper, name) != getattr(model, name):
                raise InputError(
                    f"fine-tuning keeps the initial model's {name} ({getattr(model, name)} Å), "
                    f"but the hyperparameters ask for {getattr(hyper, name)} Å",
                    file=settings.init_model,
                )
        return model, False
    base = MorseModel.for_symbols(list(settings.type_map), cutoff=hyper.cutoff, switch_width=hyper.switch_width)
    rng = np.random.default_rng(settings.seed)
    n = len(base.species)
    upper = np.triu_indices(n)
    arrays = {}
    for name in ("D", "alpha", "r0"):
        values = getattr(base, name).copy()
        factors = np.exp(hyper.perturbation * rng.standard_normal(len(upper[0])))
        values[0][upper] *= factors
        values[0].T[upper] = values[0][upper]
        arrays[name] = values
    model = ReferencedMorseModel(base.species, cutoff=base.cutoff, switch_width=base.switch_width, **arrays)
    return model, True


# --- data and the differentiable fit ------------------------------------------------------


@dataclass(frozen=True)
class LabelledSet:
    """Labelled structures prepared for the fit: pair list, labels, composition (torch tensors)."""

    n_structures: int
    pairs: PairList
    positions: Any  # (1, A, 3) Å
    cells: Any  # (1, S, 3, 3) Å
    energies: Any  # (S,) eV
    forces: Any  # (A, 3) eV/Å
    natoms: Any  # (S,)
    composition: Any  # (S, Z)


def labelled_set(path: Path, model: ReferencedMorseModel) -> LabelledSet:
    """Read and check labelled structures (InputError naming the file) and build their pairs."""
    structures = read_structures(path, require_labels=True)
    known = set(model.species)
    for number, atoms in enumerate(structures):
        unknown = sorted({s for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers) if z not in known})
        if unknown:
            raise InputError(
                f"structure {number} has species {unknown} outside the type map {species_symbols(model.species)}",
                file=path,
            )
        energy, forces = atoms.calc.results["energy"], np.asarray(atoms.calc.results["forces"], dtype=float)
        if forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)) or not np.isfinite(energy):
            raise InputError(f"structure {number} has non-finite or misshapen energy/forces labels", file=path)
    try:
        pairs = build_pairs(structures, model)
    except ValueError as exc:  # e.g. a cell ASE cannot build neighbour lists for
        raise InputError(f"cannot build neighbour lists ({exc})", file=path) from None
    import torch

    def tensor(values: Any) -> Any:
        return torch.as_tensor(np.asarray(values, dtype=float), dtype=torch.float64)

    return LabelledSet(
        n_structures=len(structures),
        pairs=pairs,
        positions=tensor(np.concatenate([a.positions for a in structures]))[None],
        cells=tensor(np.stack([np.asarray(a.cell) for a in structures]))[None],
        energies=tensor([a.calc.results["energy"] for a in structures]),
        forces=tensor(np.concatenate([a.calc.results["forces"] for a in structures])),
        natoms=tensor(pairs.natoms),
        composition=tensor(model.composition(structures)),
    )


class Parameters:
    """The fitted variables θ of a model, and back.

    θ = (u_D, u_α, u_r0 of every species pair i ≤ j; the reference energy of every species, eV).
    Each pair parameter p stays inside its physical range [low, high] (:data:`D_RANGE`,
    :data:`ALPHA_RANGE`, :data:`R0_MIN` to the cutoff; widened to hold the starting value) through
    ``ln p = ln low + (ln high − ln low) · sigmoid(u)``, so no line-search probe gets an infinite energy.
    """

    NAMES = ("D", "alpha", "r0")

    def __init__(self, start: ReferencedMorseModel):
        self.template = start
        n = len(start.species)
        self.upper = np.triu_indices(n)
        self.n_pairs = len(self.upper[0])
        index = np.zeros((n, n), dtype=int)
        index[self.upper] = np.arange(self.n_pairs)
        index.T[self.upper] = np.arange(self.n_pairs)
        self.pair_index = index
        logs = self._logs(start)
        low = np.log([D_RANGE[0], ALPHA_RANGE[0], R0_MIN])[:, None]
        high = np.log([D_RANGE[1], ALPHA_RANGE[1], start.cutoff])[:, None]
        self.log_low = np.minimum(low, logs - 1.0)
        self.log_high = np.maximum(high, logs + 1.0)

    def _logs(self, model: ReferencedMorseModel) -> np.ndarray:
        """(3, P) logarithms of D, α, r0 of the pairs."""
        return np.stack([np.log(getattr(model, name)[0][self.upper]) for name in self.NAMES])

    def pack(self, model: ReferencedMorseModel) -> np.ndarray:
        fraction = (self._logs(model) - self.log_low) / (self.log_high - self.log_low)
        return np.concatenate([np.log(fraction / (1.0 - fraction)).ravel(), model.reference_energies[0]])

    def unpack(self, theta: Any) -> tuple[MorseModel, Any]:
        """A Morse model whose parameters are torch expressions of θ, and the reference energies."""
        import torch

        p = self.n_pairs
        low, high = torch.as_tensor(self.log_low), torch.as_tensor(self.log_high)
        values = torch.exp(low + (high - low) * torch.sigmoid(theta[: 3 * p].reshape(3, p)))
        full = values[:, torch.as_tensor(self.pair_index)][:, None]  # (3, 1, Z, Z)
        model = MorseModel(self.template.species, *full, self.template.cutoff, self.template.switch_width)
        return model, theta[3 * p :]

    def model(self, theta: Any) -> ReferencedMorseModel:
        """The model of θ as NumPy arrays (the very numbers :meth:`unpack` gives)."""
        morse, references = self.unpack(theta.detach())
        arrays = {name: getattr(morse, name).numpy().copy() for name in self.NAMES}
        return ReferencedMorseModel(
            self.template.species,
            cutoff=self.template.cutoff,
            switch_width=self.template.switch_width,
            reference_energies=references.numpy().copy()[None],
            **arrays,
        )


def predict(model: MorseModel, references: Any, data: LabelledSet, *, create_graph: bool) -> tuple[Any, Any]:
    """Energies (S,) eV and forces (A, 3) eV/Å of a Morse model (torch parameters) plus reference energies."""
    import torch

    positions = data.positions.clone().requires_grad_(True)
    pair_energy = pair_energies(model, data.pairs, positions, data.cells)[0]
    (gradient,) = torch.autograd.grad(pair_energy.sum(), positions, create_graph=create_graph)
    return pair_energy + data.composition @ references, -gradient[0]


def errors(parameters: Parameters, theta: Any, data: LabelledSet, *, create_graph: bool = False) -> tuple[Any, Any]:
    """Mean squared errors of the energy per atom (eV²/atom²) and of force components (eV²/Å²)."""
    energies, forces = predict(*parameters.unpack(theta), data, create_graph=create_graph)
    energy_mse = (((energies - data.energies) / data.natoms) ** 2).mean()
    force_mse = ((forces - data.forces) ** 2).mean()
    return energy_mse, force_mse


def rmse(parameters: Parameters, theta: Any, data: LabelledSet) -> tuple[float, float]:
    """RMSE of the energy per atom (eV/atom) and of force components (eV/Å) of model θ."""
    energy_mse, force_mse = errors(parameters, theta.detach(), data)
    return math.sqrt(float(energy_mse.detach())), math.sqrt(float(force_mse.detach()))


def fit_reference_energies(model: ReferencedMorseModel, data: LabelledSet) -> ReferencedMorseModel:
    """``model`` with the reference energies that best fit the energy per atom its pairs leave (least squares)."""
    import torch

    references = torch.zeros(len(model.species), dtype=torch.float64)
    energies, _ = predict(model, references, data, create_graph=False)
    natoms = data.natoms.numpy()
    residual = (data.energies - energies).detach().numpy() / natoms
    design = data.composition.numpy() / natoms[:, None]
    fitted = np.linalg.lstsq(design, residual, rcond=None)[0]
    return replace(model, reference_energies=fitted[None])


@dataclass(frozen=True)
class FitResult:
    """The fitted member, its final RMSEs (eV/atom, eV/Å) and how the optimiser ended."""

    model: ReferencedMorseModel
    metrics: dict[str, float]
    iterations: int
    converged: bool
    stop_reason: str
    loss: float


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread: a fit of a few dozen parameters gains nothing from more, and loses a
    lot on shared nodes; the numbers then do not depend on the machine's thread count either."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit(
    start: ReferencedMorseModel,
    train: LabelledSet,
    validation: LabelledSet,
    *,
    steps: int,
    hyperparameters: AnalyticHyperparameters,
    log: TextIO,
) -> FitResult:
    """Minimise the weighted loss from ``start`` with at most ``steps`` L-BFGS iterations (torch,
    strong-Wolfe line search). With ``steps = 0`` the result is ``start`` itself, bit for bit."""
    import torch

    parameters = Parameters(start)
    theta = torch.tensor(parameters.pack(start), dtype=torch.float64, requires_grad=True)
    w_energy, w_force = hyperparameters.energy_weight, hyperparameters.force_weight
    log_every = hyperparameters.log_every

    def closure() -> Any:
        energy_mse, force_mse = errors(parameters, theta, train, create_graph=True)
        loss = w_energy * energy_mse + w_force * force_mse
        (theta.grad,) = torch.autograd.grad(loss, theta)
        return loss.detach()

    def log_line(iteration: int) -> None:
        e_train, f_train = rmse(parameters, theta, train)
        e_val, f_val = rmse(parameters, theta, validation)
        loss = w_energy * e_train**2 + w_force * f_train**2
        log.write(
            f"iteration {iteration:5d}  loss {loss:.6e}  train rmse {e_train:.4e} eV/atom {f_train:.4e} eV/Å  "
            f"validation rmse {e_val:.4e} eV/atom {f_val:.4e} eV/Å\n"
        )
        log.flush()

    log_line(0)
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        history_size=20,
        tolerance_grad=GRADIENT_TOLERANCE,
        tolerance_change=hyperparameters.tolerance,
        line_search_fn="strong_wolfe",
    )
    iterations, converged = 0, steps == 0
    while iterations < steps:  # in chunks of log_every iterations; L-BFGS keeps its history between them
        chunk = min(log_every, steps - iterations)
        optimizer.param_groups[0].update(max_iter=chunk, max_eval=40 * chunk)
        before = optimizer.state[theta].get("n_iter", 0)
        optimizer.step(closure)
        done = optimizer.state[theta]["n_iter"] - before
        iterations += done
        log_line(iterations)
        if done < chunk:  # stopped by a tolerance before the chunk's iterations ran out
            converged = True
            break
    if steps == 0:
        reason = "steps = 0: the starting model as it is"
    elif converged:
        reason = "converged: the loss, the step or the gradient fell below its tolerance"
    else:
        reason = f"stopped after steps = {steps} iterations"
    e_train, f_train = rmse(parameters, theta, train)
    e_val, f_val = rmse(parameters, theta, validation)
    metrics = {
        "train_energy_per_atom": e_train,
        "train_forces": f_train,
        "validation_energy_per_atom": e_val,
        "validation_forces": f_val,
    }
    if not all(math.isfinite(v) for v in metrics.values()) or not bool(torch.isfinite(theta).all()):
        raise TrainingError(f"the fit diverged after {iterations} iterations (non-finite parameters or errors)")
    model = start if steps == 0 else parameters.model(theta)
    return FitResult(model, metrics, iterations, converged, reason, w_energy * e_train**2 + w_force * f_train**2)


# --- command line -------------------------------------------------------------------------


def train(settings: TrainingInput, log: TextIO) -> FitResult:
    """Read the data, fit one member, write the model file; bad input raises InputError."""
    start = time.perf_counter()
    model, fresh = starting_model(settings)
    settings.model_file.unlink(missing_ok=True)  # a failed run must not leave an older model behind
    train_set = labelled_set(settings.train_file, model)
    validation_set = labelled_set(settings.validation_file, model)
    geometry = {"cutoff": model.cutoff, "switch_width": model.switch_width}  # fine-tuning: the initial model's
    hyperparameters = settings.hyperparameters.model_copy(update=geometry)
    if fresh:
        model = fit_reference_energies(model, train_set)
    origin = f"fine-tuning {settings.init_model}" if settings.init_model else f"seed {settings.seed}"
    log.write(
        f"analytic Morse fit: {train_set.n_structures} training and {validation_set.n_structures} validation "
        f"structures, species {species_symbols(model.species)}, cutoff {model.cutoff} Å, {origin}, "
        f"at most {settings.steps} iterations\n"
    )
    with _one_thread():
        result = fit(model, train_set, validation_set, steps=settings.steps, hyperparameters=hyperparameters, log=log)
    training = {
        "seed": settings.seed,
        "steps": settings.steps,
        "preset": settings.preset,
        "iterations": result.iterations,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "loss": result.loss,
        "hyperparameters": hyperparameters.model_dump(),
        "init_model": None if settings.init_model is None else str(settings.init_model),
        "train_file": str(settings.train_file),
        "validation_file": str(settings.validation_file),
    }
    write_model_file(settings.model_file, result.model, result.metrics, training)
    log.write(
        f"done after {result.iterations} iterations ({result.stop_reason}) in {time.perf_counter() - start:.1f} s: "
        f"train rmse {result.metrics['train_energy_per_atom']:.4e} eV/atom {result.metrics['train_forces']:.4e} eV/Å, "
        f"validation rmse {result.metrics['validation_energy_per_atom']:.4e} eV/atom "
        f"{result.metrics['validation_forces']:.4e} eV/Å; wrote {settings.model_file}\n"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trainer; 0 on success, 1 with a message on stderr for bad input or a diverged fit."""
    parser = argparse.ArgumentParser(
        prog="python -m cagoflow.backends.analytic_train", description="Fit one analytic Morse committee member."
    )
    parser.add_argument("input", type=Path, help="the training input (input.json)")
    args = parser.parse_args(argv)
    try:
        settings = read_json_file(TrainingInput, args.input)
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(settings.log_file, "w") as log:
            try:
                result = train(settings, log)
            except (InputError, TrainingError) as exc:
                log.write(f"error: {exc}\n")
                raise
    except (InputError, TrainingError, OSError) as exc:
        print(f"analytic_train: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"analytic_train: {result.iterations} iterations, train force rmse {result.metrics['train_forces']:.4e} eV/Å; "
        f"wrote {settings.model_file}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
