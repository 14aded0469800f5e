"""End-to-end local campaigns: the loop, its records, resume after SIGKILL, invalidation by content."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cagoflow.campaign import load_campaign
from cagoflow.executors.site import default_site
from cagoflow.dataset import Dataset
from cagoflow.records import all_records, executions
from cagoflow.workflows.driver import CampaignFailed, run_campaign
from cagoflow.workflows.status import campaign_status

def dataset_hashes(workdir: Path) -> list[str]:
    return [entry.hash for entry in Dataset.open(workdir / "dataset").entries]


@pytest.fixture(scope="module")
def finished_campaign(tmp_path_factory, write_campaign) -> Path:
    """One uninterrupted run of the test campaign (the reference for every resume test)."""
    folder = tmp_path_factory.mktemp("campaign")
    config = load_campaign(write_campaign(folder))
    workdir = folder / "work"
    run_campaign(config, default_site(), workdir)
    return workdir


def test_campaign_grows_the_dataset_with_cago_structures(finished_campaign):
    dataset = Dataset.open(finished_campaign / "dataset")
    stages = [entry.provenance.stage for entry in dataset.entries]
    initial_filter = next(r for r in all_records(finished_campaign) if r.stage == "postfilter" and r.iteration == -1)
    rejected = initial_filter.summary["rejected"]
    # the starting structure and its 15 rattled copies, labelled by tblite, less the post-filter's rejections
    assert stages.count("initial") == 16 - len(rejected), rejected
    assert len(rejected) <= 2, rejected
    cago = [entry for entry in dataset.entries if entry.provenance.stage == "cago"]
    assert 1 <= len(cago) <= 4  # 2 per iteration, minus what the filters dropped
    for entry in cago:
        assert entry.provenance.engine == "tblite/GFN1-xTB"
        assert entry.provenance.parent is not None
        assert entry.provenance.extra["system"] == "water"
        assert entry.provenance.extra["delta"] == pytest.approx(0.15)
        assert entry.provenance.extra["hit_ratio"] == pytest.approx(entry.provenance.extra["true_error"] / 0.15)
    assert {entry.provenance.iteration for entry in cago} <= {0, 1}
    status = {it.iteration: it for it in campaign_status(finished_campaign)}
    assert set(status) == {-1, 0, 1}
    assert status[1].dataset_size == len(dataset)
    assert status[0].test_force_rmse > 0
    assert status[1].md_stable is not None  # iteration 1 samples from MD
    for iteration in (0, 1):  # every CAGO task of the iteration counted, reached or not
        reached = [r for r in all_records(finished_campaign) if r.stage == "cago" and r.iteration == iteration]
        wanted = sum(r.summary["reason"] == "reached" for r in reached)
        assert status[iteration].cago_reached == f"{wanted}/{len(reached)}" and len(reached) == 2


def test_cago_structures_routed_to_the_test_split_are_never_trained_on(finished_campaign):
    """A quarter (at least one) of iteration 0's labelled CAGO structures joins iteration 1's test
    split, the calibration's data, and none of them is in any member's training file."""
    import json

    from cagoflow.hashing import structure_hash
    from cagoflow.io import read_structures

    merge = next(r for r in all_records(finished_campaign) if r.stage == "merge" and r.iteration == 0)
    routed = json.loads((finished_campaign / merge.outputs["routed"]).read_text())
    dataset = Dataset.open(finished_campaign / "dataset")
    pushed = [(e, atoms) for e, atoms in zip(dataset.entries, dataset.structures())
              if "hit_ratio" in e.provenance.extra and e.provenance.iteration == 0]  # fmt: skip
    assert merge.summary["to_test"] == len(routed) == max(1, round(0.25 * len(pushed)))
    tested = [e for e, atoms in pushed if structure_hash(atoms) in routed]
    assert len(tested) == len(routed) and all(e.provenance.extra.get("split") == "test" for e in tested)
    split = finished_campaign / "iter-001" / "split" / "dataset"
    test = {structure_hash(atoms) for atoms in read_structures(split / "test.extxyz")}
    assert set(routed) <= test
    for member in split.glob("member-*-train.extxyz"):
        assert not set(routed) & {structure_hash(atoms) for atoms in read_structures(member)}, member.name
    summary = next(r for r in all_records(finished_campaign) if r.stage == "split" and r.iteration == 1).summary
    assert summary["test_from_cago"] == len(routed)
    # the routed walks carry their largest displacement; the next calibration counts them, too few to judge
    from cagoflow.walk_validity import DISPLACEMENT_KEY

    walks = [atoms for atoms in read_structures(split / "test.extxyz") if DISPLACEMENT_KEY in atoms.info]
    assert {structure_hash(atoms) for atoms in walks} == set(routed) and all(atoms.info[DISPLACEMENT_KEY] >= 0 for atoms in walks)
    calibration = next(r for r in all_records(finished_campaign) if r.stage == "calibrate" and r.iteration == 1)
    assert calibration.summary["walks"] == len(routed) and not calibration.summary["walk_judged"]
    assert json.loads((finished_campaign / calibration.outputs["walks"]).read_text())["bins"] == []
    sample = next(r for r in all_records(finished_campaign) if r.stage == "sample" and r.iteration == 1).summary
    assert sample["trust_source"] == "thermal" and sample["trust_radius"] > 0


def test_cago_records_say_where_each_walk_went(finished_campaign):
    """Every CAGO record: the start's σ_cal, δ asked and used, the direction and what was done."""
    for record in (r for r in all_records(finished_campaign) if r.stage == "cago" and not r.summary.get("skipped")):
        summary = record.summary
        assert summary["direction"] in ("up", "down", "unmoved") and summary["action"] in ("pushed", "sampled")
        assert summary["start_sigma_cal"] > 0 and summary["requested_delta"] == pytest.approx(0.15)
        if summary["action"] == "pushed":
            assert summary["delta"] is not None
            moved = summary["sigma_cal_rms"] - summary["start_sigma_cal"]
            assert summary["direction"] == ("unmoved" if summary["steps"] == 0 else "up" if moved > 0 else "down")
        else:
            assert summary["delta"] is None and summary["reason"] in ("no_room", "no_limit")


