"""CAGO: calibrated adversarial geometry optimisation (Cezar et al. 2025, eq. 8).

A structure is pushed by L-BFGS until the calibrated per-atom force uncertainty of the
committee reaches the user's target error δ:

    L(x) = 1/(N δ²) Σ_i [ (σ_cal,F_i(x) − δ)² + l_bias |F̄_i(x)|² ]
           + w_P ((P̄(x) − P_target) / 1 GPa)²  +  w_c Σ_pairs max(0, 1 − d/d_min)²

σ_cal,F_i = a·σ̂_F_i^b (the power law of :mod:`cagoflow.calibration`), F̄ the committee-mean
force, P̄ the committee-mean pressure. Dividing by N δ² makes L dimensionless and of order one,
so stopping tolerances do not depend on units or system size. The last term is the optional
close-contact guard: small committees are easily fooled by atoms pushed together.

Variables: ``u`` (N×3, Å), the positions expressed in the initial cell (scaled coordinates
times the initial cell), and, when the cell is optimised, a symmetric strain ε (6 Voigt
components, multiplied by the cube root of the volume so they are in Å like ``u``). The
structure at a point is ``positions = u (I + ε)``, ``cell = cell₀ (I + ε)``.

The gradient comes either from two-point finite differences — the centre plus one displaced
structure per variable, 3N + 6 + 1 structures, evaluated in ONE batched committee call — or
from an exact gradient hook (autograd through a differentiable committee, see
:mod:`cagoflow.autograd`), chosen automatically.

The structure's achieved uncertainty is the RMS over atoms of σ_cal,F_i, the same average that
judges its true error once reference labels exist (:func:`true_force_error`). CAGO stops when it
lies within ``tolerance·δ`` of δ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
from ase import Atoms
from ase.units import GPa
from scipy.optimize import minimize

from cagoflow.calibration import PowerLaw, per_atom_force_error
from cagoflow.committee import Committee, DifferentiableCommittee, force_sigma_hat, predict_in_batches
from cagoflow.errors import InputError
from cagoflow.geometry import close_pairs

log = logging.getLogger(__name__)

GradientKind = Literal["auto", "finite_difference", "exact"]


@dataclass(frozen=True)
class CagoSettings:
    """Settings of one CAGO run.

    Attributes:
        delta: target calibrated force uncertainty δ, eV/Å.
        tolerance: relative tolerance on reaching δ (stop when |σ_cal − δ| ≤ tolerance·δ).
        l_bias: weight of the committee-mean force term |F̄_i|² (dimensionless; 0 disables).
        pressure_weight: weight of ((P̄ − target_pressure)/1 GPa)² (0 disables).
        target_pressure: target pressure of the pressure bias, bar.
        max_steps: L-BFGS iterations at most.
        optimize_cell: optimise the cell too (periodic structures only).
        min_distance: close-contact guard distance d_min, Å (None disables).
        contact_weight: weight w_c of the close-contact penalty.
        fd_step: finite-difference step, Å (strain steps in units of the cube root of the volume).
        gradient: "auto" (exact when the committee is differentiable), "finite_difference", "exact".
        batch_size: structures per committee call for finite differences (None: all 3N+7 at once).
        above_validity: what to do with a δ above the calibration's validity limit:
            "clamp" (use the limit, warn) or "refuse" (raise :class:`InputError`).
    """

    delta: float
    tolerance: float = 0.05
    l_bias: float = 0.0
    pressure_weight: float = 0.0
    target_pressure: float = 1.0
    max_steps: int = 200
    optimize_cell: bool = True
    min_distance: float | None = None
    contact_weight: float = 10.0
    fd_step: float = 1e-3
    gradient: GradientKind = "auto"
    batch_size: int | None = None
    above_validity: Literal["clamp", "refuse"] = "clamp"

    def __post_init__(self) -> None:
        if not self.delta > 0:
            raise InputError(f"the target error must be positive, got {self.delta} eV/Å", field="cago.delta")
        if not 0 < self.tolerance < 1:
            raise InputError(f"expected a relative tolerance in (0, 1), got {self.tolerance}", field="cago.tolerance")
        if self.max_steps < 1:
            raise InputError(f"expected at least one step, got {self.max_steps}", field="cago.max_steps")
        if not self.fd_step > 0:
            raise InputError(f"the finite-difference step must be positive, got {self.fd_step}", field="cago.fd_step")


@dataclass(frozen=True)
class CagoResult:
    """Outcome of one CAGO run.

    Attributes:
        atoms: the final structure (its ``info`` carries ``cago_*`` provenance).
        trajectory: the structure after every L-BFGS iteration, starting with the input.
        sigma_history: RMS over atoms of σ_cal,F_i for every structure of the trajectory, eV/Å.
        sigma_cal: (N,) calibrated per-atom force uncertainty of the final structure, eV/Å.
        delta: the δ used (eV/Å), after clamping to the validity limit if that happened.
        requested_delta: the δ asked for, eV/Å.
        reason: "reached", "max_steps", "stalled" (L-BFGS converged elsewhere) or "not_finite".
        n_steps: L-BFGS iterations done.
        n_structure_evaluations: structures the committee evaluated in all.
        gradient: "finite_difference" or "exact".
        warnings: what the user should know (a clamped δ, for instance).
    """

    atoms: Atoms
    trajectory: tuple[Atoms, ...]
    sigma_history: tuple[float, ...]
    sigma_cal: np.ndarray
    delta: float
    requested_delta: float
    reason: str
    n_steps: int
    n_structure_evaluations: int
    gradient: str
    warnings: tuple[str, ...] = ()

    @property
    def sigma_cal_rms(self) -> float:
        """RMS over atoms of σ_cal,F_i, eV/Å: the quantity CAGO drives to δ."""
        return float(np.sqrt(np.mean(self.sigma_cal**2)))

    @property
    def sigma_cal_mean(self) -> float:
        """Mean over atoms of σ_cal,F_i, eV/Å."""
        return float(np.mean(self.sigma_cal))

    @property
    def reached(self) -> bool:
        return self.reason == "reached"


# --- the variables and the structure they describe -----------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Maps optimisation variables to structures (see the module docstring)."""

    reference: Atoms
    optimize_cell: bool

    @property
    def n_atoms(self) -> int:
        return len(self.reference)

    @property
    def n_variables(self) -> int:
        return 3 * self.n_atoms + (6 if self.optimize_cell else 0)

    @property
    def strain_scale(self) -> float:
        """Length (Å) that turns a strain into a variable of the size of a displacement."""
        return float(self.reference.get_volume() ** (1 / 3)) if self.optimize_cell else 1.0

    def initial(self) -> np.ndarray:
        return np.concatenate([self.reference.positions.ravel(), np.zeros(6 if self.optimize_cell else 0)])

    def split(self, z: Any) -> tuple[Any, Any]:
        """Positions in the reference cell (N, 3) and the deformation gradient I + ε (3, 3).

        Written for NumPy arrays and torch tensors alike.
        """
        n = 3 * self.n_atoms
        u = z[:n].reshape(self.n_atoms, 3)
        if not self.optimize_cell:
            return u, None
        e = z[n:] / self.strain_scale
        rows = [[e[0], e[5], e[4]], [e[5], e[1], e[3]], [e[4], e[3], e[2]]]
        if isinstance(z, np.ndarray):
            return u, np.eye(3) + np.array(rows)
        import torch

        return u, torch.eye(3, dtype=z.dtype) + torch.stack([torch.stack(row) for row in rows])

    def positions_and_cell(self, z: Any) -> tuple[Any, Any]:
        """Positions (N, 3) and cell (3, 3), Å, at variables ``z`` (NumPy or torch)."""
        u, deformation = self.split(z)
        cell = np.asarray(self.reference.cell)
        if not isinstance(z, np.ndarray):
            import torch

            cell = torch.as_tensor(cell, dtype=z.dtype)
        if deformation is None:
            return u, cell
        return u @ deformation, cell @ deformation

    def atoms(self, z: np.ndarray) -> Atoms:
        positions, cell = self.positions_and_cell(z)
        return Atoms(self.reference.numbers, positions=positions, cell=cell, pbc=self.reference.pbc)


