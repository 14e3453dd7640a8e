"""Control records a cloud function and its client exchange through the job's storage.

An asynchronous invocation (Lambda's ``InvocationType=Event``, a Lithops call on a remote
backend) returns nothing the client can watch, so each function writes what it is doing into the
job's storage, and reads from there what the client wants of it:

``control/g{generation}/s{stage}r{replica}/``
  ``claim``   created once, with create-only semantics, by the first attempt of the function;
              a retried invocation finds it taken and exits without touching the job's keys
  ``status``  JSON: ``state`` (started, running, done, failed, cancelled), timestamps,
              heartbeats, peak memory, billed milliseconds and, on failure, its ``reason``, the
              traceback and whether the error is ``transient`` (a relaunch may cure it)
  ``abort``   written by the client to stop the function (cancel)

``control/payload/{sha256}`` holds the parts of an invocation payload too big for the platform's
payload limit (:mod:`funcpipe.platforms.offload`).

Every key lives under the job's prefix, so deleting the job deletes them too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import resource
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from funcpipe.errors import ConfigError, KeyExists, KeyNotFound
from funcpipe.platforms.failures import is_transient
from funcpipe.platforms.offload import OFFLOAD_MARK, fit_payload, restore_payload
from funcpipe.storage import open_storage
from funcpipe.storage.base import Storage
from funcpipe.storage.prefixed import PrefixedStorage

__all__ = [
    "OFFLOAD_MARK",
    "ControlKeys",
    "FunctionGuard",
    "claim",
    "fit_payload",
    "job_over",
    "job_storage",
    "restore_payload",
]


@dataclass(frozen=True)
class ControlKeys:
    """Keys of one function of one generation, relative to the job's prefix."""

    generation: int
    stage: int
    replica: int

    @property
    def prefix(self) -> str:
        return f"control/g{self.generation}/s{self.stage}r{self.replica}/"

    @property
    def claim(self) -> str:
        return self.prefix + "claim"

    @property
    def status(self) -> str:
        return self.prefix + "status"

    @property
    def abort(self) -> str:
        return self.prefix + "abort"

    @staticmethod
    def of(package: dict[str, Any]) -> ControlKeys:
        return ControlKeys(
            int(package.get("generation", 0)), int(package["stage"]), int(package["replica"])
        )


def check_reachable(storage_url: str, platform: str) -> None:
    """Refuse storage that lives on the client's machine: remote functions cannot reach it."""
    from urllib.parse import urlsplit

    scheme = urlsplit(storage_url).scheme
    if scheme in ("", "local", "memory", "file"):
        raise ConfigError(
            f"storage {storage_url!r} is on this machine, which functions on {platform} cannot "
            "reach; use a bucket they share with the client, e.g. storage='s3://bucket/prefix'"
        )


def job_storage(storage_url: str, job_id: str) -> tuple[Storage, PrefixedStorage]:
    """(the backend itself, the job's view of it); close the first when done."""
    from funcpipe.runtime import keys

    root = open_storage(storage_url)
    return root, PrefixedStorage(root, keys.job_prefix(job_id))


# --- create-only writes --------------------------------------------------------------------------


def claim(store: Storage, key: str, data: bytes) -> bool:
    """Create ``key`` with ``data`` unless it exists; True when this call created it.

    A create-only put (``overwrite=False``), atomic on every backend: of concurrent claims
    exactly one wins. ``data`` names the attempt (a retried write that finds its own bytes counts
    as created, see :meth:`Storage.put`).
    """
    try:
        store.put(key, data, overwrite=False)
    except KeyExists:
        return False
    return True


# --- the function's side -------------------------------------------------------------------------

#: The job's manifest (written by its client, deleted with the job's keys); checked every this
#: many abort polls, so a function whose job is gone stops even if its abort key went with it.
MANIFEST_KEY = "manifest"
MANIFEST_EVERY = 5


class StopRule:
    """Why a function should stop now, from its storage: its abort key, or its job deleted.

    The client deletes the job's keys right after cancelling, possibly before a function saw its
    abort key; so a function also stops once the job's manifest, seen before, is gone.
    """

    def __init__(self, shared: Storage, abort_key: str) -> None:
        self.shared, self.abort_key = shared, abort_key
        self._polls = 0
        self._seen_manifest = False

    def check(self) -> str | None:
        if self.shared.exists(self.abort_key):
            return "cancelled"
        self._polls += 1
        if self._polls % MANIFEST_EVERY == 1:
            if self.shared.exists(MANIFEST_KEY):
                self._seen_manifest = True
            elif self._seen_manifest:
                return "job deleted"
        return None


def job_ended(shared: Storage, abort_key: str) -> str | None:
    """Why this function has nothing left to do before it starts, or None.

    An asynchronous invocation can start after its job ended: the client cancelled it, or finished
    and deleted the job's keys, while the platform was still queueing or cold-starting the
    function. Such a function must exit quietly, not fail on its missing package, and must leave
    no keys behind. The manifest exists from before the first function is invoked until the job's
    keys are deleted.
    """
    if shared.exists(abort_key):
        return "cancelled"
    if not shared.exists(MANIFEST_KEY):
        return "job deleted"
    return None


