"""CAGO: calibrated adversarial geometry optimisation (Cezar et al. 2025, eq. 8).

Structures are pushed until the calibrated per-atom force uncertainty of the committee reaches
the user's target error δ (the objective and its variables: :mod:`cagoflow.cago_objective`).

The optimiser is ASE's L-BFGS (:class:`ase.optimize.LBFGS`), one per structure, each with its
own history, driven in lock-step: every round, ONE committee call evaluates the objective and
its gradient for all structures still running (:mod:`cagoflow.cago_gradients`), then each
takes its step. A GPU is idle with one 192-atom structure; it is not with sixty-four.

Safeguards against being fooled (small committees, large δ):

- a step limit: no atom moves more than ``max_step`` Å per iteration (ASE's ``maxstep``,
  measured on the real displacement including the cell's strain), so CAGO walks to δ instead
  of jumping past the data; the first step is exactly ``max_step`` long;
- a close-contact guard learned from the data: for every species pair, the limit is
  ``contact_guard.fraction`` of the shortest distance of that pair in the training set (stored
  with the calibration; the starting structures' where unknown). A step that would bring a pair
  closer is halved until it does not (after 6 halvings the structure stops, reason
  ``contact``): no structure CAGO returns lies inside the guard;
- a trust region: no atom moves farther than ``trust_region.radius`` Å from its start (default
  ``trust_region.factor`` × the thermal displacement of the MD frames CAGO starts from: the RMS
  displacement between consecutive frames / √2), so a walk stays near the structures the
  calibration was judged on. With ``trust_region.from_walks`` (campaigns), labelled CAGO
  structures in the test split narrow it to the largest displacement up to which they show the
  calibration holding (:mod:`cagoflow.walk_validity`); where they show none, the radius is 0 and
  no start is pushed (``no_trust``): it fails closed;
- a packing guard: the mean nearest-neighbour distance of every species pair stays within the
  range the training and calibration structures span, widened to hold the start's own packing
  (an MD frame may lie outside the data's range; the walk may not take it further), ±
  ``packing_guard.margin``: it catches a coherent compression or expansion that no single pair
  distance shows;
- δ must lie inside the calibration's validity limit, judged out of sample. An absolute δ above
  it is clamped (or refused); a relative δ is one-sided: CAGO never targets below the start's
  own σ_cal, and a start whose factor × σ_cal lies above the limit is not pushed (``no_room``;
  campaigns apply ``no_room`` policy: draw another start, send the frame unpushed, or drop it).
  Without a limit δ is refused (``no_limit``), never unchecked;
- every step limit above works the same way: a step that would cross one is halved until it
  does not; after 6 halvings the structure stops with that limit's name as its reason;
- every result records the largest displacement from its start, its closest contact against the
  guard and the steps taken; structures that reached δ in at most ``fast_steps`` steps or
  touched the guard are flagged (``fast``, ``contact``), so status tables and filters can act.

CAGO stops a structure when the RMS over atoms of σ_cal,F_i lies within ``tolerance·δ`` of δ
(``reached``), after ``max_steps`` iterations, when its objective is not finite, when its
gradient vanishes (``stalled``), or at a limit (``contact``, ``trust_region``, ``packing``).
Every result says where it went: the start's σ_cal, δ asked and used, and the direction
(``up``, ``down``, ``unmoved``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.optimize import LBFGS
from ase.utils.abc import Optimizable
from pydantic import Field, PositiveFloat, field_validator, model_validator

from cagoflow.cago_gradients import GradientKind, make_gradient
from cagoflow.cago_objective import Evaluation, Geometry, Objective, Problem
from cagoflow.calibration import PowerLaw, per_atom_force_error
from cagoflow.committee import Committee, force_sigma_hat
from cagoflow.errors import InputError
from cagoflow.geometry import (
    closest_contact,
    neighbour_distance_ranges,
    packing_departure,
    ranges_including,
    shortest_pair_distances,
    thermal_displacement,
)
from cagoflow.inputs import FieldError, InputModel
from cagoflow.walk_validity import DISPLACEMENT_KEY, WalkCheck

#: Halvings of a step that would cross the close-contact guard before the structure stops.
GUARD_HALVINGS = 6
#: Why no start is pushed under a trust radius of 0.
NO_TRUST = (
    "the labelled CAGO structures of the test split show the calibration holding at no displacement from a start "
    "(trust radius 0): no start is pushed"
)


# --- settings ------------------------------------------------------------------------------------


class RelativeDelta(InputModel):
    """δ relative to the committee's own error estimate of each starting structure."""

    relative: float = Field(
        ..., gt=1, description="δ = this factor (> 1) × the RMS over atoms of σ_cal,F_i of the starting structure: always uphill"
    )


