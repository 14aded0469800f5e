"""The CAGO objective and the variables it is optimised over (Cezar et al. 2025, eq. 8).

    L(x) = 1/(N δ²) Σ_i [ (σ_cal,F_i(x) − δ)² + l_bias |F̄_i(x)|² ]
           + w_P ((P̄(x) − P_target) / 1 GPa)²

σ_cal,F_i = a·σ̂_F_i^b (the power law of :mod:`cagoflow.calibration`), F̄ the committee-mean
force, P̄ the committee-mean pressure. Dividing by N δ² makes L dimensionless and of order one.
The close-contact guard is not a term of L but a limit the optimiser never crosses
(:mod:`cagoflow.cago`): a penalty would pull CAGO away from exactly the short contacts where a
committee's spread grows, and stop it short of δ.

Variables ``z``: the positions expressed in the initial cell (``u``, N×3, Å) and, when the cell
is optimised, a symmetric strain ε (6 Voigt components, times the cube root of the volume, so
they are in Å like ``u``). The structure at ``z`` is ``positions = u (I + ε)``,
``cell = cell₀ (I + ε)``. Every function here works on NumPy arrays and torch tensors alike,
so finite differences and autograd share one objective (:mod:`cagoflow.cago_gradients`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.units import GPa

from cagoflow.calibration import PowerLaw
from cagoflow.committee import force_sigma_hat

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
        """Positions in the reference cell (N, 3) and the deformation gradient I + ε (3, 3)."""
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

    def displacements(self, z: np.ndarray, step: np.ndarray) -> np.ndarray:
        """(N,) distance (Å) each atom moves when the variables go from ``z`` to ``z + step``."""
        before, _ = self.positions_and_cell(z)
        after, _ = self.positions_and_cell(z + step)
        return np.linalg.norm(after - before, axis=1)

    def linear_displacements(self, z: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """(N,) the same to first order in ``direction`` (Å), so that it scales with the step."""
        u, deformation = self.split(z)
        du, strain = self.split(direction)
        if deformation is None:
            return np.linalg.norm(du, axis=1)
        return np.linalg.norm(du @ deformation + u @ (strain - np.eye(3)), axis=1)

    def internal_displacements(self, z: np.ndarray) -> np.ndarray:
        """(N,) distance (Å) of each atom from its start, measured in the starting cell (a pure
        change of the cell moves no atom by this measure)."""
        return np.linalg.norm(z[: 3 * self.n_atoms].reshape(-1, 3) - self.reference.positions, axis=1)


@dataclass(frozen=True)
class Objective:
    """The CAGO objective of one structure.

    Attributes:
        law: the force calibration of exactly the members used.
        delta: target δ, eV/Å.
        force_bias: weight l_bias of Σ_i |F̄_i|² (dimensionless).
        pressure_weight: weight of ((P̄ − target_pressure)/1 GPa)².
        target_pressure: bar.
    """

    law: PowerLaw
    delta: float
    force_bias: float = 0.0
    pressure_weight: float = 0.0
    target_pressure: float = 1.0

    def __call__(self, forces: Any, pressures: Any = None) -> Any:
        """L from per-member forces (M, N, 3) eV/Å and pressures (M,) eV/Å³; NumPy or torch, differentiable."""
        n_atoms = forces.shape[1]
        value = ((self.sigma_cal(forces) - self.delta) ** 2).sum()
        if self.force_bias:
            value = value + self.force_bias * (forces.mean(0) ** 2).sum()
        value = value / (n_atoms * self.delta**2)
        if self.pressure_weight and pressures is not None:
            target = self.target_pressure * 1e-4 * GPa  # bar → eV/Å³
            value = value + self.pressure_weight * ((pressures.mean() - target) / GPa) ** 2
        return value

    def sigma_cal(self, forces: Any) -> Any:
        """(N,) calibrated per-atom force uncertainty, eV/Å."""
        return self.law(force_sigma_hat(forces))


@dataclass(frozen=True)
class Problem:
    """One structure to push: its variables and its objective."""

    geometry: Geometry
    objective: Objective


@dataclass
class Evaluation:
    """The objective at one point: value, gradient over the variables, per-atom σ_cal (eV/Å)."""

    value: float
    gradient: np.ndarray
    sigma_cal: np.ndarray