def job_over(
    shared: Storage, keys: ControlKeys, job_id: str, *, wrote: Sequence[str] = ()
) -> str | None:
    """Why this function must exit without doing anything ("cancelled", "job deleted"), or None.

    The function side's check, before it runs and again when it failed (a call that starts as
    its job is deleted finds its package gone, which is no failure of its own): see
    :func:`job_ended`. Storage trouble answers None, so the caller goes on or reports its own
    error. Once the job is deleted, the keys this attempt wrote (``wrote``) are removed again,
    so a job that is gone stays gone.
    """
    try:
        why = job_ended(shared, keys.abort)
    except Exception:
        return None
    if why is None:
        return None
    if why == "job deleted":
        for key in wrote:
            with contextlib.suppress(Exception):
                shared.delete(key)
    print(
        f"funcpipe: job {job_id!r} ended before {keys.prefix} could run ({why}); this function "
        "exits without doing anything",
        flush=True,
    )
    return why


#: Exit status of a function stopped by its client (abort key, or the job deleted under it).
CANCELLED_EXIT = 3


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def billed_ms(start: float, end: float) -> int:
    """Duration as Lambda bills it: rounded up to the millisecond, at least 1 ms."""
    return max(1, math.ceil((end - start) * 1000))


class FunctionGuard:
    """Writes one function's status and heartbeats, and watches its abort key and deadline.

    ``stop`` is called (from the watcher thread) when the client aborts the function or its time
    is nearly up; on a real platform it ends the process (``os._exit``), which is how a function
    stops at once whatever it is doing.
    """

    def __init__(
        self,
        shared: Storage,
        keys: ControlKeys,
        *,
        attempt: str,
        started_at: float,
        memory_mb: int | None = None,
        remaining_s: Callable[[], float] | None = None,
        stop: Callable[[str], None] | None = None,
        heartbeat_s: float = 10.0,
        abort_poll_s: float = 1.0,
    ) -> None:
        self.shared, self.keys, self.attempt = shared, keys, attempt
        self.started_at, self.memory_mb = started_at, memory_mb
        self.remaining_s, self.stop = remaining_s, stop or _exit_now
        self.heartbeat_s, self.abort_poll_s = heartbeat_s, abort_poll_s
        self._rule = StopRule(shared, keys.abort)
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._final = False
        self._thread: threading.Thread | None = None

    def write(self, state: str, **extra: Any) -> None:
        """Write the status record; once a final state is written, later writes are dropped."""
        now = time.time()
        record = {
            "state": state,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "heartbeat_at": now,
            "memory_mb": self.memory_mb,
            "peak_mb": round(peak_rss_mb(), 1),
            **extra,
        }
        if state in ("done", "failed", "cancelled"):
            record["ended_at"] = now
            record["billed_ms"] = billed_ms(self.started_at, now)
        with self._lock:
            if self._final:
                return
            self._final = state in ("done", "failed", "cancelled")
            self.shared.put(self.keys.status, json.dumps(record).encode())

    def start(self) -> None:
        self.write("started")
        self._thread = threading.Thread(target=self._watch, name="funcpipe-guard", daemon=True)
        self._thread.start()

    def finish(self, exc: BaseException | None, *, write: bool = True) -> None:
        """Record how the function ended (the traceback when it raised); ``write=False`` only
        stops the watcher (the job ended under the function: nobody reads the record)."""
        self._done.set()
        if not write:
            with self._lock:
                self._final = True
            return
        if exc is None:
            self.write("done")
            return
        reason = "memory" if isinstance(exc, MemoryError) else "error"
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.write("failed", reason=reason, error=text[-20000:], transient=is_transient(exc))

    def _watch(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._done.wait(self.abort_poll_s):
            try:
                why = self._rule.check()
                if why is not None:
                    # No record: the client already knows, and the job's keys may be gone.
                    with self._lock:
                        self._final = True
                    self._done.set()
                    self.stop(why)
                    return
                if self.remaining_s is not None and self.remaining_s() < 2 * self.abort_poll_s:
                    self._end("failed", "timeout", "the function ran out of time")
                    return
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.heartbeat_s
                    self.write("running")
            except Exception as exc:  # storage hiccup: the next round tries again
                print(f"funcpipe: control record update failed: {exc}", file=sys.stderr)

    def _end(self, state: str, reason: str, message: str) -> None:
        with contextlib.suppress(Exception):
            self.write(state, reason=reason, error=message)
        self._done.set()
        self.stop(reason)


def _exit_now(reason: str) -> None:
    sys.stderr.write(f"funcpipe: stopping the function now ({reason})\n")
    sys.stderr.flush()
    os._exit(CANCELLED_EXIT)


def read_status(shared: Storage, keys: ControlKeys) -> dict[str, Any] | None:
    try:
        return json.loads(shared.get(keys.status))
    except KeyNotFound:
        return None


def attempt_id() -> str:
    return base64.b32encode(uuid.uuid4().bytes).decode().rstrip("=").lower()


def watch_abort(
    shared: Storage,
    key: str,
    *,
    poll_s: float = 1.0,
    stop: Callable[[str], None] | None = None,
) -> threading.Event:
    """Poll ``key`` in a daemon thread and call ``stop`` once it appears; set the event to end."""
    done = threading.Event()
    stop = stop or _exit_now
    rule = StopRule(shared, key)

    def watch() -> None:
        while not done.wait(poll_s):
            try:
                why = rule.check()
                if why is not None:
                    stop(why)
                    return
            except Exception as exc:  # storage hiccup: the next round tries again
                print(f"funcpipe: abort key check failed: {exc}", file=sys.stderr)

    threading.Thread(target=watch, name="funcpipe-abort", daemon=True).start()
    return done