class BiasSettings(InputModel):
    """Extra bias term of the CAGO objective."""

    kind: Literal["none", "force", "pressure"] = Field(
        "none", description="'force': weight·Σ_i |F̄_i|²; 'pressure': weight·((P̄ − target_pressure)/1 GPa)²"
    )
    weight: float = Field(0.0, ge=0, description="weight of the bias term (dimensionless)")
    target_pressure: float | None = Field(None, description="target pressure, bar (kind 'pressure' only)")

    @model_validator(mode="after")
    def _consistent(self) -> "BiasSettings":
        if self.kind == "none" and self.weight != 0:
            raise FieldError("a bias weight needs kind 'force' or 'pressure', found kind 'none'", "weight")
        if self.kind != "none" and self.weight <= 0:
            raise FieldError(f"bias kind '{self.kind}' needs a weight > 0, found {self.weight}", "weight")
        if self.kind == "pressure" and self.target_pressure is None:
            raise FieldError("bias kind 'pressure' needs target_pressure (bar)", "target_pressure")
        if self.kind != "pressure" and self.target_pressure is not None:
            raise FieldError(
                f"target_pressure applies to kind 'pressure' only, found kind '{self.kind}'", "target_pressure"
            )
        return self


class ContactGuard(InputModel):
    """The close-contact guard, learned from the training set."""

    fraction: float = Field(
        0.85, gt=0, le=1, description="no pair comes closer than this fraction of the shortest distance of its species in the training set"
    )


class TrustRegion(InputModel):
    """How far an atom may move from its start over a whole walk."""

    radius: PositiveFloat | None = Field(
        None, description="largest distance of any atom from its start, Å (null: factor × the thermal displacement of the MD frames)"
    )
    factor: PositiveFloat = Field(
        3.0, description="multiple of the MD frames' thermal displacement (RMS between consecutive frames / √2), when radius is null"
    )
    from_walks: bool = Field(
        True,
        description="campaigns: once the test split holds at least 8 labelled CAGO structures (dataset.cago_to_test), narrow the "
        "radius to the largest displacement up to which they show the calibration holding; where they show none, no start is pushed",
    )

    def resolve(self, frames: Sequence[Atoms]) -> float:
        """The radius in Å: as given, or ``factor`` × the thermal displacement of ``frames``
        (frames of one MD run, :func:`~cagoflow.geometry.thermal_displacement`)."""
        return self.radius_for(None if self.radius is not None else thermal_displacement(frames), len(frames))

    def radius_for(self, displacement: float | None, frames: int = 0) -> float:
        """The radius in Å: as given, or ``factor`` × ``displacement`` (Å; None: unknown)."""
        if self.radius is not None:
            return self.radius
        if not displacement:
            raise InputError(
                f"the trust radius cannot be derived from {frames} structure(s): it takes at least two MD frames of "
                "the same atoms; give trust_region: {radius: Å} (or null for no trust region)",
                field="cago.trust_region.radius",
            )
        return self.factor * displacement

    def narrowed(self, radius: float, walks: WalkCheck | None) -> tuple[float, str]:
        """The radius in Å and where it comes from, given ``radius`` (:meth:`radius_for`) and the
        check of the labelled walks in the test split: narrowed to the walks' radius ("walks"),
        0 when they show the calibration holding nowhere ("walks: none holds", no start is
        pushed), else unchanged ("given" or "thermal"; also with ``from_walks`` off or too few
        walks to judge)."""
        unchanged = (radius, "given" if self.radius is not None else "thermal")
        if not self.from_walks or walks is None or not walks.judged:
            return unchanged
        if walks.radius is None:
            return 0.0, "walks: none holds"
        return (walks.radius, "walks") if walks.radius < radius else unchanged


class PackingGuard(InputModel):
    """Keeps the packing (mean nearest-neighbour distance per species pair) inside the data's range."""

    margin: float = Field(
        0.03, ge=0, le=0.5,
        description="allowed relative departure beyond the packing range of the training and calibration structures and the start",
    )


