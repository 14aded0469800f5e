"""End-to-end local campaigns: the loop, its records, resume after SIGKILL, invalidation by content."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cagoflow.config import default_site, load_campaign
from cagoflow.dataset import Dataset
from cagoflow.records import all_records, executions
from cagoflow.workflows.campaign import CampaignFailed, run_campaign
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
    # the starting structure and its 9 rattled copies, labelled by tblite, less the post-filter's rejections
    assert stages.count("initial") == 10 - len(rejected), rejected
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
