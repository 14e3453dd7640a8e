"""Platforms that learn how a function does only by asking: AWS Lambda, Lithops.

An asynchronous invocation returns nothing to wait on. Such a platform keeps a record per started
function, asks for news at most every ``poll_s`` (a status record in the job's storage, a Lithops
future), and stops a function by writing its abort key in the job's storage, which the function
watches (:mod:`funcpipe.platforms.control`). This base holds all of that; a platform adds how it
launches a function (``start``), where its news comes from (:meth:`PolledPlatform._poll`) and
what the news means (:meth:`PolledPlatform._classify`).
"""

from __future__ import annotations

import abc
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from funcpipe.errors import ConfigError, FuncPipeError
from funcpipe.platforms import control, failures
from funcpipe.platforms.base import FunctionSpec, Invocation, InvocationState, Platform
from funcpipe.storage.base import Storage

__all__ = ["JobPackage", "PolledPlatform", "PolledRun"]


@dataclass(frozen=True)
class JobPackage:
    """What a polled platform reads of a function's payload: where its job keeps its keys."""

    package: dict[str, Any]
    keys: control.ControlKeys
    storage_url: str
    job_id: str


@dataclass
class PolledRun:
    """One started function, as its platform knows it."""

    inv: Invocation
    shared: Storage  # the job's storage
    keys: control.ControlKeys
    started_at: float  # wall clock of the invocation
    final: InvocationState | None = None
    polled_at: float = 0.0  # wall clock of the last poll; 0: never polled


RunT = TypeVar("RunT", bound=PolledRun)


class PolledPlatform(Platform, Generic[RunT]):
    """Bookkeeping, polling, waiting, cancelling and closing for a platform of polled runs.

    ``timeout_grace_s``: how long past its timeout a function may go unreported before the
    platform calls it timed out itself.
    """

    timeout_grace_s: float = 30.0

    def __init__(self, *, poll_s: float) -> None:
        self.poll_s = poll_s
        self._lock = threading.RLock()
        self._runs: dict[int, RunT] = {}
        self._stores: dict[tuple[str, str], tuple[Storage, Storage]] = {}
        self._closed = False

    # --- what a platform adds ------------------------------------------------------------------

    @abc.abstractmethod
    def _poll(self, run: RunT) -> None:
        """Fetch the news of ``run`` (at most every ``poll_s``); called with the lock held."""

    @abc.abstractmethod
    def _classify(self, run: RunT, now: float) -> InvocationState:
        """The state of ``run`` from the news fetched so far, at wall-clock time ``now``."""

    def _stop(self, run: RunT) -> str:
        """Stop ``run`` beyond its abort key, where the platform can; a note if that failed."""
        return ""

    def _shutdown(self) -> None:
        """Free what the platform holds besides its storage connections (on close)."""

    # --- for start() ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise FuncPipeError(f"this {type(self).__name__} is closed; create a new one")

    @staticmethod
    def _read_package(spec: FunctionSpec, payload: bytes) -> JobPackage:
        """The job of a function package's JSON, or ConfigError saying the payload is none."""
        try:
            package = json.loads(payload)
            return JobPackage(
                package,
                control.ControlKeys.of(package),
                package["storage_url"],
                package["job_id"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise not_a_package(spec, exc) from exc

    def _storage(self, url: str, job_id: str) -> Storage:
        """The job's storage, one connection per job for all its functions."""
        with self._lock:
            if (url, job_id) not in self._stores:
                self._stores[(url, job_id)] = control.job_storage(url, job_id)
            return self._stores[(url, job_id)][1]

    def _add(self, run: RunT) -> None:
        with self._lock:
            self._runs[run.inv.id] = run

    def _overdue(self, run: RunT, now: float, since: float | None = None) -> bool:
        """Whether ``run`` has gone past its timeout and the grace since ``since`` (its start)."""
        begun = run.started_at if since is None else since
        return now - begun > run.inv.spec.timeout_s + self.timeout_grace_s

    # --- Platform API --------------------------------------------------------------------------

    def state(self, inv: Invocation) -> InvocationState:
        with self._lock:
            return self._state(self._run(inv))

    def join(self, inv: Invocation, timeout: float) -> InvocationState:
        end = time.monotonic() + max(0.0, timeout)
        while True:
            st = self.state(inv)
            left = end - time.monotonic()
            if st.done or left <= 0:
                return st
            time.sleep(min(self.poll_s, left))

    def cancel(self, inv: Invocation) -> None:
        with self._lock:
            run = self._run(inv)
            if run.final is not None:
                return
            note = ""
            try:
                run.shared.put(run.keys.abort, b"{}")
            except Exception as exc:  # the function still stops at its timeout
                note = f" (its abort key could not be written: {exc})"
            note += self._stop(run)
            run.final = failures.cancelled(inv.spec, note)

    def close(self) -> None:
        """Abort every function still running and close the storage connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for run in self._runs.values():
                if run.final is None:
                    self.cancel(run.inv)
            self._shutdown()
            for root, _ in self._stores.values():
                root.close()
            self._stores.clear()

    def invocations(self) -> list[Invocation]:
        """All invocations started on this platform, in start order."""
        with self._lock:
            return [r.inv for r in self._runs.values()]

    # --- internals -----------------------------------------------------------------------------

    def _run(self, inv: Invocation) -> RunT:
        run = self._runs.get(inv.id)
        if run is None or run.inv != inv:
            raise ConfigError(
                f"invocation {inv.id} of function {inv.name!r} was not started by this platform"
            )
        return run

    def _state(self, run: RunT) -> InvocationState:
        """Poll when ``poll_s`` has passed, then classify; a final state sticks."""
        if run.final is not None:
            return run.final
        now = time.time()
        if now - run.polled_at >= self.poll_s:
            run.polled_at = now
            self._poll(run)
        state = self._classify(run, now)
        if state.done:
            run.final = state
        return state


def not_a_package(spec: FunctionSpec, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"function {spec.name!r}: the payload is not a FuncPipe function package ({exc})"
    )