# --- the objective, shared by finite differences (NumPy) and autograd (torch) --------------------


@dataclass(frozen=True)
class Objective:
    """The CAGO objective for one calibration and one set of settings."""

    law: PowerLaw
    settings: CagoSettings
    delta: float

    def __call__(self, forces: Any, pressures: Any = None, distances: Any = None) -> Any:
        """L for one structure from per-member forces (M, N, 3) eV/Å, pressures (M,) eV/Å³ and
        the distances (Å) of the guarded pairs. NumPy or torch, differentiable."""
        n_atoms = forces.shape[1]
        sigma_cal = self.law(force_sigma_hat(forces))
        value = ((sigma_cal - self.delta) ** 2).sum()
        if self.settings.l_bias:
            value = value + self.settings.l_bias * (forces.mean(0) ** 2).sum()
        value = value / (n_atoms * self.delta**2)
        if self.settings.pressure_weight and pressures is not None:
            target = self.settings.target_pressure * 1e-4 * GPa  # bar → eV/Å³
            value = value + self.settings.pressure_weight * ((pressures.mean() - target) / GPa) ** 2
        if self.settings.min_distance is not None and distances is not None and len(distances):
            gap = 1.0 - distances / self.settings.min_distance
            value = value + self.settings.contact_weight * (((abs(gap) + gap) / 2) ** 2).sum()
        return value

    def sigma_cal(self, forces: np.ndarray) -> np.ndarray:
        return self.law(force_sigma_hat(forces))


