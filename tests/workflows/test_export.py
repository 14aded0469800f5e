"""``cagoflow export``: a campaign's committee taken home — run as is by LAMMPS and by Python,
with a card whose figures are ``cagoflow status --json``'s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cagoflow import __version__
from cagoflow.backends import get_backend
from cagoflow.cli import app
from cagoflow.dataset import Dataset
from cagoflow.engines.lammps import lammps_environment
from cagoflow.engines.process import find_program
from cagoflow.models import load_committee
from cagoflow.records import TaskRecord, all_records, write_record


def export(workdir: Path, out: Path, *options: str) -> str:
    result = CliRunner().invoke(app, ["export", str(workdir), "-o", str(out), *options])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_an_exported_deepmd_committee_runs_in_lammps_and_python_as_is(deepmd_campaign, tmp_path):
    out = tmp_path / "potential"
    shown = export(deepmd_campaign, out, "--steps", "100")
    assert "the committee of iteration 1 (3 deepmd members)" in shown and "lmp -in in.lammps" in shown
    # production MD from the exported input, in the folder, as a user runs it
    md = subprocess.run([find_program("lmp"), "-in", "in.lammps"], cwd=out, env=lammps_environment(),
                        capture_output=True, text=True, timeout=600)  # fmt: skip
    assert md.returncode == 0, md.stdout[-3000:]
    assert "for 100 steps with 12 atoms" in (out / "log.lammps").read_text()
    assert "pair_style deepmd models/member-00/frozen_model.pth models/member-01" in (out / "in.lammps").read_text()
    deviation = np.loadtxt(out / "model_devi.out", ndmin=2)  # DeePMD's model deviation of the whole committee
    assert deviation.shape[0] == 2 and (deviation[:, 4] > 0).all()
    # the committee file loads in Python and predicts what the campaign's members predict
    members = sorted((r for r in all_records(deepmd_campaign) if r.stage == "train" and r.iteration == 1), key=lambda r: r.task)
    campaign = get_backend("deepmd").load([deepmd_campaign / r.outputs["model"] for r in members], device="cpu")
    structures = Dataset.open(deepmd_campaign / "dataset").structures([0, 1, 2])
    exported, original = load_committee(out / "committee.yaml").predict(structures), campaign.predict(structures)
    np.testing.assert_allclose(exported.forces, original.forces, atol=1e-6)
    np.testing.assert_allclose(exported.energies, original.energies, atol=1e-6)
    # the ASE snippet runs as written
    snippet = subprocess.run([sys.executable, "use_in_ase.py"], cwd=out, capture_output=True, text=True, timeout=300)
    assert snippet.returncode == 0 and snippet.stdout.strip().endswith("eV"), snippet.stderr[-2000:]
    # the card: status --json's figures of that iteration, the calibration beside it
    status = json.loads(CliRunner().invoke(app, ["status", str(deepmd_campaign), "--json"]).output)
    card = json.loads((out / "card.json").read_text())
    assert card["figures"] == next(it for it in status["iterations"] if it["iteration"] == 1)
    assert (card["iteration"], card["members"], card["backend"], card["cagoflow"]) == (1, 3, "deepmd", __version__)
    force = card["figures"]["systems"]["water"]["evaluation"]["force_rmse"]
    assert f"held-out force RMSE {1000 * force:.0f} meV/Å" in (out / "card.md").read_text()
    assert json.loads((out / "calibration.json").read_text())["forces"]["law"]["a"] == card["figures"]["calibration"]["a"]


def test_an_earlier_iteration_is_exported_when_asked(deepmd_campaign, tmp_path):
    export(deepmd_campaign, tmp_path / "first", "--iteration", "0")
    card = json.loads((tmp_path / "first" / "card.json").read_text())
    assert card["iteration"] == 0 and card["figures"]["iteration"] == 0


def test_an_iteration_without_a_committee_and_a_folder_without_a_campaign_are_clear_errors(tmp_path):
    workdir = tmp_path / "work"
    (workdir / "iter-000" / "calibrate" / "committee").mkdir(parents=True)
    (workdir / "campaign.json").write_text(json.dumps({"name": "t", "iterations": 3, "systems": {"water": {}}}))
    record = TaskRecord("calibrate", "committee", 0, "key", "done")
    write_record(workdir / "iter-000" / "calibrate" / "committee", record, workdir)
    result = CliRunner().invoke(app, ["export", str(workdir), "-o", str(tmp_path / "out"), "--iteration", "2"])
    assert result.exit_code == 2 and "iteration 2 has no calibrated committee" in result.output
    assert "calibrated: 0" in result.output and "--iteration" in result.output and "Traceback" not in result.output
    assert not any((tmp_path / "out").iterdir())
    empty = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "out2")])
    assert empty.exit_code == 2 and "Traceback" not in empty.output