def test_relative_delta_never_walks_down_in_a_campaign(tmp_path, write_campaign):
    """One iteration under δ = 1.5 × each start's σ_cal: no walk goes down; a start without room
    is redrawn or sent to the reference as sampled, and its record says so."""
    campaign = write_campaign(tmp_path, iterations=1, **{"cago.delta": {"relative": 1.5}, "sampling.per_iteration": 3})
    workdir = tmp_path / "work"
    run_campaign(load_campaign(campaign), default_site(), workdir)
    cago = [r.summary for r in all_records(workdir) if r.stage == "cago" and r.iteration == 0]
    assert len(cago) == 3 and not any(s["direction"] == "down" for s in cago), cago
    for summary in cago:
        if summary["action"] == "pushed":
            assert summary["delta"] == pytest.approx(1.5 * summary["start_sigma_cal"])
        else:
            assert summary["action"] == "sampled" and summary["start"] == "no_room"
    sample = next(r for r in all_records(workdir) if r.stage == "sample" and r.iteration == 0).summary
    assert sample["without_room"] == sum(s["action"] != "pushed" for s in cago)


def test_finished_campaign_runs_nothing_again(finished_campaign):
    before = executions(finished_campaign)
    config = load_campaign(finished_campaign.parent / "campaign.yaml")
    start = time.perf_counter()
    run_campaign(config, default_site(), finished_campaign)
    assert executions(finished_campaign) == before
    assert time.perf_counter() - start < 30


def test_changed_setting_reruns_exactly_what_depends_on_it(finished_campaign, tmp_path, write_campaign):
    """A new δ invalidates CAGO and everything after it, not the initial labels or the first training."""
    import shutil

    workdir = tmp_path / "work"
    shutil.copytree(finished_campaign, workdir)
    config = load_campaign(write_campaign(tmp_path, **{"cago.delta": 0.12}))
    before = len(executions(workdir))
    run_campaign(config, default_site(), workdir)
    rerun = executions(workdir)[before:]
    stages = {(e["stage"], e["iteration"]) for e in rerun}
    assert ("cago", 0) in stages
    assert ("initial", -1) not in stages and ("train", 0) not in stages and ("split", 0) not in stages
    assert not any(e["stage"] == "reference" and e["iteration"] == -1 for e in rerun)


@pytest.mark.parametrize("stage", ["train", "cago", "reference", "merge"])
def test_sigkill_and_resume_equals_the_uninterrupted_run(finished_campaign, tmp_path, write_campaign, stage):
    """Kill the driver right after the first task of ``stage`` in iteration 0 finished; restart."""
    campaign = write_campaign(tmp_path)
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "cagoflow.cli", "run", str(campaign), "--workdir", str(workdir)]
    log = tmp_path / "driver.log"
    with open(log, "w") as handle:  # a file, not a pipe nobody reads: that could block the driver
        driver = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        if any(e["stage"] == stage and e["iteration"] == 0 for e in executions(workdir) if (workdir / "executions.jsonl").exists()):
            break
        time.sleep(0.05)
    assert driver.poll() is None, f"the driver ended before a {stage} task finished: {log.read_text()[-3000:]}"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert dataset_hashes(workdir) == dataset_hashes(finished_campaign)
    assert len(set(dataset_hashes(workdir))) == len(dataset_hashes(workdir))
    assert not list(workdir.glob("**/*.tmp"))
    # nothing that had finished before the kill ran again
    log = executions(workdir)
    done = [(e["stage"], e["iteration"], e["task"]) for e in log]
    assert len(done) == len(set(done))


def test_every_reference_failing_stops_with_a_message(tmp_path, write_campaign):
    campaign = write_campaign(tmp_path, **{"filters.post": {"max_reference_force": 1e-6}})
    with pytest.raises(CampaignFailed, match="none of the .* reference calculations gave a usable structure"):
        run_campaign(load_campaign(campaign), default_site(), tmp_path / "work")


