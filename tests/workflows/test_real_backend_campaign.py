"""A whole campaign with a real MLIP: DeePMD-kit members trained by `dp`, committee MD in LAMMPS
(DeePMD's own pair style) started by the site's command, CAGO with the members' exact gradients,
GFN1-xTB references, and the evaluation stage — two iterations, tiny settings (the campaign is
the ``deepmd_campaign`` fixture of ``conftest.py``)."""

from __future__ import annotations

import math

import pytest

from cagoflow.records import all_records


def test_md_ran_in_lammps_as_the_site_starts_it(deepmd_campaign):
    md = [r for r in all_records(deepmd_campaign) if r.stage == "md"]
    assert len(md) == 2 and all(r.status == "done" and r.summary["frames"] == 4 for r in md), [r.summary for r in md]
    calls = (deepmd_campaign.parent / "lmp-calls.log").read_text().splitlines()
    assert sum("-in in.lammps" in line for line in calls) == 2  # one LAMMPS run per MD task, through the site's command
    for record in md:
        run = deepmd_campaign / f"iter-{record.iteration:03d}" / "md" / record.task / "lammps"
        assert "pair_style deepmd" in (run / "in.lammps").read_text()  # native: DeePMD's own pair style
        assert (run / "exit-status").read_text().strip() == "0"
        assert record.seconds > 0.1  # LAMMPS's own wall time


def test_members_are_real_deepmd_models_fine_tuned_across_iterations(deepmd_campaign):
    trained = [r for r in all_records(deepmd_campaign) if r.stage == "train"]
    assert len(trained) == 6 and all(r.status == "done" for r in trained)
    for record in trained:
        assert record.outputs["model"].endswith("frozen_model.pth")
        assert (deepmd_campaign / record.outputs["model"]).stat().st_size > 10_000
        assert 1.0 < record.seconds < 600  # the trainer's own wall time, not the collector's
    second = deepmd_campaign / "iter-001" / "train" / "member-00"
    assert "--init-frz-model" in (second / "train.log").read_text() or (second / "input.json").exists()


def test_cago_structures_were_pushed_up_or_left_unpushed_with_a_reason(deepmd_campaign):
    """Under δ = 1.5 × each frame's own σ_cal: a pushed walk targets exactly that and never goes
    down; a frame is left unpushed (and sent to the reference as sampled) only when its
    calibration has no room for it (no_room) or no validity limit at all (no_limit); the hit
    of every pushed structure that reached δ is measured."""
    records = all_records(deepmd_campaign)
    limits = {r.iteration: r.summary["subset_validity_limits"] for r in records if r.stage == "calibrate"}
    cago = [r for r in records if r.stage == "cago" and r.status == "done" and not r.summary.get("skipped")]
    assert len(cago) == 4
    for record in cago:
        summary, limit = record.summary, limits[record.iteration][0]
        if summary["action"] == "pushed":
            assert summary["reason"] in {"reached", "max_steps", "stalled", "contact", "trust_region", "packing"}
            assert summary["delta"] == pytest.approx(1.5 * summary["start_sigma_cal"]) and summary["delta"] <= limit
            assert summary["direction"] in ("up", "unmoved") and summary["max_displacement"] >= 0
        else:
            assert summary["action"] == "sampled" and summary["delta"] is None and summary["direction"] == "unmoved"
            assert summary["reason"] == ("no_limit" if limit is None else "no_room")
    merges = {r.iteration: r.summary for r in records if r.stage == "merge" and r.iteration >= 0}
    for iteration, summary in merges.items():
        reached = [r for r in cago if r.iteration == iteration and r.summary["reason"] == "reached"]
        assert summary["hits"] <= len(reached)
        assert summary["hit_ratio_mean"] is None or (math.isfinite(summary["hit_ratio_mean"]) and summary["hit_ratio_mean"] > 0)
    calibrations = [r for r in records if r.stage == "calibrate"]
    assert all(r.summary["test_structures"] >= 7 and r.summary["calibration_points"] >= 7 * 12 for r in calibrations)
    assert all(set(r.summary["contact_distances"]) == {"H-H", "H-O", "O-O"} for r in calibrations)


def test_every_iteration_has_an_evaluation_record(deepmd_campaign):
    summaries = {r.iteration: r.summary for r in all_records(deepmd_campaign) if r.task == "summary-water"}
    assert set(summaries) == {0, 1}
    for summary in summaries.values():
        assert summary["members"] == 3
        assert all(math.isfinite(value) and value > 0 for value in summary["member_force_rmse"])
        assert 0 < summary["force_rmse"] < 5.0  # eV/Å: a trained model, not noise
        assert 0 <= summary["stable_members"] <= 3
