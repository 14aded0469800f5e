"""A campaign on the real one-node SLURM cluster: stages routed to partitions; a killed job recovered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cagoflow.records import all_records

REPO = Path(__file__).resolve().parents[2]


def slurm_site(folder: Path, retries: int) -> Path:
    """site-configs/ci-slurm.yaml with this venv's bin on the workers' PATH and ``retries``."""
    site = yaml.safe_load((REPO / "site-configs/ci-slurm.yaml").read_text())
    site["retries"] = retries
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def run(campaign: Path, site: Path, workdir: Path, log: Path, **popen) -> subprocess.Popen:
    """The driver as a subprocess, its output in ``log`` (a pipe nobody reads would block it)."""
    command = [sys.executable, "-m", "cagoflow.cli", "run", str(campaign), "--site", str(site), "--workdir", str(workdir)]
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, **popen)


def jobs(partition: str) -> list[str]:
    listing = subprocess.run(["squeue", "-h", "-p", partition, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return listing.stdout.split()


def test_stages_run_on_their_partitions_and_a_killed_job_is_recovered(slurm_cluster, tmp_path, write_campaign):
    """Training, MD and CAGO on `gpu`, references on `cpu` (ci-slurm.yaml); mid-campaign the
    gpu job running a training task is cancelled: the task is retried in a new job and the
    campaign completes."""
    campaign = write_campaign(tmp_path, iterations=1, **{"committee.training_steps": 400})
    workdir = tmp_path / "work"
    log = tmp_path / "driver.log"
    driver = run(campaign, slurm_site(tmp_path, retries=2), workdir, log, start_new_session=True)
    try:
        killed = None
        deadline = time.time() + 400
        while time.time() < deadline and driver.poll() is None and killed is None:
            training = list((workdir / "iter-000" / "train").glob("member-*/input.json"))
            if training and jobs("gpu"):
                killed = jobs("gpu")[0]
                subprocess.run(["scancel", killed], check=True, timeout=30)
            time.sleep(0.5)
        assert killed is not None, f"no training ran in a gpu job; the driver said: {log.read_text()[-3000:]}"
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, log.read_text()[-3000:]
    records = all_records(workdir)
    partitions = {(r.stage, r.where.get("partition")) for r in records if not r.summary.get("skipped")}
    assert {p for stage, p in partitions if stage in ("train", "cago")} == {"gpu"}
    assert {p for stage, p in partitions if stage == "reference"} == {"cpu"}
    trained = [r for r in records if r.stage == "train"]
    assert len(trained) == 3 and all(r.status == "done" for r in trained)
    assert any(r.where.get("slurm_job") != killed for r in trained)
    assert (workdir / "iter-000" / "merge" / "dataset" / "record.json").exists()
