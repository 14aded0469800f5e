"""A self-contained CAGO demonstration on embedded defaults (``cagoflow cago --demo``).

Everything is synthetic but real: a box of 16 water molecules, the analytic Morse committee
of :mod:`cagoflow.morse_committee`, and its unperturbed model as the reference ("truth"). The demo
labels rattled copies of the box, calibrates the committee and a 3-member subset, pushes a
few structures with CAGO to the target error δ using the subset and its own calibration, then
labels the CAGO structures and measures the hit: the true error against δ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from cagoflow.cago import CagoHit, CagoResult, CagoSettings, cago_hit, run_cago_batch
from cagoflow.cago_plots import plot_cago_progress
from cagoflow.calibration import CommitteeCalibration, calibrate_committee, per_atom_force_error
from cagoflow.calibration_plots import plot_calibration
from cagoflow.committee import force_sigma_hat
from cagoflow.io import write_structures
from cagoflow.models import MorseCommitteeSpec
from cagoflow.structures import water_box

#: ``progress(structure_index, step, sigma_cal_rms)`` during CAGO.
DemoProgress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo: water molecules, labelled structures, CAGO structures, δ (eV/Å)."""

    n_molecules: int = 16
    n_labelled: int = 40
    n_cago: int = 4
    delta: float = 0.1
    members: int = 4
    subset: tuple[int, ...] = (0, 1, 2)
    spread: float = 0.02
    max_steps: int = 100
    seed: int = 0


@dataclass(frozen=True)
class DemoResult:
    calibration: CommitteeCalibration
    subset_calibration: CommitteeCalibration
    results: list[CagoResult]
    hits: tuple[CagoHit | None, ...]  # None: a structure CAGO did not push (no δ)
    files: tuple[Path, ...]


def label(structures: list[Atoms], calculator) -> list[Atoms]:
    """Copies of ``structures`` carrying the calculator's energy, forces and stress as labels."""
    labelled = []
    for atoms in structures:
        copy = atoms.copy()
        copy.calc = calculator
        results = {"energy": copy.get_potential_energy(), "forces": copy.get_forces()}
        if copy.pbc.all():
            results["stress"] = copy.get_stress()
        copy.calc = SinglePointCalculator(copy, **results)
        labelled.append(copy)
    return labelled


def run_demo(output: Path, settings: DemoSettings = DemoSettings(), progress: DemoProgress | None = None) -> DemoResult:
    """Run the demonstration, writing calibrations, plots and CAGO structures into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    spec = MorseCommitteeSpec(members=settings.members, spread=settings.spread, seed=settings.seed + 1)
    committee, truth = spec.build(), spec.truth()
    rng = np.random.default_rng(settings.seed)
    box = water_box(settings.n_molecules, seed=settings.seed)
    rattled = []
    for k in range(settings.n_labelled):
        atoms = box.copy()
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.15)), seed=settings.seed + k)
        rattled.append(atoms)
    references = label(rattled, truth)
    prediction = committee.predict(references)
    calibration = calibrate_committee(prediction, references, training=rattled)
    subset_calibration = calibrate_committee(prediction, references, members=settings.subset, training=rattled)
    files = [calibration.save(output / "calibration.json")]
    files.append(subset_calibration.save(output / "calibration-subset.json"))
    forces = prediction.members(settings.subset).forces
    reference_forces = np.concatenate([atoms.get_forces() for atoms in references])
    files += plot_calibration(
        force_sigma_hat(forces),
        per_atom_force_error(forces, reference_forces),
        subset_calibration.forces.law,
        output / "calibration-subset-forces",
    )
    subset = committee.subset(settings.subset)
    results = run_cago_batch(
        rattled[: settings.n_cago],
        subset,
        subset_calibration.for_cago(),
        CagoSettings(delta=settings.delta, max_steps=settings.max_steps),
        progress=progress,
    )
    labelled = label([result.atoms for result in results], truth)
    member_forces = subset.predict(labelled)
    hits = tuple(
        None if result.delta is None else cago_hit(member_forces.structure_forces(k), atoms.get_forces(), result.delta)
        for k, (atoms, result) in enumerate(zip(labelled, results))
    )
    for atoms, hit in zip(labelled, hits):
        atoms.info.update({} if hit is None else hit.provenance())
    files.append(write_structures(output / "cago.extxyz", labelled))
    files.append(plot_cago_progress(results, output / "cago-progress.png"))
    return DemoResult(calibration, subset_calibration, tuple(results), hits, tuple(files))
