"""A committee made of ASE calculators, one member per calculator.

This is the reference implementation of :class:`cagoflow.committee.Committee` for any engine
that ASE can drive. ASE calculators evaluate one structure at a time, so this is the slow,
generic path (M × S single-point calls); batched backends (:class:`cagoflow.morse_committee.MorseCommittee`,
the ML potentials) implement ``predict`` natively and should be compared against this one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, PropertyNotImplementedError

from cagoflow.committee import CommitteePrediction, virial_from_stress


class CalculatorCommittee:
    """A committee whose members are ASE calculators (energies eV, forces eV/Å, virials eV).

    For every member and structure a copy of the structure gets the member's calculator and
    is asked for its energy and forces, and, when the structure is periodic along all three
    axes, its stress, turned into a virial ``−V·stress`` (:func:`virial_from_stress`).
    Structures that are not fully periodic get NaN virials. When a member cannot give a
    stress (``PropertyNotImplementedError``) the prediction has ``virials=None``.

    The calculators are shared, not copied: :meth:`subset` hands the same objects on.
    """

    def __init__(self, calculators: Sequence[BaseCalculator]):
        self.calculators = list(calculators)
        if not self.calculators:
            raise ValueError("a CalculatorCommittee needs at least one calculator")

    @property
    def n_members(self) -> int:
        return len(self.calculators)

    def subset(self, members: Sequence[int]) -> "CalculatorCommittee":
        """A committee of the given members (indices into this committee)."""
        return CalculatorCommittee([self.calculators[int(k)] for k in members])

    def predict(self, structures: Sequence[Atoms]) -> CommitteePrediction:
        """Energies, forces and virials of every member for every structure, one call each."""
        structures = list(structures)
        natoms = np.array([len(atoms) for atoms in structures], dtype=int)
        n_members, n_structures = self.n_members, len(structures)
        energies = np.zeros((n_members, n_structures))
        forces = np.zeros((n_members, int(natoms.sum()), 3))
        virials: np.ndarray | None = np.full((n_members, n_structures, 3, 3), np.nan)
        offsets = np.concatenate([[0], np.cumsum(natoms)])
        for m, calculator in enumerate(self.calculators):
            for s, structure in enumerate(structures):
                atoms = structure.copy()
                atoms.calc = calculator
                energies[m, s] = atoms.get_potential_energy()
                forces[m, offsets[s] : offsets[s + 1]] = atoms.get_forces()
                if virials is not None and atoms.pbc.all():
                    try:
                        stress = atoms.get_stress(voigt=True)
                    except PropertyNotImplementedError:
                        virials = None
                    else:
                        virials[m, s] = virial_from_stress(stress, atoms.get_volume())
        return CommitteePrediction(energies=energies, forces=forces, natoms=natoms, virials=virials)
