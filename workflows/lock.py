"""One run per work directory: a lock file that works on the shared file systems of clusters.

The driver of a campaign may run on a login node today and in a batch job on another host
tomorrow, so the lock cannot be a process lock (``flock`` is not reliable across NFS clients).
It is a small JSON file, :data:`LOCK_NAME`, in the work directory, holding the host, the
process id, the start time and a heartbeat that the holder rewrites every
:data:`HEARTBEAT_SECONDS`. It is created with ``os.link`` of a fully written temporary file,
which is atomic on NFS as on local disks: of two runs started at once, one gets it.

A run that finds the lock held takes it over, with a warning, only when the holder is provably
gone: it ran on this host and its process no longer exists, or its heartbeat is older than
:data:`STALE_SECONDS` (a driver killed on another host, a lost node). Otherwise the run
refuses with :class:`CampaignLocked` (exit code 2) before touching anything; ``cagoflow run
--force-unlock`` takes the lock whatever its state, for a holder that is gone but looks alive
(a process id reused on this host).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from cagoflow.errors import CagoflowError

#: The lock file of a work directory.
LOCK_NAME = "run.lock"
#: Seconds between two heartbeats of a running driver.
HEARTBEAT_SECONDS = 60.0
#: A lock whose heartbeat is older than this (s) belongs to a driver that is gone: ten missed
#: heartbeats, far more than a busy file server delays a write.
STALE_SECONDS = 600.0

State = Literal["alive", "dead", "stale"]


class CampaignLocked(CagoflowError):
    """Another run holds the work directory."""


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the run that holds it (times: Unix seconds)."""

    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    def state(self, now: float | None = None, stale_after: float = STALE_SECONDS) -> State:
        """``dead`` (this host, no such process), ``stale`` (heartbeat older than ``stale_after``) or ``alive``."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not _process_exists(self.pid):
            return "dead"
        return "stale" if now - self.heartbeat > stale_after else "alive"

    def describe(self, now: float | None = None) -> str:
        """The holder in words: host, pid, start time and the age of its heartbeat."""
        now = time.time() if now is None else now
        return (
            f"process {self.pid} on host {self.host}, started {_clock(self.started)}, "
            f"last heartbeat {now - self.heartbeat:.0f} s ago"
        )


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def read_lock(workdir: Path) -> LockHolder | None:
    """The holder of ``workdir``'s lock (None: not locked; an unreadable lock file counts as
    a holder that is gone, with a heartbeat of 0)."""
    path = Path(workdir) / LOCK_NAME
    try:
        data = json.loads(path.read_text())
        return LockHolder(str(data["host"]), int(data["pid"]), float(data["started"]), float(data["heartbeat"]),
                          str(data["token"]))  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockHolder("unknown", 0, 0.0, 0.0, "")


class CampaignLock:
    """The lock of one work directory, held from :meth:`acquire` to :meth:`release` (or as a
    context manager), with a heartbeat thread while held."""

    def __init__(
        self, workdir: Path, *, heartbeat_seconds: float = HEARTBEAT_SECONDS, stale_seconds: float = STALE_SECONDS
    ):
        self.path = Path(workdir) / LOCK_NAME
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.holder = LockHolder(socket.gethostname(), os.getpid(), time.time(), time.time(), uuid.uuid4().hex)
        self.warnings: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, force: bool = False) -> None:
        """Take the lock; take over a gone holder's (a warning in :attr:`warnings`), every
        holder's with ``force``; raise :class:`CampaignLocked` otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a holder that releases or is taken over between our reads: try again
            if self._create():
                self._start_heartbeat()
                return
            other = read_lock(self.path.parent)
            if other is None:
                continue
            state = other.state(stale_after=self.stale_seconds)
            if state == "alive" and not force:
                raise CampaignLocked(
                    f"the work directory {self.path.parent} is in use by another cagoflow run ({other.describe()}); "
                    "two runs in one directory would redo and overwrite each other's tasks. Wait for it to end, "
                    "or stop it; if that run is gone but its lock looks alive (a heartbeat younger than "
                    f"{self.stale_seconds:.0f} s, or a process id reused on its host), start again with "
                    f"'cagoflow run --force-unlock' (lock file: {self.path})"
                )
            why = {"dead": "its process no longer exists", "stale": "its heartbeat is too old"}.get(state, "--force-unlock")
            self.warnings.append(f"took over the lock of {self.path.parent} from {other.describe()} ({why})")
            self._remove_if(other)
        raise CampaignLocked(f"could not take the lock {self.path}: other runs keep taking it; try again")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_lock(self.path.parent)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> CampaignLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _create(self) -> bool:
        """Create the lock file with our holder, atomically (link of a written temp file)."""
        temporary = self.path.with_name(f".{LOCK_NAME}.{self.holder.token}.tmp")
        temporary.write_text(json.dumps(asdict(self.holder)))
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def _remove_if(self, other: LockHolder) -> None:
        """Remove the lock file if it still holds ``other`` (not a newer holder's)."""
        current = read_lock(self.path.parent)
        if current is not None and current.token == other.token:
            self.path.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="cagoflow-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Rewrite the heartbeat (temp file + rename) while the lock is ours."""
        while not self._stop.wait(self.heartbeat_seconds):
            current = read_lock(self.path.parent)
            if current is None or current.token != self.holder.token:
                return  # forced away by another run: never write over its lock
            self.holder = LockHolder(**{**asdict(self.holder), "heartbeat": time.time()})
            temporary = self.path.with_name(f".{LOCK_NAME}.{self.holder.token}.tmp")
            temporary.write_text(json.dumps(asdict(self.holder)))
            os.replace(temporary, self.path)