class CagoSettings(InputModel):
    """Calibrated adversarial geometry optimisation: push structures until σ_cal,F = δ.

    One model for the command line and campaigns, so their defaults cannot differ.
    """

    delta: PositiveFloat | RelativeDelta = Field(
        0.1, description="target calibrated force error δ per atom, eV/Å (the paper: 0.1–0.2), or {relative: factor}"
    )
    tolerance: float = Field(0.05, gt=0, lt=1, description="reached when |σ_cal − δ| ≤ tolerance·δ (relative)")
    l_bias: float = Field(0.0, ge=0, description="weight of the committee-mean force term |F̄_i|² (dimensionless)")
    bias: BiasSettings = Field(BiasSettings(), description="optional extra bias term")
    max_steps: int = Field(200, ge=1, description="L-BFGS iterations per structure at most")
    max_step: float = Field(0.1, gt=0, le=1, description="largest distance any atom moves in one iteration, Å")
    optimize_cell: bool = Field(True, description="optimise the cell too (periodic structures only)")
    contact_guard: ContactGuard | None = Field(ContactGuard(), description="close-contact guard (null: none)")
    trust_region: TrustRegion | None = Field(TrustRegion(), description="trust region around each start (null: none)")
    packing_guard: PackingGuard | None = Field(PackingGuard(), description="packing guard (null: none)")
    gradient: GradientKind = Field(
        "auto", description="objective gradient: exact (autograd) where the backend offers it, else finite differences"
    )
    fd_step: float = Field(1.0e-3, gt=0, le=0.1, description="finite-difference displacement, Å")
    batch_size: int | None = Field(
        None, ge=1, description="structures per committee call for finite differences (null: all at once)"
    )
    above_validity: Literal["clamp", "refuse"] = Field(
        "clamp", description="absolute δ above the calibration's validity limit: use the limit (clamp) or stop (refuse)"
    )
    no_room: Literal["redraw", "sampled", "drop"] = Field(
        "redraw",
        description="a start left unpushed (relative δ above the validity limit, or no limit): campaigns draw another "
        "start with room (redraw; none left: sampled), send the frame to the reference as it is (sampled), or drop it",
    )
    fast_steps: int = Field(2, ge=0, description="flag structures that reached δ in at most this many steps ('fast')")

    @field_validator("delta", mode="before")
    @classmethod
    def _delta(cls, value: Any) -> Any:
        if isinstance(value, Mapping):  # checked here, so that an error speaks of one arm of the union, not both
            factor = value.get("relative")
            if set(value) != {"relative"} or isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1:
                raise ValueError(
                    f"expected a relative δ as {{relative: factor above 1}} (CAGO pushes uncertainty up), found {dict(value)!r}"
                )
            return RelativeDelta(relative=factor)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0:
            raise ValueError(f"the target error δ must be a positive number of eV/Å (or {{relative: factor}}), found {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "min_distance" in data:
            raise FieldError(
                "a fixed close-contact distance is no longer used: the guard learns the shortest distance of "
                "every species pair from the training set; set contact_guard: {fraction: 0.85} (or null for none)",
                "min_distance",
            )
        return data

    @model_validator(mode="after")
    def _one_force_bias(self) -> "CagoSettings":
        if self.l_bias > 0 and self.bias.kind == "force":
            raise FieldError("give the force-bias weight once: either l_bias or bias {kind: force, weight}", "l_bias")
        return self

    @property
    def delta_text(self) -> str:
        """δ in words: "δ = 100 meV/Å" or "δ = 1.5 × each start's σ_cal"."""
        if isinstance(self.delta, RelativeDelta):
            return f"δ = {self.delta.relative:g} × each start's σ_cal"
        return f"δ = {1000 * self.delta:.0f} meV/Å"

    @property
    def force_bias_weight(self) -> float:
        """Weight of Σ_i |F̄_i|² in the objective (from ``l_bias`` or a ``force`` bias)."""
        return self.bias.weight if self.bias.kind == "force" else self.l_bias


# --- what CAGO needs from a calibration ------------------------------------------------------------


@dataclass(frozen=True)
class CagoCalibration:
    """The parts of a calibration CAGO uses (see :meth:`cagoflow.calibration.CommitteeCalibration.for_cago`).

    Attributes:
        law: force power law of exactly the members CAGO uses.
        validity_limit: largest σ_cal (eV/Å) up to which the calibration holds; None: unknown.
        contact_distances: shortest distance of each species pair in the training set, Å
            (None: unknown, the guard uses the starting structures').
        test_sigma_cal: σ_cal (eV/Å) of the calibration's test points, to count those above δ.
        packing_ranges: per species pair, the range of mean nearest-neighbour distances (Å) of the
            training and calibration structures, for the packing guard (None: the starts').

    ``validity_limit`` None means the calibration holds nowhere that was judged: δ is refused.
    ``math.inf`` trusts the law everywhere (for analytic tests of the optimiser only).
    """

    law: PowerLaw
    validity_limit: float | None = None
    contact_distances: Mapping[str, float] | None = None
    test_sigma_cal: np.ndarray | None = field(default=None, repr=False)
    packing_ranges: Mapping[str, tuple[float, float]] | None = None

    def points_above(self, delta: float) -> int | None:
        """Test points whose σ_cal exceeds ``delta`` (None when not recorded)."""
        return None if self.test_sigma_cal is None else int(np.count_nonzero(np.asarray(self.test_sigma_cal) > delta))


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CagoResult:
    """Outcome of one structure's CAGO run.

    Attributes:
        atoms: the final structure (its ``info`` carries ``cago_*`` provenance).
        trajectory: the structure at every accepted point, starting with the input.
        sigma_history: RMS over atoms of σ_cal,F_i along the trajectory, eV/Å.
        sigma_cal: (N,) calibrated per-atom force uncertainty of the final structure, eV/Å.
        delta: the δ used (eV/Å), after a relative δ was resolved and clamping; None when the
            structure was not pushed (``no_room``, ``no_limit``, ``no_trust``).
        requested_delta: the δ asked for (absolute), eV/Å.
        reason: "reached", "max_steps", "stalled", "not_finite", "contact", "trust_region",
            "packing", "no_room", "no_limit" or "no_trust" (a trust radius of 0: no move trusted).
        n_steps: optimiser iterations done.
        n_structure_evaluations: structures the committee evaluated for this one (FD: 3N + 7 per round).
        gradient: "finite_difference" or "exact".
        max_displacement: largest distance of an atom from its start, Å, measured in the starting
            cell (a pure change of the cell counts as no displacement).
        closest_contact: smallest distance / (shortest distance of that species pair in the
            training set) of the final structure (inf: no guarded pair near), and that pair.
        guard: the limits used per species pair, Å (empty: no guard).
        trust_radius: the trust region's radius, Å (None: none).
        packing: the final structure's departure from the data's packing range (relative, 0:
            inside) and its pair.
        flags: "fast" (reached δ in 1 to ``fast_steps`` steps), and the name of every limit a
            step touched ("contact", "trust_region", "packing").
        points_above_delta: calibration test points with σ_cal > δ (None: not recorded).
        warnings: what the user should know (a clamped δ, for instance).
    """

    atoms: Atoms
    trajectory: tuple[Atoms, ...]
    sigma_history: tuple[float, ...]
    sigma_cal: np.ndarray
    delta: float | None
    requested_delta: float
    reason: str
    n_steps: int
    n_structure_evaluations: int
    gradient: str
    max_displacement: float = 0.0
    closest_contact: tuple[float, str | None] = (float("inf"), None)
    guard: Mapping[str, float] = field(default_factory=dict)
    trust_radius: float | None = None
    packing: tuple[float, str | None] = (0.0, None)
    flags: tuple[str, ...] = ()
    points_above_delta: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def sigma_cal_rms(self) -> float:
        """RMS over atoms of σ_cal,F_i, eV/Å: the quantity CAGO drives to δ."""
        return _rms(self.sigma_cal)

    @property
    def sigma_cal_mean(self) -> float:
        """Mean over atoms of σ_cal,F_i, eV/Å."""
        return float(np.mean(self.sigma_cal))

    @property
    def start_sigma_cal(self) -> float:
        """RMS over atoms of σ_cal,F_i of the start, eV/Å."""
        return self.sigma_history[0]

    @property
    def direction(self) -> str:
        """"up" or "down" (σ_cal at the end against the start), "unmoved" without a step."""
        if self.n_steps == 0:
            return "unmoved"
        return "up" if self.sigma_cal_rms > self.start_sigma_cal else "down"

    @property
    def reached(self) -> bool:
        return self.reason == "reached"

    def summary(self) -> dict:
        """The figures a status table shows (JSON-ready; distances Å, σ and δ eV/Å)."""
        ratio, pair = self.closest_contact
        return {
            "reason": self.reason, "steps": self.n_steps, "direction": self.direction,
            "start_sigma_cal": self.start_sigma_cal, "sigma_cal_rms": self.sigma_cal_rms, "delta": self.delta,
            "requested_delta": self.requested_delta, "max_displacement": self.max_displacement,
            "trust_radius": self.trust_radius, "packing_departure": self.packing[0], "packing_pair": self.packing[1],
            "closest_pair_ratio": ratio if np.isfinite(ratio) else None, "closest_pair": pair,
            "flags": list(self.flags), "points_above_delta": self.points_above_delta, "warnings": list(self.warnings),
        }  # fmt: skip


# --- δ -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaChoice:
    """The δ of one start (eV/Å).

    Attributes:
        requested: δ as asked (a relative δ resolved against the start's σ_cal).
        used: δ CAGO drives to; None when the start is not pushed.
        reason: why it is not pushed: "no_room" (a relative δ above the validity limit) or
            "no_limit" (the calibration has no validity limit); None when it is.
        warnings: what the user should know.
    """

    requested: float
    used: float | None
    reason: str | None = None
    warnings: tuple[str, ...] = ()


def choose_delta(start_sigma: float, settings: CagoSettings, validity_limit: float | None) -> DeltaChoice:
    """δ for a start whose σ_cal (RMS over atoms) is ``start_sigma`` eV/Å, given the
    calibration's validity limit (eV/Å; None: none was found, δ is refused).

    A relative δ never lies below the start (its factor is above 1), and is never clamped: a
    start without room below the limit is not pushed. An absolute δ above the limit is clamped
    to it or refused (``settings.above_validity``); its walk may then go down, as in the paper.
    """
    relative = isinstance(settings.delta, RelativeDelta)
    requested = settings.delta.relative * start_sigma if relative else float(settings.delta)
    if validity_limit is None:
        return DeltaChoice(requested, None, "no_limit", (
            f"the calibration has no validity limit judged out of sample: δ = {1000 * requested:.0f} meV/Å is refused "
            "(calibrate on more test structures)",
        ))  # fmt: skip
    if requested <= validity_limit:
        return DeltaChoice(requested, requested)
    if relative:
        return DeltaChoice(requested, None, "no_room", (
            f"δ = {settings.delta.relative:g} × the start's σ_cal = {1000 * requested:.0f} meV/Å lies above the validity "
            f"limit ({1000 * validity_limit:.0f} meV/Å): no room to push this start up",
        ))  # fmt: skip
    message = (
        f"the target error δ = {requested * 1000:.0f} meV/Å lies above the validity limit of the "
        f"calibration ({validity_limit * 1000:.0f} meV/Å): above it the calibrated uncertainty no longer "
        "tracks the true error and CAGO overshoots"
    )
    if settings.above_validity == "refuse":
        raise InputError(message + "; lower δ or recalibrate on data that reach higher errors", field="cago.delta")
    return DeltaChoice(requested, validity_limit, None, (message + f"; δ clamped to {validity_limit * 1000:.0f} meV/Å",))


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(values) ** 2)))


