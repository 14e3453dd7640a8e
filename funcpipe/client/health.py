"""Health of a generation's functions: the platform's word on each, and their heartbeats.

A function that crashes, is killed, is lost by the platform, exceeds its time limit or stops
beating for ``heartbeat_deadline_s`` is named in a :class:`Lost`, which says whether a relaunch
from the last checkpoint can cure it. A function whose own code raised, or that ran out of memory,
cannot be cured so: a relaunch would fail the same way.
"""

from __future__ import annotations

import contextlib
import json
import time

from funcpipe.client.generations import Generation
from funcpipe.errors import FunctionFailed, KeyNotFound, MemoryExceeded
from funcpipe.planning.plan import Plan
from funcpipe.platforms.base import InvocationState, Platform, Status
from funcpipe.runtime.heartbeat import function_key
from funcpipe.runtime.schedule import WorkerId
from funcpipe.storage.base import Storage

__all__ = ["POLL_S", "Health", "Lost", "failure"]

POLL_S = 0.05  # the client is not on the critical path: data is fed two steps ahead


class Lost(Exception):
    """A function of the current generation is gone or stuck; the job can roll back."""

    def __init__(
        self,
        worker: WorkerId | None,
        reason: str,
        message: str,
        *,
        recoverable: bool = True,
        detect_s: float | None = None,
        error: FunctionFailed | None = None,
    ) -> None:
        super().__init__(message)
        self.worker, self.reason, self.message = worker, reason, message
        self.recoverable, self.detect_s, self.error = recoverable, detect_s, error


def failure(worker: WorkerId, state: InvocationState, plan: Plan) -> Lost:
    """What the platform's report of a failed function means for the job."""
    s = worker.stage
    stage = plan.stages[s]
    where = f"function '{worker}' (stage {s}, replica {worker.replica})"
    if state.reason == "memory":
        err: FunctionFailed = MemoryExceeded(
            f"{where}: {state.message}\nfix: it needs more than {stage.memory_mb} MB; raise "
            f"stages[{s}].memory_mb, or shrink its share of the work (more micro-batches, "
            "fewer layers in the stage)",
            function=str(worker),
            reason="memory",
        )
        return Lost(worker, "memory", str(err), recoverable=False, error=err)
    message = f"{where} failed ({state.reason}): {state.message}"
    # an error a relaunch can cure (storage or network trouble) is marked so by the platform,
    # where the function saw the exception; any other error is its code's own and would recur
    recoverable = state.reason in ("crash", "timeout", "cancelled", "lost") or (
        state.reason == "error" and state.transient
    )
    err = FunctionFailed(message, function=str(worker), reason=state.reason)
    return Lost(worker, state.reason or "error", message, recoverable=recoverable, error=err)


class Health:
    """Checks one generation at a time; ``check`` raises :class:`Lost` for the first bad one."""

    def __init__(
        self,
        *,
        platform: Platform,
        plan: Plan,
        heartbeat_s: float,
        heartbeat_deadline_s: float,
        startup_deadline_s: float,
    ) -> None:
        self.platform, self.plan = platform, plan
        self.heartbeat_s, self.heartbeat_deadline_s = heartbeat_s, heartbeat_deadline_s
        self.startup_deadline_s = startup_deadline_s

    def check(self, gen: Generation, store: Storage) -> None:
        """Raise Lost for the first function of ``gen`` (namespace ``store``) failed or hung."""
        for worker, inv in gen.invocations.items():
            state = self.platform.state(inv)
            if state.status in (Status.FAILED, Status.CANCELLED):
                raise failure(worker, state, self.plan)
        self._check_heartbeats(gen, store)

    def _check_heartbeats(self, gen: Generation, store: Storage) -> None:
        now = time.monotonic()
        for worker, w in gen.watch.items():
            if now - w.changed < self.heartbeat_s and w.seen is not None:
                continue  # read each heartbeat at most once per period
            try:
                data: bytes | None = store.get(function_key(*worker))
            except KeyNotFound:
                data = None
            if data is not None and data != w.seen:
                w.seen, w.changed = data, now
                with contextlib.suppress(ValueError):
                    beat = json.loads(data)
                    w.activity, w.started = beat.get("activity"), beat.get("step") is not None
                continue
            # Until its first step, a function is starting (imports, loading weights): it may
            # beat irregularly, and the platform reports a crash at once anyway.
            deadline = self.heartbeat_deadline_s if w.started else self.startup_deadline_s
            if now - w.changed > deadline:
                state = self.platform.state(gen.invocations[worker])
                if state.done:
                    continue  # ended: the platform's state tells how
                silent = now - w.changed
                # Its heartbeat's label, or the platform's where no beat carried one yet.
                activity = w.activity or state.activity
                last = f"; last activity: {activity}" if activity else ""
                what = "no heartbeat" if w.seen is not None else "no first heartbeat"
                message = (
                    f"function '{worker}' (stage {worker.stage}, replica {worker.replica}) "
                    f"hangs: {what} for {silent:.1f} s (deadline {deadline:g} s){last}"
                )
                raise Lost(worker, "hang", message, detect_s=silent)
