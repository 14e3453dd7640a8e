"""A function's link to storage, as :class:`~funcpipe.storage.throttle.ThrottledStorage` serves it.

Per function, one byte stream per direction at the platform's rate (through a token bucket where
the platform's link has a burst, as the emulator's does), shared equally by the requests of that
function in flight (the emulator's bucket serves their slices in turn); an upload becomes
visible once its bytes are across and returns one request latency later; a download is noticed
at the next poll of ``Storage.wait`` (a poll that misses pays the latency too, then the wait
pauses 0.5 ms doubling to ``POLL_MAX_S``), then pays the latency, then its bytes.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

from funcpipe.planning.sim.kernel import _Kernel
from funcpipe.storage.base import POLL_MAX_S

_POLL_MIN_S = 0.0005  # Storage.wait's first pause (storage/base.py)
_REBASE_BYTES = float(1 << 24)  # a busy link's virtual time restarts from 0 past this


class _Store:
    """When each key becomes visible; downloads wait on it."""

    def __init__(self, kernel: _Kernel) -> None:
        self.kernel = kernel
        self.visible: dict[Any, float] = {}
        self.waiters: dict[Any, list[Callable[[float], None]]] = {}

    def publish(self, key: Any, t: float) -> None:
        def fire() -> None:
            self.visible[key] = self.kernel.now
            for cb in self.waiters.pop(key, []):
                cb(self.kernel.now)

        self.kernel.at(t, fire)

    def when_visible(self, key: Any, cb: Callable[[float], None]) -> None:
        if key in self.visible:
            cb(self.visible[key])
        else:
            self.waiters.setdefault(key, []).append(cb)


def _noticed(wait_start: float, visible: float, latency: float) -> float:
    """When ``Storage.wait`` started at ``wait_start`` sees a key that appears at ``visible``.

    Each poll reads the key when it starts; one that misses still pays the request's
    ``latency`` (a GET that finds nothing is a round trip too), then the wait pauses 0.5 ms
    doubling to ``POLL_MAX_S`` before the next poll. So polls come every latency + pause, not
    every pause: on the default 10 ms link a waiting download notices its key 10 ms after it
    appears on average, not 5 ms.
    """
    t, pause = wait_start, _POLL_MIN_S
    while t < visible and pause < POLL_MAX_S:  # the doubling pauses
        t += latency + pause
        pause = min(pause * 2, POLL_MAX_S)
    if t < visible:  # then one poll every latency + POLL_MAX_S: jump to the first one after it
        cycle = latency + POLL_MAX_S
        t += math.ceil((visible - t) / cycle - 1e-12) * cycle
    return t


class _Link:
    """One direction of a function's link, as ThrottledStorage's token bucket serves it: the
    requests in flight share the rate equally (the bucket lets their slices through in turn),
    and a request that finds the link idle first gets what the bucket saved up meanwhile
    (``burst`` bytes at most) across at once.

    Equal shares make this processor sharing, kept in virtual time: ``virtual`` is the bytes
    each request in flight has received so far (it grows at ``rate / len(flows)``), a request
    started at ``virtual = v`` with ``n`` bytes to go ends when ``virtual`` reaches ``v + n``,
    and a heap orders the requests by that end. An event costs O(log flows), and only the
    earliest end is ever scheduled with the kernel.
    """

    def __init__(self, kernel: _Kernel, rate: float, burst: float = 0.0) -> None:
        self.kernel, self.rate, self.burst = kernel, rate, burst
        self.tokens, self.idle_since = burst, 0.0
        self.virtual = 0.0  # bytes each request in flight has received (since any began)
        self.flows: list[tuple[float, int, Callable[[float], None]]] = []  # (end, id, done)
        self.last = 0.0  # when ``virtual`` was last brought up to date
        self.version = 0  # bumped whenever the scheduled end is no longer the earliest
        self._ids = itertools.count()

    def send(self, nbytes: float, done: Callable[[float], None]) -> None:
        """Start ``nbytes`` across now; ``done(t)`` once they are."""
        now = self.kernel.now
        self._advance()
        if not self.flows:
            self.tokens = min(self.burst, self.tokens + (now - self.idle_since) * self.rate)
        free = min(self.tokens, nbytes)
        self.tokens -= free
        if nbytes - free <= 1e-9:
            self.kernel.at(now, lambda: done(now))
            if not self.flows:
                self.idle_since = now
            return
        heapq.heappush(self.flows, (self.virtual + nbytes - free, next(self._ids), done))
        self._reschedule()

    def _advance(self) -> None:
        now = self.kernel.now
        if self.flows:
            self.virtual += self.rate / len(self.flows) * (now - self.last)
        self.last = now

    def _reschedule(self) -> None:
        self.version += 1
        version = self.version
        left = self.flows[0][0] - self.virtual
        when = self.kernel.now + max(left, 0.0) * len(self.flows) / self.rate

        def finish() -> None:
            if version != self.version:
                return
            self._advance()
            # The earliest request ends now: its end becomes the virtual time exactly (so a
            # remainder below the clock's resolution cannot keep it in flight), and every
            # request within a micro-byte of it ends with it, in the order they began.
            self.virtual = max(self.virtual, self.flows[0][0])
            ended = []
            while self.flows and self.flows[0][0] - self.virtual <= 1e-6:
                ended.append(heapq.heappop(self.flows))
            now = self.kernel.now
            for _end, _id, done in sorted(ended, key=lambda flow: flow[1]):
                done(now)
            if self.flows:
                if self.virtual > _REBASE_BYTES:
                    self._rebase()
                self._reschedule()
            else:
                self.idle_since = now
                self.virtual = 0.0  # idle: start counting afresh (keeps ``virtual`` precise)
                self.version += 1

        self.kernel.at(when, finish)

    def _rebase(self) -> None:
        """Count ``virtual`` from zero again, so that it stays small next to a request's bytes
        (its rounding decides which requests end together); rare, so O(flows) is fine."""
        base = self.virtual
        self.flows = [(end - base, fid, done) for end, fid, done in self.flows]
        heapq.heapify(self.flows)
        self.virtual = 0.0