# --- one structure's optimisation state ---------------------------------------------------------


class _Variables(Optimizable):
    """The variables of one structure as ASE's optimisers see them; the objective and its
    gradient are set from outside (the batched round) before every step."""

    def __init__(self, geometry: Geometry, x: np.ndarray):
        self.geometry = geometry
        self.x = x.copy()
        self.evaluation: Evaluation | None = None

    def ndofs(self) -> int:
        return self.x.size

    def get_x(self) -> np.ndarray:
        return self.x.copy()

    def set_x(self, x: np.ndarray) -> None:
        self.x = np.array(x, dtype=float)

    def get_gradient(self) -> np.ndarray:
        return self.evaluation.gradient.copy()

    def get_value(self) -> float:
        return self.evaluation.value

    def iterimages(self):
        yield self.geometry.atoms(self.x)

    def gradient_norm(self, vector: np.ndarray) -> float:
        """The largest distance (Å) an atom moves along ``vector`` from here, to first order
        (ASE's step limit scales the step by it)."""
        return float(self.geometry.linear_displacements(self.x, vector).max())


class _SafeLBFGS(LBFGS):
    """ASE's L-BFGS whose memory restarts when a pair of steps shows no positive curvature
    (the objective is not convex), so every step stays a descent direction."""

    def update(self, pos, forces, r0, f0):
        if self.state.iteration > 0 and np.dot(pos - r0, f0 - forces) <= 0:
            self.state.s, self.state.y, self.state.rho, self.state.iteration = [], [], [], 0
            return
        super().update(pos, forces, r0, f0)