def test_a_failed_member_is_tolerated_down_to_min_trained_and_retried_on_resume(tmp_path, write_campaign):
    """Member 1's trainer crashes (its model file cannot be written: a directory is in the way).

    With min_trained 2 of 3 the iteration goes on with two members and status says so; with
    min_trained 3 the next run trains member 1 again, it fails again, and the iteration stops
    with a message naming it; once the obstacle is gone, a third run completes with all three.
    """
    from typer.testing import CliRunner

    from cagoflow.cli import app

    workdir = tmp_path / "work"
    obstacle = workdir / "iter-000" / "train" / "member-01" / "model.json"
    obstacle.mkdir(parents=True)
    tolerant = load_campaign(write_campaign(tmp_path / "a", iterations=1))
    run_campaign(tolerant, default_site(), workdir)
    records = {(r.stage, r.iteration, r.task): r for r in all_records(workdir)}
    assert records["train", 0, "member-01"].status == "failed"
    assert "the trainer exited with code" in records["train", 0, "member-01"].summary["message"]
    calibration = records["calibrate", 0, "committee"]
    assert calibration.summary["members"] == 2 and calibration.summary["failed_members"] == ["member-01"]
    assert (workdir / "iter-000" / "merge" / "dataset" / "record.json").exists()
    shown = CliRunner().invoke(app, ["status", str(workdir)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "2 +1 failed" in shown.output and "iteration 0 train member-01: the trainer exited with code" in shown.output

    strict = load_campaign(write_campaign(tmp_path / "b", iterations=1, **{"committee.min_trained": 3}))
    before = len(executions(workdir))
    with pytest.raises(CampaignFailed, match=r"only 2 of 3 members trained, fewer than committee.min_trained = 3 \(member-01: the trainer exited"):
        run_campaign(strict, default_site(), workdir)
    retrained = [e["task"] for e in executions(workdir)[before:] if e["stage"] == "train"]
    assert retrained == ["member-01"]  # the failed member again, not the two that trained

    obstacle.rmdir()
    run_campaign(strict, default_site(), workdir)
    records = {(r.stage, r.iteration, r.task): r for r in all_records(workdir)}
    assert records["train", 0, "member-01"].status == "done"
    assert records["calibrate", 0, "committee"].summary["members"] == 3


def test_independent_systems_grow_one_dataset_side_by_side(tmp_path, write_campaign):
    """Two systems (a liquid box and a denser one) run through one iteration: each gets its
    own initial labels, MD/CAGO structures and references; one committee learns from both."""
    from cagoflow.io import write_structures
    from cagoflow.structures import water_box

    write_structures(tmp_path / "dense.extxyz", [water_box(4, density_g_cm3=1.2, seed=5)])
    systems = {
        "water": {"structures": "water.extxyz", "initial_samples": 5, "initial_rattle": 0.04},
        "dense": {"structures": "dense.extxyz", "initial_samples": 5, "initial_rattle": 0.04},
    }
    config = load_campaign(write_campaign(tmp_path, iterations=1, systems=systems))
    workdir = tmp_path / "work"
    run_campaign(config, default_site(), workdir)
    entries = Dataset.open(workdir / "dataset").entries
    by_system = {
        system: [e for e in entries if e.provenance.extra.get("system") == system] for system in ("water", "dense")
    }
    for system, chosen in by_system.items():
        assert sum(e.provenance.stage == "initial" for e in chosen) >= 4, system  # 6 labelled, ≤ 2 filtered
        assert any(e.provenance.stage == "cago" for e in chosen), system
    assert len(by_system["water"]) + len(by_system["dense"]) == len(entries)
    cago_tasks = {r.task.split("/")[0] for r in all_records(workdir) if r.stage == "cago" and r.iteration == 0}
    assert {task.rsplit("-", 1)[0] for task in cago_tasks} == {"water", "dense"}, cago_tasks


def test_lammps_md_through_fix_external_runs_as_a_program_of_the_md_stage(tmp_path, write_campaign):
    """MD in LAMMPS with analytic members: prepare → the fix external driver in a bash app → collect."""
    from real_components import require_module

    require_module("lammps")
    campaign = write_campaign(tmp_path, iterations=1, **{"md.engine": "lammps", "sampling.cago_from": {"source": "md"}})
    workdir = tmp_path / "work"
    run_campaign(load_campaign(campaign), default_site(), workdir)
    (md,) = [r for r in all_records(workdir) if r.stage == "md"]
    assert md.status == "done" and md.summary["stable"] and md.summary["frames"] == 4, md.summary
    run = workdir / "iter-000" / "md" / md.task / "lammps"
    assert "fix_modify" in (run / "in.lammps").read_text() and (run / "exit-status").read_text().strip() == "0"
    assert md.seconds > 0.1  # the driver's own wall time
    cago = [r for r in all_records(workdir) if r.stage == "cago"]
    assert len(cago) == 2 and all(r.summary["subset"] for r in cago)  # CAGO started from the LAMMPS frames
