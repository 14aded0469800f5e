"""Gradients of the CAGO objective for MANY structures at once: one committee call per round.

Both evaluators take the structures still being optimised (:class:`~cagoflow.cago_objective.Problem`)
and their current variables, and return one :class:`~cagoflow.cago_objective.Evaluation` each:

- :class:`FiniteDifferenceGradient`: two-point finite differences — per structure the centre
  plus one displaced structure per variable (3N + 6 + 1) — all structures of all problems in
  ONE batched committee call (or chunks of ``batch_size``).
- :class:`ExactGradient`: the exact gradient by double backpropagation through a
  differentiable committee: forces = −∂E/∂x with ``create_graph``, every structure's objective
  from them, and ONE backward pass of their sum to all variables. The virials for a pressure
  bias come the same way, from a strain applied to every member's copy.

:func:`choose_gradient` picks the exact one where the committee offers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
from ase import Atoms

from cagoflow.cago_objective import Evaluation, Problem
from cagoflow.committee import Committee, DifferentiableCommittee, predict_in_batches
from cagoflow.errors import InputError

GradientKind = Literal["auto", "finite_difference", "exact"]


def _pressures(virials: np.ndarray | None, structures: Sequence[Atoms]) -> np.ndarray | None:
    """(M, S) pressures, eV/Å³, from virials (M, S, 3, 3) eV; None without virials."""
    if virials is None or not all(s.pbc.all() for s in structures):
        return None
    volumes = np.array([s.get_volume() for s in structures])
    return np.trace(virials, axis1=-2, axis2=-1) / (3 * volumes)


@dataclass
class FiniteDifferenceGradient:
    """Two-point finite differences of every problem, batched into one committee call.

    Attributes:
        committee: the members CAGO uses.
        step: displacement of each variable, Å.
        batch_size: structures per committee call (None: all at once; 1: one at a time, the
            same numbers, for comparison).
        n_structure_evaluations: structures evaluated so far.
    """

    committee: Committee
    step: float = 1e-3
    batch_size: int | None = None
    n_structure_evaluations: int = field(default=0, init=False)
    kind = "finite_difference"

    def __call__(self, problems: Sequence[Problem], points: Sequence[np.ndarray]) -> list[Evaluation]:
        structures: list[Atoms] = []
        for problem, z in zip(problems, points):
            structures += [problem.geometry.atoms(x) for x in (z, *(z + self.step * unit for unit in np.eye(z.size)))]
        prediction = predict_in_batches(self.committee, structures, self.batch_size)
        self.n_structure_evaluations += len(structures)
        evaluations, first, atom = [], 0, 0
        for problem, z in zip(problems, points):
            count, n_atoms = z.size + 1, problem.geometry.n_atoms
            own = structures[first : first + count]
            forces = prediction.forces[:, atom : atom + count * n_atoms].reshape(-1, count, n_atoms, 3)
            virials = None if prediction.virials is None else prediction.virials[:, first : first + count]
            pressures = _pressures(virials, own)
            values = np.array(
                [problem.objective(forces[:, k], None if pressures is None else pressures[:, k]) for k in range(count)]
            )
            evaluations.append(
                Evaluation(float(values[0]), (values[1:] - values[0]) / self.step, problem.objective.sigma_cal(forces[:, 0]))
            )
            first, atom = first + count, atom + count * n_atoms
        return evaluations


@dataclass
class ExactGradient:
    """Objectives and their exact gradients by double backpropagation (torch, float64), all
    problems in one forward and one backward pass."""

    committee: DifferentiableCommittee
    n_structure_evaluations: int = field(default=0, init=False)
    kind = "exact"

    def __call__(self, problems: Sequence[Problem], points: Sequence[np.ndarray]) -> list[Evaluation]:
        import torch

        structures = [problem.geometry.atoms(z) for problem, z in zip(problems, points)]
        energy_fn = self.committee.torch_energy(structures)
        variables = [torch.tensor(z, dtype=torch.float64, requires_grad=True) for z in points]
        geometry = [problem.geometry.positions_and_cell(v) for problem, v in zip(problems, variables)]
        natoms = np.array([len(atoms) for atoms in structures])
        offsets = np.concatenate([[0], np.cumsum(natoms)])
        members = self.committee.n_members
        member_positions = torch.cat([positions for positions, _ in geometry]).unsqueeze(0).repeat(members, 1, 1)
        cells = torch.stack([cell for _, cell in geometry])
        strain = torch.zeros(members, len(structures), 3, 3, dtype=torch.float64, requires_grad=True)
        deformation = torch.eye(3, dtype=torch.float64) + strain
        owner = torch.as_tensor(np.repeat(np.arange(len(structures)), natoms))
        strained = torch.einsum("mai,maij->maj", member_positions, deformation[:, owner])
        energies = energy_fn(strained, cells.unsqueeze(0) @ deformation)
        minus_forces, minus_virials = torch.autograd.grad(energies.sum(), (member_positions, strain), create_graph=True)
        values, sigmas = [], []
        for k, (problem, atoms) in enumerate(zip(problems, structures)):
            forces = -minus_forces[:, offsets[k] : offsets[k + 1]]
            pressures = None
            if atoms.pbc.all():
                volume = torch.abs(torch.linalg.det(geometry[k][1]))
                pressures = -torch.diagonal(minus_virials[:, k], dim1=-2, dim2=-1).sum(-1) / (3 * volume)
            values.append(problem.objective(forces, pressures))
            sigmas.append(problem.objective.sigma_cal(forces.detach().numpy()))
        gradients = torch.autograd.grad(torch.stack(values).sum(), variables)
        self.n_structure_evaluations += len(structures)
        return [
            Evaluation(float(value.detach()), gradient.numpy(), sigma)
            for value, gradient, sigma in zip(values, gradients, sigmas)
        ]


def choose_gradient(committee: Committee, kind: GradientKind) -> str:
    """The gradient method CAGO uses: exact where the committee is differentiable (auto)."""
    differentiable = isinstance(committee, DifferentiableCommittee)
    if kind == "exact" and not differentiable:
        raise InputError("this committee offers no exact gradient; use finite_difference or auto", field="cago.gradient")
    if kind == "auto":
        return "exact" if differentiable else "finite_difference"
    return kind


def make_gradient(committee: Committee, kind: GradientKind, fd_step: float, batch_size: int | None):
    """The evaluator of ``kind`` (resolved by :func:`choose_gradient`) for ``committee``."""
    if choose_gradient(committee, kind) == "exact":
        return ExactGradient(committee)
    return FiniteDifferenceGradient(committee, fd_step, batch_size)