@dataclass(frozen=True)
class _Limits:
    """What no step of one structure may cross (see the module docstring).

    Attributes:
        contact: smallest distance per species pair, Å (empty: no guard).
        trust_radius: largest distance of an atom from its start, Å (None: none).
        packing: mean nearest-neighbour distance range per species pair, Å, of the data and the
            start (None: no guard).
        packing_allowed: largest relative departure from ``packing``.
        data_packing: the data's own range, which results report their departure from.
    """

    contact: Mapping[str, float]
    trust_radius: float | None
    packing: Mapping[str, tuple[float, float]] | None
    packing_allowed: float = 0.0
    data_packing: Mapping[str, tuple[float, float]] | None = None

    def broken(self, geometry: Geometry, x: np.ndarray) -> str | None:
        """The name of the first limit the structure at ``x`` lies beyond, or None."""
        atoms = geometry.atoms(x)
        if self.contact and closest_contact(atoms, self.contact)[0] < 1.0:
            return "contact"
        if self.trust_radius is not None and geometry.internal_displacements(x).max() > self.trust_radius:
            return "trust_region"
        if self.packing is not None and packing_departure(atoms, self.packing)[0] > self.packing_allowed:
            return "packing"
        return None


@dataclass
class _Run:
    """One structure on its way to δ."""

    problem: Problem
    limits: _Limits
    shortest: Mapping[str, float]
    variables: _Variables
    trajectory: list[Atoms]
    history: list[float] = field(default_factory=list)
    sigma: np.ndarray | None = None
    optimizer: _SafeLBFGS | None = None
    previous_x: np.ndarray | None = None
    steps: int = 0
    reason: str | None = None
    touched: set[str] = field(default_factory=set)

    def accept(self, evaluation: Evaluation) -> None:
        self.variables.evaluation = evaluation
        self.sigma = evaluation.sigma_cal
        self.history.append(_rms(evaluation.sigma_cal))

    def step(self, max_step: float) -> None:
        """One L-BFGS step; a step that would cross a limit is halved until it does not."""
        if self.optimizer is None:  # the first step is exactly max_step long
            gradient = self.variables.get_gradient()
            alpha = self.variables.gradient_norm(gradient) / max_step
            self.optimizer = _SafeLBFGS(self.variables, logfile=None, maxstep=max_step, alpha=alpha)
        start = self.previous_x = self.variables.get_x()
        self.optimizer.step()
        geometry = self.problem.geometry
        for _ in range(3):  # the step limit on the real displacement (the cell's strain adds a second-order part)
            longest = geometry.displacements(start, self.variables.x - start).max()
            if longest <= max_step:
                break
            self.variables.set_x(start + (self.variables.x - start) * max_step / longest * (1 - 1e-9))
        for _ in range(GUARD_HALVINGS):
            broken = self.limits.broken(geometry, self.variables.x)
            if broken is None:
                break
            self.touched.add(broken)
            self.variables.set_x(start + 0.5 * (self.variables.x - start))
        else:
            broken = self.limits.broken(geometry, self.variables.x)
            if broken is not None:
                self.variables.set_x(start)
                self.reason = broken
                return
        self.steps += 1
        self.trajectory.append(geometry.atoms(self.variables.x))


