"""A function's pulse: it proves it is alive to the client, and checks that the client is.

A daemon thread in every function rewrites ``heartbeat/s<s>r<r>`` (inside the function's
generation) every ``period_s`` with a counter, the step and the current activity. A function that
is frozen (SIGSTOP, a lost host) stops beating and the client names it within its deadline.

The same thread reads the client's manifest (rewritten by the client every ``period_s``). When it
stays unchanged or missing for ``client_deadline_s``, the client is gone (killed, host lost, out of
network): nobody will feed data or read results, so the function exits at once instead of idling
until its time limit. Both sides compare only *changes* on their own clocks, never timestamps
across machines, so clock skew does not matter.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable

from funcpipe.errors import KeyNotFound
from funcpipe.runtime import activity as platform_base
from funcpipe.storage.base import Storage

__all__ = ["CLIENT_GONE_EXIT", "FunctionHeartbeat", "function_key"]

#: Exit status of a function that stopped because its client was gone.
CLIENT_GONE_EXIT = 75


def function_key(stage: int, replica: int) -> str:
    """Heartbeat key of one function, inside its generation's namespace."""
    return f"heartbeat/s{stage}r{replica}"


class FunctionHeartbeat:
    """Beats for one function and watches its client; ``close()`` stops the thread.

    ``own`` is the generation's storage (heartbeats), ``job`` the job's (the client's manifest).
    ``on_client_gone`` defaults to printing why and ``os._exit``: the function holds nothing worth
    saving that its last checkpoint does not already have.
    """

    def __init__(
        self,
        own: Storage,
        job: Storage,
        *,
        stage: int,
        replica: int,
        period_s: float,
        client_key: str | None,
        client_deadline_s: float,
        on_client_gone: Callable[[str], None] | None = None,
    ) -> None:
        self.own, self.job = own, job
        self.key = function_key(stage, replica)
        self.period_s = period_s
        self.client_key = client_key
        self.client_deadline_s = client_deadline_s
        self.on_client_gone = on_client_gone or _exit_client_gone
        self.step: int | None = None
        self.activity: str | None = None
        self.requests = 0  # puts + gets this thread made, for the function's bill
        self._seq = 0
        self._stop = threading.Event()
        self._client_seen: bytes | None = None
        self._client_changed = time.monotonic()
        self._sink = platform_base._activity_sink
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> FunctionHeartbeat:
        # Remember every activity label too, chaining to the platform's own sink.
        platform_base._install_activity_sink(self._note_activity)
        self.beat()
        self._thread.start()
        return self

    def _note_activity(self, label: str) -> None:
        self.activity = label
        if self._sink is not None:
            self._sink(label)

    def beat(self) -> None:
        self._seq += 1
        record = {
            "seq": self._seq,
            "step": self.step,
            "activity": self.activity,
            "pid": os.getpid(),
        }
        self.own.put(self.key, json.dumps(record).encode())
        self.requests += 1

    def _check_client(self) -> None:
        if self.client_key is None:
            return
        try:
            seen: bytes | None = self.job.get(self.client_key)
        except KeyNotFound:
            seen = None
        self.requests += 1
        now = time.monotonic()
        if seen != self._client_seen:
            self._client_seen = seen
            self._client_changed = now
        elif now - self._client_changed > self.client_deadline_s:
            state = "missing" if seen is None else "unchanged"
            self.on_client_gone(
                f"the client's heartbeat has been {state} for "
                f"{now - self._client_changed:.1f} s (deadline {self.client_deadline_s:g} s): "
                "the client is gone, so this function stops"
            )
            self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
                self._check_client()
            except Exception:  # noqa: BLE001 - a missed beat is what the deadline is for
                continue

    def close(self) -> None:
        self._stop.set()
        platform_base._install_activity_sink(self._sink)


def _exit_client_gone(why: str) -> None:
    print(f"funcpipe function: {why}", file=sys.stderr, flush=True)
    os._exit(CLIENT_GONE_EXIT)
