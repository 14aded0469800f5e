"""A whole campaign with a real MLIP: DeePMD-kit members trained by `dp`, CAGO with their exact
gradients, GFN1-xTB references, and the evaluation stage — two iterations, tiny settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cagoflow.config import default_site, load_campaign
from cagoflow.records import all_records
from cagoflow.workflows.campaign import run_campaign
from real_components import require_command, require_module

TINY_DEEPMD = {
    "backend": "deepmd",
    "size": 3,
    "min_trained": 3,
    "hyperparameters": {"model": {"descriptor": {"rcut": 4.0, "rcut_smth": 0.5}}, "learning_rate": {"start_lr": 0.01, "stop_lr": 0.001}},
    "training_steps": 60,
    "fine_tune": True,
}


@pytest.fixture(scope="module")
def deepmd_campaign(tmp_path_factory, write_campaign) -> Path:
    require_module("deepmd")
    require_module("tblite")
    require_command("dp")
    folder = tmp_path_factory.mktemp("deepmd-campaign")
    campaign = write_campaign(
        folder,
        iterations=2,
        committee=TINY_DEEPMD,
        sampling={"per_iteration": 2, "cago_from": {"source": "md", "subset": "all"}},
        cago={"delta": {"relative": 1.5}, "max_steps": 10, "structures_per_task": 2},
        dataset={"min_test": 3},
        evaluation={
            "benchmark": {"generate": {"frames": 3, "md": {"steps": 30, "timestep": 1.0, "dump_interval": 10}}},
            "production": {"replicas": 1, "md": {"steps": 60, "timestep": 0.5, "dump_interval": 10}, "check_interval": 20},
        },
    )
    run_campaign(load_campaign(campaign), default_site(), folder / "work")
    return folder / "work"


def test_members_are_real_deepmd_models_fine_tuned_across_iterations(deepmd_campaign):
    trained = [r for r in all_records(deepmd_campaign) if r.stage == "train"]
    assert len(trained) == 6 and all(r.status == "done" for r in trained)
    for record in trained:
        assert record.outputs["model"].endswith("frozen_model.pth")
        assert (deepmd_campaign / record.outputs["model"]).stat().st_size > 10_000
        assert 1.0 < record.seconds < 600  # the trainer's own wall time, not the collector's
    second = deepmd_campaign / "iter-001" / "train" / "member-00"
    assert "--init-frz-model" in (second / "train.log").read_text() or (second / "input.json").exists()


def test_cago_structures_were_pushed_and_their_hit_measured(deepmd_campaign):
    records = all_records(deepmd_campaign)
    cago = [r for r in records if r.stage == "cago" and r.status == "done" and not r.summary.get("skipped")]
    assert len(cago) == 4
    for record in cago:
        assert record.summary["reason"] in {"reached", "max_steps", "stalled", "contact"}
        # the relative δ resolved to 1.5 × the frame's own σ_cal, clamped only down to a validity limit
        assert 0 < record.summary["delta"] <= record.summary["requested_delta"] * (1 + 1e-12)
        assert record.summary["max_displacement"] >= 0
    merges = [r for r in records if r.stage == "merge" and r.iteration >= 0]
    hits = [r.summary["hit_ratio_mean"] for r in merges if r.summary["hit_ratio_mean"] is not None]
    assert hits and all(math.isfinite(h) and h > 0 for h in hits)
    calibrations = [r for r in records if r.stage == "calibrate"]
    assert all(r.summary["test_structures"] >= 3 and r.summary["calibration_points"] >= 3 * 12 for r in calibrations)
    assert all(set(r.summary["contact_distances"]) == {"H-H", "H-O", "O-O"} for r in calibrations)


def test_every_iteration_has_an_evaluation_record(deepmd_campaign):
    summaries = {r.iteration: r.summary for r in all_records(deepmd_campaign) if r.task == "summary-water"}
    assert set(summaries) == {0, 1}
    for summary in summaries.values():
        assert summary["members"] == 3
        assert all(math.isfinite(value) and value > 0 for value in summary["member_force_rmse"])
        assert 0 < summary["force_rmse"] < 5.0  # eV/Å: a trained model, not noise
        assert 0 <= summary["stable_members"] <= 3
