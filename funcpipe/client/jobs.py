"""Job ids, the job's manifest and heartbeat, and cleaning up what dead jobs left behind.

Every key of a job lives under ``jobs/<job_id>/``. A job id is one key part of safe characters
and never contains ``/``, so with the trailing slash no job's prefix can hold another's: "a" and
"ab" are disjoint, and "a/x" is refused. A running client keeps ``jobs/<job_id>/manifest`` (its
start time and last heartbeat) fresh; ``funcpipe clean`` uses it to tell live jobs from dead ones.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.runtime import keys
from funcpipe.storage.base import Storage

__all__ = [
    "HEARTBEAT_S",
    "LIVE_WINDOW_S",
    "Heartbeat",
    "JobInfo",
    "clean",
    "list_jobs",
    "new_job_id",
    "parse_duration",
    "validate_job_id",
]

#: How often a running client rewrites its manifest.
HEARTBEAT_S = 10.0
#: A job whose last heartbeat is older than this is dead (six missed heartbeats).
LIVE_WINDOW_S = 60.0

_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is safe as a key part, else raise ConfigError saying why."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        problem = (
            f"is a {type(job_id).__name__}"
            if not isinstance(job_id, str)
            else "contains '/', which would nest one job's keys inside another's"
            if "/" in job_id
            else "must be 1 to 64 characters of letters, digits and _.- starting with a letter "
            "or digit"
        )
        raise ConfigError(
            f"invalid job_id {job_id!r}: it {problem}; use e.g. 'resnet-run3' "
            "(or leave it out for a random id)"
        )
    return job_id


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class JobInfo:
    """What storage holds of one job: its object count and, if it wrote one, its manifest."""

    job_id: str
    objects: int
    started: float | None = None  # unix time the client started the job
    heartbeat: float | None = None  # unix time of the client's last heartbeat
    host: str | None = None
    pid: int | None = None

    def idle_s(self, now: float | None = None) -> float | None:
        """Seconds since the last heartbeat; None when the job wrote no manifest."""
        if self.heartbeat is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.heartbeat)

    def live(self, now: float | None = None) -> bool:
        idle = self.idle_s(now)
        return idle is not None and idle < LIVE_WINDOW_S


class Heartbeat:
    """Writes the job's manifest now and refreshes it every ``period_s`` until closed.

    The first write happens in the caller (so a storage that refuses writes fails the job before
    any function starts); later ones in a daemon thread, whose failures are kept and ignored:
    a missed heartbeat only makes the job look idle to ``funcpipe clean``.
    """

    def __init__(self, root: Storage, job_id: str, *, period_s: float = HEARTBEAT_S) -> None:
        self.root, self.job_id, self.period_s = root, job_id, period_s
        self.key = keys.job_prefix(job_id) + keys.manifest()
        self.started = time.time()
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        manifest = {
            "job_id": self.job_id,
            "started": self.started,
            "heartbeat": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.root.put(self.key, json.dumps(manifest).encode())

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                self.errors.append(exc)

    def __enter__(self) -> Heartbeat:
        self._write()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _read_manifest(root: Storage, job_id: str) -> dict[str, object]:
    try:
        data = json.loads(root.get(keys.job_prefix(job_id) + keys.manifest()))
    except (KeyNotFound, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def list_jobs(root: Storage) -> list[JobInfo]:
    """Every job with objects in ``root``, by id."""
    counts: dict[str, int] = {}
    for key in root.list(keys.JOBS_ROOT):
        job_id = key[len(keys.JOBS_ROOT) :].partition("/")[0]
        counts[job_id] = counts.get(job_id, 0) + 1
    jobs = []
    for job_id, count in sorted(counts.items()):
        m = _read_manifest(root, job_id)
        pid = m.get("pid")
        jobs.append(
            JobInfo(
                job_id,
                count,
                started=_number(m.get("started")),
                heartbeat=_number(m.get("heartbeat")),
                host=m.get("host") if isinstance(m.get("host"), str) else None,  # type: ignore[arg-type]
                pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            )
        )
    return jobs


def clean(
    root: Storage,
    *,
    older_than_s: float = LIVE_WINDOW_S,
    job_ids: Iterable[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    now: float | None = None,
) -> list[JobInfo]:
    """Delete the keys of dead jobs idle for at least ``older_than_s``; return those jobs.

    A job without a manifest (a pre-manifest version, or late writes of functions after their
    job was cleaned) has no age and counts as dead. Live jobs (a heartbeat within
    :data:`LIVE_WINDOW_S`) are kept unless ``force``; ``job_ids`` limits the clean-up to those.
    """
    if older_than_s < 0:
        raise ConfigError(f"older_than must be >= 0 seconds, got {older_than_s}")
    wanted = None if job_ids is None else {validate_job_id(j) for j in job_ids}
    now = time.time() if now is None else now
    removed = []
    for job in list_jobs(root):
        if wanted is not None and job.job_id not in wanted:
            continue
        idle = job.idle_s(now)
        if not force and (job.live(now) or (idle is not None and idle < older_than_s)):
            continue
        if not dry_run:
            try:
                root.delete_prefix(keys.job_prefix(job.job_id))
            except StorageError as exc:
                raise StorageError(f"could not delete job {job.job_id!r}: {exc}") from exc
        removed.append(job)
    return removed


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '2h', '7d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ConfigError(
            f"duration {text!r} is not a number with an optional unit s, m, h or d, e.g. '2h'"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
