"""A campaign labelled by Quantum ESPRESSO: pw.x started through the site's command
(prepare → bash app → collect), every structure of the dataset carrying its energy, forces and stress."""

from __future__ import annotations

import pytest
from real_components import require_command

from cagoflow.campaign import load_campaign
from cagoflow.dataset import Dataset
from cagoflow.errors import InputError
from cagoflow.executors.site import default_site
from cagoflow.records import all_records
from cagoflow.workflows.driver import run_campaign

ESPRESSO = {
    "engine": "espresso",
    "settings": {"pseudopotentials": {"H": "H.pz-vbc.UPF", "O": "O.pz-rrkjus.UPF"}, "ecutwfc": 25, "ecutrho": 200},
}


def test_a_campaign_iteration_labelled_by_pw_x(tmp_path, write_campaign):
    require_command("pw.x")
    config = load_campaign(write_campaign(tmp_path, **{"iterations": 1, "systems.water.initial_samples": 5, "reference": ESPRESSO}))
    workdir = tmp_path / "work"
    run_campaign(config, default_site(), workdir)

    references = [r for r in all_records(workdir) if r.stage == "reference" and not r.summary.get("skipped")]
    assert len(references) == 6 + 2  # the starting structure and 5 rattled copies, 2 CAGO structures
    assert all(r.summary["status"] == "converged" for r in references), [r.summary for r in references]
    for record in references:
        directory = workdir / record.outputs["labelled"].rsplit("/", 1)[0]
        assert (directory / "espresso.pwi").exists() and "JOB DONE" in (directory / "engine.log").read_text()
    dataset = Dataset.open(workdir / "dataset")
    assert len(dataset) == 8 and {e.provenance.engine for e in dataset.entries} == {"espresso"}
    assert all(atoms.get_stress().shape == (6,) for atoms in dataset.structures())


def test_wrong_pw_x_settings_are_named_when_the_campaign_is_read(tmp_path, write_campaign):
    settings = {**ESPRESSO, "settings": {**ESPRESSO["settings"], "ecutwfc": -1}}
    with pytest.raises(InputError, match="greater than 0") as info:
        load_campaign(write_campaign(tmp_path, **{"reference": settings}))
    assert info.value.field == "reference.settings.ecutwfc"