# --- the driver ----------------------------------------------------------------------------------

#: ``progress(structure_index, step, sigma_cal_rms)`` after every round, eV/Å.
Progress = Callable[[int, int, float], None]


def run_cago(
    atoms: Atoms, committee: Committee, calibration: CagoCalibration, settings: CagoSettings, **options
) -> CagoResult:
    """Push one structure until the committee's calibrated force uncertainty reaches δ
    (:func:`run_cago_batch` with one structure)."""
    progress = options.pop("progress", None)
    report = None if progress is None else (lambda index, step, sigma: progress(step, sigma))
    return run_cago_batch([atoms], committee, calibration, settings, progress=report, **options)[0]


def run_cago_batch(
    structures: Sequence[Atoms],
    committee: Committee,
    calibration: CagoCalibration,
    settings: CagoSettings,
    *,
    gradient=None,
    progress: Progress | None = None,
    trust_radius: float | None = None,
) -> list[CagoResult]:
    """Push every structure until the committee's calibrated force uncertainty reaches δ.

    All structures advance together: each round evaluates every structure still running in
    one committee call. ``calibration.law`` must be the force calibration of exactly the
    members of ``committee`` (a subset calibration when CAGO runs on a subset). ``gradient``
    overrides the evaluator (:mod:`cagoflow.cago_gradients`); by default it follows
    ``settings.gradient``. ``trust_radius`` (Å) overrides the trust region's radius (a campaign
    derives it from its MD frames and labelled walks; 0: no move is trusted and no start is
    pushed, reason ``no_trust``); by default it is resolved from ``structures``.
    Starts that :func:`choose_delta` does not push come back unmoved with its reason.
    """
    if not structures:
        return []
    evaluator = gradient or make_gradient(committee, settings.gradient, settings.fd_step, settings.batch_size)
    shortest = calibration.contact_distances or shortest_pair_distances(structures)
    fraction = settings.contact_guard.fraction if settings.contact_guard is not None else None
    contact = {} if fraction is None else {name: fraction * value for name, value in shortest.items()}
    if settings.trust_region is not None and trust_radius is None:
        trust_radius = settings.trust_region.resolve(structures)
    radius = None if settings.trust_region is None else trust_radius
    ranges = None
    if settings.packing_guard is not None:
        ranges = calibration.packing_ranges or neighbour_distance_ranges(structures)
    start = committee.predict(structures)
    start_sigma = [calibration.law(force_sigma_hat(start.structure_forces(k))) for k in range(len(structures))]
    choices = [choose_delta(_rms(sigma), settings, calibration.validity_limit) for sigma in start_sigma]
    if radius == 0.0:  # the labelled walks trust no displacement (TrustRegion.narrowed): nothing is pushed
        choices = [replace(choice, used=None, reason=choice.reason or "no_trust", warnings=(*choice.warnings, NO_TRUST)) for choice in choices]
    runs = []
    for atoms, choice, sigma in zip(structures, choices, start_sigma):
        geometry = Geometry(atoms.copy(), optimize_cell=settings.optimize_cell and bool(atoms.pbc.all()))
        objective = Objective(
            calibration.law, choice.used or choice.requested, force_bias=settings.force_bias_weight,
            pressure_weight=settings.bias.weight if settings.bias.kind == "pressure" else 0.0,
            target_pressure=settings.bias.target_pressure or 1.0,
        )  # fmt: skip
        if ranges is None:
            limits = _Limits(contact, radius, None)
        else:
            limits = _Limits(contact, radius, ranges_including(ranges, atoms), settings.packing_guard.margin, ranges)
        x0 = geometry.initial()
        run = _Run(Problem(geometry, objective), limits, shortest, _Variables(geometry, x0), [geometry.atoms(x0)])
        if choice.used is None:  # not pushed: it ends where it starts
            run.reason, run.sigma = choice.reason, np.asarray(sigma)
            run.history.append(_rms(sigma))
        runs.append(run)
    rounds = np.zeros(len(runs), dtype=int)
    for _ in range(settings.max_steps + 1):
        active = [k for k, run in enumerate(runs) if run.reason is None]
        if not active:
            break
        evaluations = evaluator([runs[k].problem for k in active], [runs[k].variables.x for k in active])
        rounds[active] += 1
        for k, evaluation in zip(active, evaluations):
            _advance(runs[k], evaluation, settings)
            if progress is not None:
                progress(k, runs[k].steps, runs[k].history[-1])
    return [_result(run, choices[k], evaluator.kind, int(rounds[k]), settings, calibration) for k, run in enumerate(runs)]


