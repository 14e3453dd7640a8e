"""Compute on a function's CPU: the host's cores shared among busy functions, and CPU quotas.

On a platform whose functions share one host (``host_cores``, the local emulator) busy functions
split the cores max-min fairly, each capped at its share: a function whose demand cannot be met
runs proportionally slower. Under a CPU quota per period (the emulator's CFS bandwidth control) a
function's threads run at full speed while its quota lasts, then at its share's rate (the quota
as a bucket refilled at that rate, the average of the kernel's per-period throttling over a
period's phases).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Generator
from typing import Any

from funcpipe.planning.sim.kernel import _Event, _Kernel


class _Cpu:
    """Compute jobs progress at full speed unless the host's cores are oversubscribed; then the
    cores are shared max-min fairly among busy functions, each capped at its own demand.

    Without a shared host (``cores=None``: every function on its own machine) a job's end is
    known when it starts, so such jobs wait in a heap by end: O(log jobs) an event, however
    many functions compute at once. On a shared host every event rates every job (jobs are
    the few functions of one host).
    """

    def __init__(self, kernel: _Kernel, cores: float | None, background: float = 0.0) -> None:
        self.kernel, self.cores, self.background = kernel, cores, background
        self.pollers = 0  # downloads waiting for a key: each polls every latency + POLL_MAX_S
        self.poll_cores = 0.0  # CPU one poller uses (cores)
        self.jobs: dict[int, list[Any]] = {}  # id -> [remaining work, demand, event, rate]
        self.last = 0.0
        self.version = 0
        self._ids = itertools.count()
        self._ends: list[tuple[float, int, _Event]] = []  # cores=None: (end, id, event)

    def run(self, work: float, demand: float, one_core: float | None = None) -> _Event:
        """Run ``work`` seconds (at full speed) needing ``demand`` cores; ``one_core`` is the
        time on exactly one core / ``work``: how a job given fewer cores than it wants slows."""
        ev = _Event()
        if work <= 0:
            self.kernel.trigger(ev, self.kernel.now)
            return ev
        if self.cores is None:
            heapq.heappush(self._ends, (self.kernel.now + work, next(self._ids), ev))
            self._next_end()
            return ev
        self._advance()
        one_core = min(demand, 1.0) if one_core is None else one_core
        self.jobs[next(self._ids)] = [work, demand, ev, 1.0, one_core]
        self._reschedule()
        return ev

    def _next_end(self) -> None:
        """Schedule the earliest end of the jobs without a shared host (again on each new job,
        as the shared host's jobs are, so events at one instant keep their order)."""
        self.version += 1
        version = self.version
        end, _id, ev = self._ends[0]

        def finish() -> None:
            if version != self.version:
                return
            heapq.heappop(self._ends)
            self.kernel.trigger(ev, self.kernel.now)
            if self._ends:
                self._next_end()
            else:
                self.version += 1

        self.kernel.at(end, finish)

    def poll(self, delta: int) -> None:
        """A download starts (+1) or stops (-1) polling for its key."""
        if self.cores is None or not self.poll_cores:
            return
        self._advance()
        self.pollers += delta
        if self.jobs:
            self._reschedule()

    def _advance(self) -> None:
        dt = self.kernel.now - self.last
        for job in self.jobs.values():
            job[0] -= job[3] * dt
        self.last = self.kernel.now

    def _rates(self) -> None:
        jobs = list(self.jobs.values())
        polling = self.pollers * self.poll_cores
        if self.cores is None or sum(j[1] for j in jobs) + self.background + polling <= (
            self.cores + 1e-9
        ):
            for j in jobs:
                j[3] = 1.0
            return
        # max-min fair: other programs' busy threads are claimants of one core each
        whole, part = divmod(self.background, 1.0)
        claims = [(j[1], j) for j in jobs] + [(1.0, None)] * int(whole)
        if part > 1e-9:
            claims.append((part, None))
        claims += [(self.poll_cores, None)] * self.pollers
        claims.sort(key=lambda c: c[0])
        left = float(self.cores)
        for i, (demand, job) in enumerate(claims):
            got = min(demand, left / (len(claims) - i))
            left -= got
            if job is not None:
                job[3] = self._speed(job, got)

    @staticmethod
    def _speed(job: list[Any], cores: float) -> float:
        """Progress rate of ``job`` on ``cores`` < its demand: below one core it runs like one
        thread at that fraction (t1 / cores); between one core and its demand, linearly towards
        full speed."""
        demand, one_core = job[1], job[4]
        if cores >= demand:
            return 1.0
        if cores <= 1.0:
            return cores / one_core
        return 1 / one_core + (1 - 1 / one_core) * (cores - 1) / (demand - 1)

    def _reschedule(self) -> None:
        self._rates()
        self.version += 1
        version = self.version
        jid, job = min(self.jobs.items(), key=lambda kv: kv[1][0] / kv[1][3])
        when = self.kernel.now + max(job[0], 0.0) / job[3]

        def finish() -> None:
            if version != self.version:
                return
            self._advance()
            done = self.jobs.pop(jid)
            self.kernel.trigger(done[2], self.kernel.now)
            if self.jobs:
                self._reschedule()
            else:
                self.version += 1

        self.kernel.at(when, finish)


class _Quota:
    """A function's CPU quota (CFS bandwidth control) as a bucket of CPU-seconds, full at the
    start and refilled at the share's rate."""

    def __init__(self, kernel: _Kernel, share: float, demand: float, period: float) -> None:
        self.kernel, self.share, self.demand, self.period = kernel, share, demand, period
        self.left = self.cap()
        self.at = 0.0  # when ``left`` was last brought up to date

    def cap(self) -> float:
        """The bucket's depth: a function coming out of a wait gets at most one period's quota
        (share x period) at full speed before the quota's rate applies, as in a fresh CFS
        period; ``demand`` threads drain it at ``demand - share`` while it refills."""
        share, demand = self.share, self.demand
        return share * self.period * max(0.0, demand - share) / demand

    def refill(self, *, capped: bool = True) -> float:
        """Bring the quota up to now (it refills at the share's rate); the CPU-s left.
        ``capped=False`` right after a compute chunk: what it spent is taken off before the
        bucket's depth applies."""
        self.left += self.share * (self.kernel.now - self.at)
        if capped:
            self.left = min(self.left, self.cap())
        self.at = self.kernel.now
        return self.left

    def spend(self, cpu_s: float) -> None:
        """Take ``cpu_s`` a compute chunk spent off the quota (refilled over the chunk)."""
        self.refill(capped=False)
        self.left = min(self.left - cpu_s, self.cap())

    def charge(self, cpu_s: float) -> None:
        """Spend ``cpu_s`` on a transfer thread: the quota throttles the function's cgroup as a
        whole, so its transfer threads leave that much less for its compute."""
        self.left -= cpu_s


def run_compute(
    cpu: _Cpu,
    quota: _Quota | None,
    share: float,
    demand: float,
    work: Callable[[float | None], float],
) -> Generator[Any, None, None]:
    """Compute an action on a function's CPU ``share``, sharing the host's cores with others;
    ``work(cpus)`` is its seconds at ``cpus`` cores (None: the share).

    Without a quota a share below the thread count slows the work down uniformly. With one
    (CFS bandwidth control), the function's threads run at full speed while its quota lasts and
    at the share's rate once it is spent; the quota is a bucket refilled at the share's rate,
    deep enough for one period's quota (share x period CPU-seconds) at full speed (see
    ``_Quota.cap``). A function that mostly waits for transfers therefore computes at full
    speed. (The kernel's quota is per period, so a function is really throttled until the
    period ends; a run's steps do not keep in phase with its periods, and the bucket is that
    behaviour on average: modelled per period, a plan's predicted time jumped by a period when
    its compute grew by a few percent.)
    """
    if quota is None or demand < share:
        solo = work(None)
        one = work(1.0) if solo > 0 else 0.0
        yield cpu.run(solo, min(demand, share), one / solo if solo > 0 else 1.0)
        return
    full = work(demand)  # seconds with its threads unthrottled
    one = work(1.0) / full if full > 0 else 1.0
    left = full
    while left > 1e-12:
        level = quota.refill()
        if level < -1e-12:  # transfer threads overdrew it: wait until it is paid back
            yield -level / share
            continue
        if level > 1e-12:  # full speed until the bucket is empty (it refills meanwhile)
            chunk = min(left, level / (demand - share))
            yield cpu.run(chunk, demand, one)
            quota.spend(chunk * demand)
            left -= chunk
            continue
        # empty: the rest runs at the share's rate, as without a period
        solo = work(None) * left / full
        t1 = work(1.0) * left / full
        yield cpu.run(solo, share, t1 / solo if solo > 0 else 1.0)
        quota.spend(solo * share)
        left = 0.0
