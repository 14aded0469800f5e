"""The result of a campaign, taken home: one self-contained folder per exported iteration.

``cagoflow export DIR [--iteration N] -o OUT`` writes

- ``models/member-NN/``: each member's files, copied (a compiled NequIP/Allegro model with the
  checkpoint it needs for gradients);
- ``committee.yaml``: the committee file (:func:`cagoflow.models.load_committee` reads it as is,
  and so do ``cagoflow cago`` and ``cagoflow calibrate``);
- ``calibration.json``: the committee's calibration (σ_cal = a·σ̂^b, its validity limit);
- ``in.lammps`` + ``data.lammps``: production MD with the backend's own LAMMPS pair style
  (DeePMD-kit's ``pair_style deepmd`` takes the whole committee and writes the model deviation to
  ``model_devi.out``; NequIP/Allegro: member 0), NVT at the campaign's MD temperature from the
  dataset's first structure (an initial sample), relative paths, so ``lmp -in in.lammps`` runs in the folder;
- ``start.extxyz``: that starting structure, for Python;
- ``use_in_ase.py``: the committee mean as an ASE calculator;
- ``card.json`` and ``card.md``: the campaign, the iteration, its training-set size, held-out
  errors, stability and properties (the figures of ``cagoflow status --json``), the calibration,
  the cagoflow version that made it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cagoflow import __version__
from cagoflow.errors import InputError
from cagoflow.io import atomic_write_bytes, atomic_write_json, atomic_write_text, write_structures
from cagoflow.records import TaskRecord, all_records
from cagoflow.workflows.status import PROPERTIES, campaign_figures, campaign_settings, mean_std, require_campaign, stopped

#: The starting structure of the exported MD input (the ASE snippet reads it too).
START_FILE = "start.extxyz"

#: The committee file of an exported folder.
COMMITTEE_FILE = "committee.yaml"

if TYPE_CHECKING:
    from ase import Atoms

#: Production-MD steps of the exported LAMMPS input (0.5 fs each: 10 ps).
PRODUCTION_STEPS = 20000

ASE_SNIPPET = '''"""The exported committee as an ASE calculator: its mean drives the dynamics; the spread of the
last structure is in ``calc.statistics``. Run from this folder (paths are relative to it)."""

from ase.io import read

from cagoflow.engines.committee_mean_calculator import CommitteeMeanCalculator
from cagoflow.models import load_committee

atoms = read("start.extxyz")  # or any structure of yours
atoms.calc = CommitteeMeanCalculator(load_committee("committee.yaml"))
print(atoms.get_potential_energy(), "eV")
'''


@dataclass(frozen=True)
class Export:
    """What :func:`export_potential` wrote: the folder, the iteration, its card."""

    folder: Path
    iteration: int
    card: dict[str, Any]


def chosen_iteration(workdir: Path, records: list[TaskRecord], iteration: int | None) -> int:
    """``iteration``, or the one a ``stop`` block chose, or the last one whose committee trained
    and was calibrated (of the campaign's ``records``); InputError when there is none."""
    calibrated = sorted({r.iteration for r in records if r.stage == "calibrate" and r.status == "done"})
    if iteration is None:
        stop = stopped(workdir)
        iteration = stop["iteration"] if stop else (calibrated[-1] if calibrated else None)
    if iteration is None or iteration not in calibrated:
        known = ", ".join(map(str, calibrated)) or "none yet"
        raise InputError(f"iteration {iteration} has no calibrated committee to export (calibrated: {known})",
                         file=workdir, field="--iteration")  # fmt: skip
    return iteration


def export_potential(workdir: Path, out: Path, iteration: int | None = None, steps: int = PRODUCTION_STEPS) -> Export:
    """Write the folder of the module docstring for ``iteration`` of the campaign in ``workdir``.

    Every file is written atomically (temp file + rename); an existing folder is updated in place."""
    import yaml

    from cagoflow.backends import get_backend
    from cagoflow.dataset import Dataset
    from cagoflow.models import load_committee_spec

    workdir = Path(workdir).resolve()
    require_campaign(workdir)
    records = all_records(workdir)
    iteration = chosen_iteration(workdir, records, iteration)
    settings = campaign_settings(workdir)
    backend = settings["committee"]["backend"]
    records = [r for r in records if r.iteration == iteration]
    members = sorted((r for r in records if r.stage == "train" and r.status == "done"), key=lambda r: r.task)
    calibration = next(r for r in records if r.stage == "calibrate" and r.status == "done")
    out = Path(out)
    models = []
    for record in members:
        folder = out / "models" / record.task
        folder.mkdir(parents=True, exist_ok=True)
        files = get_backend(backend).model_files(workdir / record.outputs["model"])
        for source in files:
            atomic_write_bytes(folder / source.name, source.read_bytes())
        models.append((folder / files[0].name).relative_to(out).as_posix())
    atomic_write_text(out / COMMITTEE_FILE, yaml.safe_dump({"backend": backend, "models": models}, sort_keys=False))
    atomic_write_bytes(out / "calibration.json", (workdir / calibration.outputs["calibration"]).read_bytes())
    spec = load_committee_spec(out / COMMITTEE_FILE)  # it reads back as a committee file
    start = Dataset.open(workdir / "dataset").structures([0])[0]
    start.calc = None
    write_structures(out / START_FILE, [start])
    lammps = write_lammps_input(out, start, settings, iteration, backend, steps)
    atomic_write_text(out / "use_in_ase.py", ASE_SNIPPET)
    card = make_card(workdir, iteration, settings, backend, len(spec.models), lammps)
    atomic_write_json(out / "card.json", card)
    atomic_write_text(out / "card.md", card_markdown(card))
    return Export(out, iteration, card)


def write_lammps_input(out: Path, start: Atoms, settings: dict, iteration: int, backend: str, steps: int) -> str | None:
    """``in.lammps`` and ``data.lammps`` for production MD from ``start`` with the backend's pair
    style, at the temperature of the iteration's MD (what it runs, in words); None (and nothing
    written) for a backend without one. The models lie in ``out``: the input names them relative."""
    from cagoflow.campaign import MDConfig
    from cagoflow.engines.lammps import NATIVE_PAIR_STYLES, LammpsMD
    from cagoflow.engines.md_settings import MDStage
    from cagoflow.inputs import schedule_at

    if backend not in NATIVE_PAIR_STYLES:
        return None
    temperature = schedule_at(MDConfig.model_validate(settings["md"]).schedule, iteration).temperature
    stage = MDStage(ensemble="nvt", temperature=temperature, steps=steps, timestep=0.5, dump_interval=min(100, steps))
    md = LammpsMD(stage=stage, committee_file=out / COMMITTEE_FILE, seed=1, mode="native", driver="first",
                  type_map=tuple(sorted(set(start.get_chemical_symbols()))))  # fmt: skip
    md.write_input(out, start)
    return f"NVT {temperature:g} K, {steps} steps of 0.5 fs, pair_style {NATIVE_PAIR_STYLES[backend]}"


def make_card(workdir: Path, iteration: int, settings: dict, backend: str, members: int, lammps: str | None) -> dict[str, Any]:
    """The card: where the potential comes from and how good it is (``status --json``'s figures)."""
    figures = campaign_figures(workdir)
    this = next(it for it in figures["iterations"] if it["iteration"] == iteration)
    return {
        "campaign": settings["name"], "workdir": str(workdir), "iteration": iteration, "backend": backend,
        "members": members, "cagoflow": __version__, "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "lammps": lammps, "units": figures["units"], "figures": this, "stopped": figures["stopped"],
    }  # fmt: skip


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a page to read (``card.json`` holds every figure, with ``units``)."""
    figures = card["figures"]
    calibration = figures.get("calibration") or {}
    limit = calibration.get("validity_limit")
    lines = [
        f"# {card['campaign']}: the committee of iteration {card['iteration']}",
        "",
        f"- {card['members']} {card['backend']} members, exported by cagoflow {card['cagoflow']} on {card['exported']}",
        f"- trained on {figures.get('training_set')} structures; test split {figures.get('test_set')} (never trained on)",
        f"- calibration: σ_cal = {calibration.get('a', float('nan')):.3g} · σ̂^{calibration.get('b', float('nan')):.3g}, "
        f"validity limit {'none found' if limit is None else f'{limit:.3g} eV/Å'}",
        f"- LAMMPS: {card['lammps'] or 'no pair style for this backend (use the ASE calculator, use_in_ase.py)'}",
    ]
    for system, values in sorted((figures.get("systems") or {}).items()):
        evaluation = (values or {}).get("evaluation") or {}
        if not evaluation:
            continue
        text = f"- {system}: held-out force RMSE {1000 * evaluation['force_rmse']:.0f} meV/Å, "
        text += f"stable in MD for {evaluation['stable_members']} of {evaluation['members']} members"
        for key, (label, unit, form) in PROPERTIES.items():
            if evaluation.get(f"{key}_mean") is not None:
                text += f", {label} {mean_std(evaluation[f'{key}_mean'], evaluation.get(f'{key}_std'), form)} {unit}".rstrip()
        lines.append(text)
    if card["stopped"]:
        lines.append(f"- the campaign stopped early: {card['stopped']['reason']}")
    return "\n".join(lines) + "\n"