def pair_distances(positions: Any, cell: Any, i: np.ndarray, j: np.ndarray, shifts: np.ndarray) -> Any:
    """Distances (Å) of the pairs (i, j, cell shift) for NumPy or torch positions and cell."""
    if isinstance(positions, np.ndarray):
        vectors = positions[j] - positions[i] + shifts @ cell
        return np.sqrt((vectors**2).sum(-1))
    import torch

    vectors = positions[j] - positions[i] + torch.as_tensor(shifts, dtype=positions.dtype) @ cell
    return torch.sqrt((vectors**2).sum(-1))


@dataclass
class Evaluation:
    """The objective at one point, with the centre's per-atom σ_cal (eV/Å)."""

    value: float
    gradient: np.ndarray
    sigma_cal: np.ndarray


#: ``gradient_fn(z) -> Evaluation``: objective, gradient and σ_cal at variables ``z``.
GradientFunction = Callable[[np.ndarray], Evaluation]


@dataclass
class FiniteDifferenceGradient:
    """Two-point finite differences: the centre and 3N(+6) displaced structures, batched.

    ``batch_size`` None evaluates all 3N + 6 + 1 structures in ONE committee call;
    ``batch_size=1`` evaluates them one at a time (same numbers, for comparison).
    """

    committee: Committee
    geometry: Geometry
    objective: Objective
    step: float
    batch_size: int | None = None
    n_structure_evaluations: int = field(default=0, init=False)

    def __call__(self, z: np.ndarray) -> Evaluation:
        displaced = [z] + [z + self.step * unit for unit in np.eye(z.size)]
        structures = [self.geometry.atoms(point) for point in displaced]
        prediction = predict_in_batches(self.committee, structures, self.batch_size)
        self.n_structure_evaluations += len(structures)
        forces = prediction.uniform_forces()  # (M, S, N, 3)
        pressures = _pressures(prediction.virials, structures)
        pairs = _guarded_pairs(structures[0], self.objective.settings)
        values = np.array(
            [
                self.objective(
                    forces[:, k],
                    None if pressures is None else pressures[:, k],
                    None if pairs is None else pair_distances(s.positions, np.asarray(s.cell), *pairs),
                )
                for k, s in enumerate(structures)
            ]
        )
        return Evaluation(
            value=float(values[0]),
            gradient=(values[1:] - values[0]) / self.step,
            sigma_cal=self.objective.sigma_cal(forces[:, 0]),
        )


