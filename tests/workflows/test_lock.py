"""One run per work directory: the lock file, its takeover rules and what the CLI says."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cagoflow.cli import app
from cagoflow.workflows.lock import LOCK_NAME, CampaignLock, CampaignLocked, read_lock
from cagoflow.workflows.status import run_state


def write_holder(workdir: Path, *, host: str | None = None, pid: int, heartbeat_age: float = 0.0) -> dict:
    """A lock file as another run leaves it."""
    workdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    holder = {"host": host or socket.gethostname(), "pid": pid, "started": now - 3600, "heartbeat": now - heartbeat_age,
              "token": "other-run"}  # fmt: skip
    (workdir / LOCK_NAME).write_text(json.dumps(holder))
    return holder


@pytest.fixture
def live_process():
    """A process that exists for the length of a test (its pid holds a lock)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_run_refuses_at_once_and_touches_nothing(tmp_path, write_campaign, live_process):
    campaign = write_campaign(tmp_path / "input")
    workdir = tmp_path / "work"
    holder = write_holder(workdir, pid=live_process.pid)
    before = sorted(p.name for p in workdir.iterdir())
    result = CliRunner().invoke(app, ["run", str(campaign), "--workdir", str(workdir)])
    assert result.exit_code == 2, result.output
    words = " ".join(result.output.split())
    assert f"process {live_process.pid} on host {socket.gethostname()}" in words
    assert "started 20" in words and "--force-unlock" in words and "Traceback" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == before  # no campaign.json, no runinfo
    assert json.loads((workdir / LOCK_NAME).read_text()) == holder


def test_status_says_whether_a_run_holds_the_directory(tmp_path, live_process):
    assert run_state(tmp_path) == {"held": False, "words": "no run holds this work directory"}
    write_holder(tmp_path, pid=live_process.pid)
    state = run_state(tmp_path)
    assert state["held"] and state["state"] == "alive" and state["pid"] == live_process.pid
    assert f"process {live_process.pid}" in state["words"]
    write_holder(tmp_path, pid=dead_pid())
    assert run_state(tmp_path)["state"] == "dead" and not run_state(tmp_path)["held"]


def test_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    write_holder(tmp_path, pid=pid)
    lock = CampaignLock(tmp_path)
    lock.acquire()
    try:
        assert read_lock(tmp_path).token == lock.holder.token and read_lock(tmp_path).pid == os.getpid()
        (warning,) = lock.warnings
        assert f"process {pid}" in warning and "no longer exists" in warning
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_holder_on_another_host_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path):
    write_holder(tmp_path, host="login-node-7", pid=1, heartbeat_age=30)
    with pytest.raises(CampaignLocked, match="login-node-7"):
        CampaignLock(tmp_path, stale_seconds=600).acquire()
    write_holder(tmp_path, host="login-node-7", pid=1, heartbeat_age=900)
    with CampaignLock(tmp_path, stale_seconds=600) as lock:
        assert "heartbeat is too old" in lock.warnings[0] and "login-node-7" in lock.warnings[0]


def test_force_unlock_takes_a_live_looking_lock(tmp_path, live_process):
    write_holder(tmp_path, pid=live_process.pid)
    lock = CampaignLock(tmp_path)
    lock.acquire(force=True)
    try:
        assert read_lock(tmp_path).token == lock.holder.token and "--force-unlock" in lock.warnings[0]
    finally:
        lock.release()


def test_heartbeat_advances_and_never_overwrites_a_lock_taken_away(tmp_path):
    lock = CampaignLock(tmp_path, heartbeat_seconds=0.05)
    lock.acquire()
    first = read_lock(tmp_path).heartbeat
    time.sleep(0.3)
    assert read_lock(tmp_path).heartbeat > first
    thief = write_holder(tmp_path, pid=os.getpid())  # forced away by another run
    time.sleep(0.3)
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == thief
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == thief  # release removes only its own lock


RACER = """
import sys, time
from pathlib import Path
from cagoflow.workflows.lock import CampaignLock, CampaignLocked
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    CampaignLock(Path(sys.argv[1])).acquire()
    print("got", flush=True)
    time.sleep(3)
except CampaignLocked:
    print("refused", flush=True)
"""


@pytest.mark.slow
def test_of_runs_started_at_the_same_moment_exactly_one_gets_the_lock(tmp_path):
    start = time.time() + 2.0
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    answers = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
    assert answers == ["got", "refused", "refused", "refused"]
