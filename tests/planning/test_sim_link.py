"""The simulated link against a plain reference: every request in flight recomputed each event."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest

from funcpipe.planning.sim.kernel import _Kernel
from funcpipe.planning.sim.link import _Link


class _ReferenceLink:
    """The link as first written: on every event each request's bytes left are brought up to
    date and the earliest end rescheduled (O(requests) an event). A request whose remainder is
    below the clock's resolution ends at once (without that, one never ended)."""

    def __init__(self, kernel: _Kernel, rate: float, burst: float = 0.0) -> None:
        self.kernel, self.rate, self.burst = kernel, rate, burst
        self.tokens, self.idle_since = burst, 0.0
        self.flows: dict[int, list[Any]] = {}
        self.last = 0.0
        self.version = 0
        self._ids = itertools.count()

    def send(self, nbytes: float, done: Callable[[float], None]) -> None:
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
        self.flows[next(self._ids)] = [nbytes - free, done]
        self._reschedule()

    def _advance(self) -> None:
        now = self.kernel.now
        if self.flows:
            each = self.rate / len(self.flows) * (now - self.last)
            for flow in self.flows.values():
                flow[0] -= each
        self.last = now

    def _reschedule(self) -> None:
        self.version += 1
        version = self.version
        least = min(flow[0] for flow in self.flows.values())
        when = self.kernel.now + max(least, 0.0) * len(self.flows) / self.rate

        def finish() -> None:
            if version != self.version:
                return
            self._advance()
            now = self.kernel.now
            n = len(self.flows)
            for fid in [
                f
                for f, flow in self.flows.items()
                if flow[0] <= 1e-6 or now + flow[0] * n / self.rate == now
            ]:
                self.flows.pop(fid)[1](now)
            if self.flows:
                self._reschedule()
            else:
                self.idle_since = now
                self.version += 1

        self.kernel.at(when, finish)


def _ends(link_type: type, requests: list[tuple[float, float]], rate: float, burst: float):
    kernel = _Kernel()
    link = link_type(kernel, rate, burst)
    ends: dict[int, float] = {}
    for i, (start, nbytes) in enumerate(requests):
        kernel.at(start, lambda i=i, n=nbytes: link.send(n, lambda t: ends.setdefault(i, t)))
    kernel.run()
    return [ends[i] for i in range(len(requests))]


@pytest.mark.parametrize("seed", range(40))
def test_the_link_ends_requests_when_the_reference_does(seed: int) -> None:
    """Random requests (some at one instant, some of one size, some empty, bursts or none,
    long runs that make the clock coarse) end at the reference's times."""
    rng = random.Random(seed)
    rate = rng.choice([1e6, 7e7, 3.3e8])
    burst = rng.choice([0.0, rate * 0.05])
    t = rng.choice([0.0, 2000.0])  # far from 0 the clock's resolution is coarse
    requests = []
    for _ in range(rng.randint(1, 60)):
        t += rng.choice([0.0, 0.0, rng.expovariate(200.0), rng.expovariate(5.0)])
        size = rng.choice([0.0, 90.0, 1e6, 4e6, rng.uniform(1, 5e6)])
        requests.append((t, size))
    got = _ends(_Link, requests, rate, burst)
    want = _ends(_ReferenceLink, requests, rate, burst)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-9)


def test_hand_computed_shares() -> None:
    """Three requests at 1 MB/s: 1 MB at 0, 1 MB at 0.5 s, 0.1 MB at 1 s."""
    ends = _ends(_Link, [(0.0, 1e6), (0.5, 1e6), (1.0, 1e5)], 1e6, 0.0)
    # 0..0.5: a alone (0.5 MB); 0.5..1: a and b (0.25 MB each); then three share it: c's
    # 0.1 MB takes 0.3 s (ends at 1.3); a's last 0.15 MB at half the rate (1.6); b's last 0.5 MB
    # alone (2.1)
    assert ends == pytest.approx([1.6, 2.1, 1.3])


def test_a_request_far_from_time_zero_ends() -> None:
    """At t = 2087 s a remainder of a few micro-bytes is below the clock's resolution; the
    link still ends the request (a model that waited for it to drain never did)."""
    ends = _ends(_Link, [(2087.258217755154, 3145848.0), (2087.2582241837254, 450.0)], 7e7, 0.0)
    assert ends[1] > 2087.2582241837254 and ends[0] > ends[1]


def test_many_requests_in_flight_cost_little_per_event() -> None:
    """Ten thousand requests in flight on one link: ends in increasing order of size."""
    sizes = [float(1000 + i) for i in range(10_000)]
    ends = _ends(_Link, [(0.0, s) for s in sizes], 1e9, 0.0)
    assert ends == sorted(ends)
    assert ends[-1] == pytest.approx(sum(sizes) / 1e9)