def _pressures(virials: np.ndarray | None, structures: Sequence[Atoms]) -> np.ndarray | None:
    """(M, S) pressures, eV/Å³, from virials (M, S, 3, 3) eV; None without virials."""
    if virials is None or not all(s.pbc.all() for s in structures):
        return None
    volumes = np.array([s.get_volume() for s in structures])
    return np.trace(virials, axis1=-2, axis2=-1) / (3 * volumes)


def _guarded_pairs(atoms: Atoms, settings: CagoSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pairs that the close-contact guard watches: those within d_min + 0.5 Å of the centre."""
    if settings.min_distance is None:
        return None
    return close_pairs(atoms, settings.min_distance + 0.5)


def choose_gradient(committee: Committee, settings: CagoSettings) -> str:
    """The gradient method CAGO uses: exact where the committee is differentiable (auto)."""
    differentiable = isinstance(committee, DifferentiableCommittee)
    if settings.gradient == "exact" and not differentiable:
        raise InputError("this committee offers no exact gradient; use finite_difference or auto", field="cago.gradient")
    if settings.gradient == "auto":
        return "exact" if differentiable else "finite_difference"
    return settings.gradient


def effective_delta(settings: CagoSettings, validity_limit: float | None) -> tuple[float, tuple[str, ...]]:
    """δ to use and warnings, given the calibration's validity limit (eV/Å, None: unknown)."""
    if validity_limit is None or settings.delta <= validity_limit:
        return settings.delta, ()
    message = (
        f"the target error δ = {settings.delta * 1000:.0f} meV/Å lies above the validity limit of the "
        f"calibration ({validity_limit * 1000:.0f} meV/Å): above it the calibrated uncertainty no longer "
        "tracks the true error and CAGO overshoots"
    )
    if settings.above_validity == "refuse":
        raise InputError(message + "; lower δ or recalibrate on data that reach higher errors", field="cago.delta")
    log.warning("%s; using %.0f meV/Å instead", message, validity_limit * 1000)
    return validity_limit, (message + f"; δ clamped to {validity_limit * 1000:.0f} meV/Å",)


def run_cago(
    atoms: Atoms,
    committee: Committee,
    law: PowerLaw,
    settings: CagoSettings,
    *,
    validity_limit: float | None = None,
    gradient_fn: GradientFunction | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> CagoResult:
    """Push ``atoms`` until the committee's calibrated force uncertainty reaches δ.

    ``law`` must be the force calibration of exactly the members of ``committee`` (a subset
    calibration when CAGO runs on a subset). ``gradient_fn`` overrides the gradient (a hook for
    other differentiable models); ``progress(step, sigma_cal_rms)`` is called after every step.
    """
    delta, warnings = effective_delta(settings, validity_limit)
    geometry = Geometry(atoms.copy(), optimize_cell=settings.optimize_cell and bool(atoms.pbc.all()))
    objective = Objective(law, settings, delta)
    kind = "custom"
    if gradient_fn is None:
        kind = choose_gradient(committee, settings)
        if kind == "exact":
            from cagoflow.autograd import ExactGradient

            gradient_fn = ExactGradient(committee, geometry, objective)
        else:
            gradient_fn = FiniteDifferenceGradient(committee, geometry, objective, settings.fd_step, settings.batch_size)
    return _optimise(geometry, objective, gradient_fn, settings, kind, warnings, progress)


def _optimise(geometry, objective, gradient_fn, settings, kind, warnings, progress) -> CagoResult:
    cache: dict[bytes, Evaluation] = {}
    evaluations = 0

    def evaluate(z: np.ndarray) -> Evaluation:
        nonlocal evaluations
        key = z.tobytes()
        if key not in cache:
            cache.clear()  # L-BFGS only asks for the latest point again
            cache[key] = gradient_fn(z)
            evaluations += 1
        return cache[key]

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        evaluation = evaluate(z)
        return evaluation.value, evaluation.gradient

    def rms(sigma: np.ndarray) -> float:
        return float(np.sqrt(np.mean(sigma**2)))

    z0 = geometry.initial()
    trajectory = [geometry.atoms(z0)]
    state = {"z": z0, "sigma": evaluate(z0).sigma_cal, "steps": 0, "reason": "max_steps"}
    history = [rms(state["sigma"])]

    def reached(sigma: np.ndarray) -> bool:
        return abs(rms(sigma) - objective.delta) <= settings.tolerance * objective.delta

    def callback(intermediate_result) -> None:
        z = np.array(intermediate_result.x)
        evaluation = evaluate(z)
        state.update(z=z, sigma=evaluation.sigma_cal, steps=state["steps"] + 1)
        trajectory.append(geometry.atoms(z))
        history.append(rms(evaluation.sigma_cal))
        if progress is not None:
            progress(state["steps"], rms(evaluation.sigma_cal))
        if not np.isfinite(evaluation.value):
            state["reason"] = "not_finite"
            raise StopIteration
        if reached(evaluation.sigma_cal):
            state["reason"] = "reached"
            raise StopIteration

    if reached(state["sigma"]):
        state["reason"] = "reached"
    else:
        result = minimize(
            fun,
            z0,
            jac=True,
            method="L-BFGS-B",
            callback=callback,
            options={"maxiter": settings.max_steps, "maxfun": 20 * settings.max_steps, "ftol": 1e-12, "gtol": 1e-9},
        )
        if state["reason"] == "max_steps" and state["steps"] < settings.max_steps and result.status != 1:
            state["reason"] = "stalled"

    final = geometry.atoms(state["z"])
    sigma = np.asarray(state["sigma"])
    final.info.update(
        cago_delta=objective.delta,
        cago_sigma_cal_rms=rms(sigma),
        cago_sigma_cal_mean=float(sigma.mean()),
        cago_reason=state["reason"],
        cago_steps=state["steps"],
    )
    n_structures = getattr(gradient_fn, "n_structure_evaluations", evaluations)
    return CagoResult(
        atoms=final,
        trajectory=tuple(trajectory),
        sigma_history=tuple(history),
        sigma_cal=sigma,
        delta=objective.delta,
        requested_delta=settings.delta,
        reason=state["reason"],
        n_steps=state["steps"],
        n_structure_evaluations=int(n_structures),
        gradient=kind,
        warnings=warnings,
    )


# --- the hit: how close did the true error come to δ? ---------------------------------------------


@dataclass(frozen=True)
class CagoHit:
    """True force error of a CAGO structure once its reference is known.

    Attributes:
        true_error: RMS over atoms of e_i = sqrt((1/M) Σ_m |F_i^m − F_i^ref|²), eV/Å.
        delta: the target δ, eV/Å.
    """

    true_error: float
    delta: float

    @property
    def ratio(self) -> float:
        """true error / δ: 1 is a perfect hit, above 1 an overshoot."""
        return self.true_error / self.delta

    def provenance(self) -> dict[str, float]:
        return {"true_error": self.true_error, "delta": self.delta, "hit_ratio": self.ratio}


def true_force_error(member_forces: np.ndarray, reference_forces: np.ndarray) -> float:
    """RMS over atoms of the per-atom error e_i (eV/Å); ``member_forces`` (M, N, 3)."""
    return float(np.sqrt(np.mean(per_atom_force_error(member_forces, reference_forces) ** 2)))


def cago_hit(member_forces: np.ndarray, reference_forces: np.ndarray, delta: float) -> CagoHit:
    """The hit of one CAGO structure: its true error and the ratio to δ."""
    return CagoHit(true_error=true_force_error(member_forces, reference_forces), delta=delta)
