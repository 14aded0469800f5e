"""The exact gradient of the CAGO objective for differentiable (torch) committees.

Forces are −∂E/∂x, so the objective, a function of forces, needs the second derivative of the
energy: forces are taken with ``create_graph=True`` and the objective is backpropagated through
them to the optimisation variables (positions in the reference cell and strain). The virials
for a pressure bias come the same way, from a strain applied to every member's copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cagoflow.cago import Evaluation, Geometry, Objective, _guarded_pairs, pair_distances
from cagoflow.committee import DifferentiableCommittee


@dataclass
class ExactGradient:
    """Objective and its exact gradient by double backpropagation (torch, float64)."""

    committee: DifferentiableCommittee
    geometry: Geometry
    objective: Objective
    n_structure_evaluations: int = field(default=0, init=False)

    def __call__(self, z: np.ndarray) -> Evaluation:
        import torch

        atoms = self.geometry.atoms(z)
        energy_fn = self.committee.torch_energy(atoms)
        pairs = _guarded_pairs(atoms, self.objective.settings)
        variables = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        positions, cell = self.geometry.positions_and_cell(variables)
        members = self.committee.n_members
        member_positions = positions.unsqueeze(0).repeat(members, 1, 1)
        strain = torch.zeros(members, 3, 3, dtype=torch.float64, requires_grad=True)
        deformation = torch.eye(3, dtype=torch.float64) + strain
        energies = energy_fn(member_positions @ deformation, cell.unsqueeze(0) @ deformation)
        minus_forces, minus_virials = torch.autograd.grad(
            energies.sum(), (member_positions, strain), create_graph=True
        )
        forces = -minus_forces
        pressures = None
        if atoms.pbc.all():
            volume = torch.abs(torch.linalg.det(cell))
            pressures = -torch.diagonal(minus_virials, dim1=-2, dim2=-1).sum(-1) / (3 * volume)
        distances = None if pairs is None else pair_distances(positions, cell, *pairs)
        value = self.objective(forces, pressures, distances)
        (gradient,) = torch.autograd.grad(value, variables)
        self.n_structure_evaluations += 1
        return Evaluation(
            value=float(value.detach()),
            gradient=gradient.numpy(),
            sigma_cal=self.objective.sigma_cal(forces.detach().numpy()),
        )
