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
payload limit. Only data travels that way (safetensors bytes, JSON): the payload's pickled code
never leaves the payload, because nothing read from storage is ever unpickled.

Every key lives under the job's prefix, so deleting the job deletes them too.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
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

from funcpipe.errors import ConfigError, KeyExists, KeyNotFound, StorageError
from funcpipe.platforms.failures import is_transient
from funcpipe.storage import open_storage
from funcpipe.storage.base import Storage
from funcpipe.storage.prefixed import PrefixedStorage

__all__ = [
    "ControlKeys",
    "FunctionGuard",
    "claim",
    "fit_payload",
    "job_storage",
    "restore_payload",
]

#: Payload fields that hold cloudpickle bytes: they stay in the payload, whatever its size.
PICKLED_FIELDS = frozenset({"pickle"})
#: Smallest field worth moving to storage (a request costs more than a few bytes of payload).
MIN_OFFLOAD_BYTES = 1024
OFFLOAD_MARK = "$funcpipe-storage"


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


# --- payloads that fit the platform's limit ------------------------------------------------------


def _big_fields(node: Any, path: tuple) -> list[tuple[int, tuple]]:
    """(size, path) of every string field that may travel through storage instead."""
    out: list[tuple[int, tuple]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in PICKLED_FIELDS:
                continue
            if isinstance(v, str) and len(v) >= MIN_OFFLOAD_BYTES:
                out.append((len(v), (*path, k)))
            else:
                out.extend(_big_fields(v, (*path, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_big_fields(v, (*path, i)))
    return out


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def fit_payload(package: dict[str, Any], shared: Storage, max_bytes: int, *, what: str) -> bytes:
    """The invocation event for ``package``, at most ``max_bytes``, largest data in storage.

    ``shared`` is the job's storage. Pickled code is never moved: when it alone is too big the
    error says so and how to shrink it.
    """
    event = {"funcpipe": 1, "package": json.loads(json.dumps(package))}
    body = _encode(event)
    if len(body) <= max_bytes:
        return body
    for _size, path in sorted(_big_fields(event["package"], ()), reverse=True):
        parent = event["package"]
        for part in path[:-1]:
            parent = parent[part]
        text = parent[path[-1]].encode()
        digest = hashlib.sha256(text).hexdigest()
        key = f"control/payload/{digest}"
        shared.put(key, text)
        parent[path[-1]] = {OFFLOAD_MARK: key, "sha256": digest}
        body = _encode(event)
        if len(body) <= max_bytes:
            return body
    pickled = sum(len(v) for v in _pickled_values(event["package"]))
    raise ConfigError(
        f"{what}: its invocation payload is {len(body)} bytes, over the platform's limit of "
        f"{max_bytes} bytes, and {pickled} bytes of it are pickled code, which must travel "
        "inside the payload (nothing read from storage is unpickled). Pass the layers, loss and "
        "optimizer as import references instead (funcpipe.runtime.package.code_ref("
        "'package.module:attr'), with the package installed in the function's image), or define "
        "fewer or smaller objects in your script"
    )


def _pickled_values(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [v for k, v in node.items() if k in PICKLED_FIELDS and isinstance(v, str)]
        for k, v in node.items():
            if k not in PICKLED_FIELDS:
                out.extend(_pickled_values(v))
        return out
    if isinstance(node, list):
        return [x for v in node for x in _pickled_values(v)]
    return []


def restore_payload(node: Any, shared: Storage) -> Any:
    """Put the fields :func:`fit_payload` moved to storage back (checked by their SHA-256)."""
    if isinstance(node, dict):
        if set(node) == {OFFLOAD_MARK, "sha256"}:
            data = shared.get(node[OFFLOAD_MARK])
            if hashlib.sha256(data).hexdigest() != node["sha256"]:
                raise StorageError(
                    f"payload part {node[OFFLOAD_MARK]!r} in storage does not match its checksum"
                )
            return data.decode()
        return {k: restore_payload(v, shared) for k, v in node.items()}
    if isinstance(node, list):
        return [restore_payload(v, shared) for v in node]
    return node


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
