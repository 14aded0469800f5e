"""A committee as an ASE calculator: the committee MEAN drives the dynamics.

:class:`CommitteeMeanCalculator` evaluates one structure per call through
:meth:`cagoflow.committee.Committee.predict` and returns the committee-mean energy (eV),
forces (eV/Å) and, for structures periodic along all three axes, the stress (eV/Å³, ASE's sign
and Voigt order) derived from the mean virial: ``stress = −W̄ / V``. The full per-member
prediction and its :class:`~cagoflow.committee.CommitteeStatistics` of the last evaluated
structure stay available (:attr:`CommitteeMeanCalculator.prediction`,
:attr:`CommitteeMeanCalculator.statistics`) so MD can record the committee spread of every frame
without a second evaluation. A committee of one member works too (one model driving MD):
its spreads are NaN (see :func:`~cagoflow.committee.committee_statistics`).

A structure with non-finite positions or cell (a trajectory that already blew up) is not sent
to the committee: every result is NaN, and whoever drives the dynamics decides what to do.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from cagoflow.committee import Committee, CommitteePrediction, CommitteeStatistics, committee_statistics

__all__ = ["CommitteeMeanCalculator"]


class CommitteeMeanCalculator(Calculator):
    """Committee-mean energy, forces and stress of a :class:`~cagoflow.committee.Committee`.

    Every call evaluates all properties at once (one ``predict`` of one structure), so
    energy, forces and stress of the same positions never cost more than one evaluation.
    Asking for the stress raises ASE's :class:`PropertyNotImplementedError` ("not present in
    this calculation") for a structure that is not periodic along all three axes, or when the
    committee predicts no virials.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, committee: Committee, **kwargs):
        super().__init__(**kwargs)
        self.committee = committee
        #: Per-member prediction of the last evaluated structure (None before the first call
        #: and after a structure with non-finite coordinates).
        self.prediction: CommitteePrediction | None = None
        #: Committee statistics of the last evaluated structure (None as for :attr:`prediction`).
        self.statistics: CommitteeStatistics | None = None

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.all())
        if not (np.isfinite(atoms.positions).all() and np.isfinite(np.asarray(atoms.cell)).all()):
            self.prediction = self.statistics = None
            self.results = {
                "energy": np.nan,
                "free_energy": np.nan,
                "forces": np.full((len(atoms), 3), np.nan),
            }
            if periodic:
                self.results["stress"] = np.full(6, np.nan)
            return
        prediction = self.committee.predict([atoms])
        statistics = committee_statistics(prediction, allow_one_member=True)
        energy = float(statistics.energy_mean[0])
        self.prediction, self.statistics = prediction, statistics
        self.results = {"energy": energy, "free_energy": energy, "forces": np.array(statistics.force_mean)}
        if periodic and statistics.virial_mean is not None:
            stress = -statistics.virial_mean[0] / atoms.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]].copy()