def _advance(run: _Run, evaluation: Evaluation, settings: CagoSettings) -> None:
    """Take the evaluation of the run's current point; stop it or take its next step."""
    if not (np.isfinite(evaluation.value) and np.isfinite(evaluation.gradient).all()):
        run.reason = "not_finite"
        if run.sigma is None:  # the start itself
            run.accept(evaluation)
        else:  # back to the last finite point
            run.variables.set_x(run.previous_x)
            run.trajectory.pop()
            run.steps -= 1
        return
    run.accept(evaluation)
    delta = run.problem.objective.delta
    if abs(run.history[-1] - delta) <= settings.tolerance * delta:
        run.reason = "reached"
    elif run.steps >= settings.max_steps:
        run.reason = "max_steps"
    elif not np.any(evaluation.gradient):
        run.reason = "stalled"
    else:
        run.step(settings.max_step)


#: Limits a step can touch, in the order their flags are listed.
LIMIT_NAMES = ("contact", "trust_region", "packing")


def _result(
    run: _Run, choice: DeltaChoice, kind: str, rounds: int, settings: CagoSettings, calibration: CagoCalibration
) -> CagoResult:
    geometry = run.problem.geometry
    per_round = geometry.n_variables + 1 if kind == "finite_difference" else 1
    final = run.trajectory[-1]
    flags = ["fast"] if run.reason == "reached" and 1 <= run.steps <= settings.fast_steps else []
    flags += [name for name in LIMIT_NAMES if name in run.touched or run.reason == name]
    sigma = np.asarray(run.sigma)
    packing = (0.0, None) if run.limits.data_packing is None else packing_departure(final, run.limits.data_packing)
    max_displacement = float(geometry.internal_displacements(run.variables.x).max())
    final.info.update(
        cago_sigma_cal_rms=_rms(sigma), cago_sigma_cal_mean=float(sigma.mean()), cago_reason=run.reason,
        cago_steps=run.steps, cago_flags=" ".join(flags) or "none", **{DISPLACEMENT_KEY: max_displacement},
        **({} if choice.used is None else {"cago_delta": choice.used}),
    )  # fmt: skip
    return CagoResult(
        atoms=final,
        trajectory=tuple(run.trajectory),
        sigma_history=tuple(run.history[: len(run.trajectory)]),
        sigma_cal=sigma,
        delta=choice.used,
        requested_delta=choice.requested,
        reason=run.reason,
        n_steps=run.steps,
        n_structure_evaluations=rounds * per_round,
        gradient=kind,
        max_displacement=max_displacement,
        closest_contact=closest_contact(final, run.shortest),
        guard=dict(run.limits.contact),
        trust_radius=run.limits.trust_radius,
        packing=packing,
        flags=tuple(flags),
        points_above_delta=None if choice.used is None else calibration.points_above(choice.used),
        warnings=choice.warnings,
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
    return _rms(per_atom_force_error(member_forces, reference_forces))


def cago_hit(member_forces: np.ndarray, reference_forces: np.ndarray, delta: float) -> CagoHit:
    """The hit of one CAGO structure: its true error and the ratio to δ."""
    return CagoHit(true_error=true_force_error(member_forces, reference_forces), delta=delta)


def labelled_hits(
    committee: Committee, labelled: Sequence[Atoms], subsets: Sequence[Sequence[int]], deltas: Sequence[float | None]
) -> list[dict[str, float]]:
    """The hit figures of reference-labelled CAGO structures, in one prediction per member subset.

    Structure ``k`` was pushed by the members ``subsets[k]`` towards ``deltas[k]`` (eV/Å; None:
    no δ, a baseline frame under a relative δ); its figures are :meth:`CagoHit.provenance`, or
    only the true error when it has no δ.
    """
    figures: list[dict[str, float]] = [{} for _ in labelled]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, subset in enumerate(subsets):
        groups.setdefault(tuple(int(m) for m in subset), []).append(index)
    for subset, indices in groups.items():
        prediction = committee.subset(subset).predict([labelled[k] for k in indices])
        for position, k in enumerate(indices):
            forces, reference = prediction.structure_forces(position), labelled[k].get_forces()
            if deltas[k] is not None:
                figures[k] = cago_hit(forces, reference, float(deltas[k])).provenance()
            else:
                figures[k] = {"true_error": true_force_error(forces, reference)}
    return figures

