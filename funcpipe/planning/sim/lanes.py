"""A simulated function's link, lanes and requests: what each upload and download costs it.

An upload spends its end's share of the transfer's CPU (encoding), crosses the function's up
link, becomes visible, and returns one request latency later; a download waits until its key is
noticed (``_noticed``), pays the latency, crosses the down link, then spends its CPU (decoding).
Lanes are FIFO queues served by a fixed number of threads, as the runtime's are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from funcpipe.planning.platforms import LinkProfile
from funcpipe.planning.sim.cpu import _Quota
from funcpipe.planning.sim.kernel import _Event
from funcpipe.planning.sim.link import _Link, _noticed
from funcpipe.runtime.schedule import WorkerId

if TYPE_CHECKING:
    from funcpipe.planning.sim.replay import _Sim


@dataclass
class _Counts:
    puts: float = 0
    gets: float = 0
    lists: float = 0
    deletes: float = 0


class _Pool:
    """A FIFO queue served by ``workers`` threads, each running one request at a time."""

    def __init__(self, fn: _Function, lane: str, workers: int) -> None:
        self.fn, self.lane, self.idle = fn, lane, workers
        self.queue: deque[tuple[Callable[[Callable[[], None]], None], _Event]] = deque()

    def submit(self, task: Callable[[Callable[[], None]], None]) -> _Event:
        ev = _Event()
        self.queue.append((task, ev))
        self._dispatch()
        return ev

    def _dispatch(self) -> None:
        while self.idle and self.queue:
            task, ev = self.queue.popleft()
            self.idle -= 1

            def finish(ev: _Event = ev) -> None:
                self.idle += 1
                self.fn.kernel.trigger(ev, self.fn.kernel.now)
                self._dispatch()

            task(finish)


class _Function:
    """A function's link, lanes and request counters."""

    def __init__(self, sim: _Sim, worker: WorkerId, link: LinkProfile) -> None:
        self.sim, self.kernel, self.worker = sim, sim.kernel, worker
        self.up = _Link(self.kernel, link.up_bytes_s, link.up_burst_bytes)
        self.down = _Link(self.kernel, link.down_bytes_s, link.down_burst_bytes)
        self.lanes = {
            lane: _Pool(self, lane.value, width) for lane, width in sim.widths.items() if width
        }
        self.counts = _Counts()
        # CPU quota (where the platform has one)
        self.quota: _Quota | None = None
        if sim.quota_period:
            stage = worker.stage
            self.quota = _Quota(self.kernel, sim.cpus[stage], sim.demand[stage], sim.quota_period)
        self.busy: list[tuple[float, float]] = []  # intervals with bytes or latency in flight
        # Transfers made while this function computes slow that compute down (the profile's
        # lane_overhead_s each): seconds owed, paid when the compute action ends.
        self.computing = False
        self.lane_debt = 0.0

    def cpu_then(self, nbytes: float, then: Callable[[], None]) -> None:
        """Spend one end's share of a transfer's CPU cost on this function's CPU, then ``then``."""
        work = self.sim.profile_transfer_s(nbytes) / 2
        overlapped = self.computing

        def ended() -> None:
            # one end of a transfer that overlapped compute (when its CPU work began or ended):
            # half the measured round trip's overhead
            if overlapped or self.computing:
                self.lane_debt += getattr(self.sim.profile, "lane_overhead_s", 0.0) / 2
            then()

        if work <= 0:
            ended()
            return
        share = min(1.0, self.sim.cpus[self.worker.stage])
        if self.quota is not None:
            self.quota.charge(work)
        ev = self.sim.cpu.run(work / share, share, share)
        ev.callbacks.append(lambda _t: ended())

    def upload_task(
        self, key: Any, nbytes: float, span: str | None = None, step: int = 0
    ) -> Callable[[Callable[[], None]], None]:
        def run(finish: Callable[[], None]) -> None:
            t0 = self.kernel.now

            def crossed(t: float) -> None:
                self.sim.store.publish(key, t)
                end = t + self.sim.latency
                self.counts.puts += 1
                self.busy.append((t0, end))

                def done() -> None:
                    if span:
                        self.sim.record(self.worker, step, span, "upload", t0, end)
                    finish()

                self.kernel.at(end, done)

            self.cpu_then(nbytes, lambda: self.up.send(nbytes, crossed))  # encode and write

        return run

    def download_task(
        self, key: Any, nbytes: float, *, delete: bool, span: str | None = None, step: int = 0
    ) -> Callable[[Callable[[], None]], None]:
        def run(finish: Callable[[], None]) -> None:
            t0 = self.kernel.now

            polling = [False]

            def seen(visible: float) -> None:
                noticed = _noticed(t0, visible, self.sim.latency)
                if polling[0]:
                    self.kernel.at(noticed, lambda: self.sim.cpu.poll(-1))
                self.counts.gets += 1
                self.counts.deletes += int(delete)

                def done() -> None:
                    if span:
                        self.sim.record(self.worker, step, span, "download", t0, self.kernel.now)
                    finish()

                def crossed(end: float) -> None:
                    self.busy.append((noticed, end))
                    self.cpu_then(nbytes, done)  # read and decode

                self.kernel.at(noticed + self.sim.latency, lambda: self.down.send(nbytes, crossed))

            if key not in self.sim.store.visible:
                polling[0] = True
                self.sim.cpu.poll(+1)
            self.sim.store.when_visible(key, seen)

        return run

    def direct(self, task: Callable[[Callable[[], None]], None]) -> _Event:
        """Run a request on the calling thread (not a lane): an event for when it returns."""
        ev = _Event()
        task(lambda: self.kernel.trigger(ev, self.kernel.now))
        return ev
