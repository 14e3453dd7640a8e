"""Discrete-event simulation of a plan: the runtime's own action lists, replayed against a model
of the platform.

What is replayed is exactly what runs: ``build_schedule(plan)`` gives every function's list, and
each function walks it by the rules of :mod:`funcpipe.runtime.schedule` (transfers queue on a FIFO
upload or download lane, a compute action waits for :func:`~funcpipe.runtime.schedule.local_deps`,
a download completes after its upload). The parts are modelled after the runtime's code:

* **link** (:class:`~funcpipe.storage.throttle.ThrottledStorage`): per function, one byte stream
  per direction at the platform's rate (through a token bucket where the platform's link has a
  burst, as the emulator's does), shared equally by the requests of that function in flight
  (the emulator's bucket serves their slices in turn); an upload becomes visible once its
  bytes are across and returns one request latency later; a download is noticed at the next
  poll of ``Storage.wait`` (a poll that misses pays the latency too, then the wait pauses
  0.5 ms doubling to ``POLL_MAX_S``), then pays the latency, then its bytes.
* **compute**: forward/backward/optimizer step times from the :class:`Profile` at the CPU share of
  the stage's memory. On a platform whose functions share one host (``host_cores``, the local
  emulator) busy functions split the cores max-min fairly, each capped at its share: a function
  whose demand cannot be met runs proportionally slower. Under a CPU quota per period (the
  emulator's CFS bandwidth control) a function's threads run at full speed while its quota
  lasts, then at its share's rate (the quota as a bucket refilled at that rate, the average
  of the kernel's per-period throttling over a period's phases).
* **gradient sync**: the all-reduce of :mod:`funcpipe.runtime.collectives` as the runtime calls it
  (pipelined: sub-chunks of about ``TARGET_PIECE_BYTES`` with ``IN_FLIGHT`` requests per
  direction, reduced pieces published as soon as they are ready; naive: one phase after
  another), with its cleanup (done flags, replica 0 deleting the merged pieces).
* **client**: data is fed two steps ahead, so a step's inputs and targets are in storage when it
  starts; the client's requests (feeding, polling reports) are counted for the cost.
* **between steps**: each function writes its report (one PUT through its link), then starts the
  next step at once; steps overlap across functions exactly as they do at run time.

Several steps are simulated back to back; ``time_s`` is the steady-state period (end of the last
step minus end of the first, divided by the steps in between), the figure a measured run's
``(end[last] - end[0]) / (steps - 1)`` gives.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from funcpipe.errors import ConfigError, ScheduleError
from funcpipe.planning.memory import micro_batches_held, stage_memory_mb
from funcpipe.planning.plan import Plan
from funcpipe.planning.platforms import LinkProfile, PlatformProfile, get_platform
from funcpipe.planning.profile import Profile, threads_for
from funcpipe.runtime.collectives import IN_FLIGHT, default_subchunks, split_sizes
from funcpipe.runtime.schedule import (
    CLIENT,
    Action,
    Lane,
    Op,
    WorkerId,
    build_schedule,
    channel,
    local_deps,
)
from funcpipe.storage.base import POLL_MAX_S

__all__ = ["FunctionBreakdown", "Prediction", "predict", "simulate"]

_POLL_MIN_S = 0.0005  # Storage.wait's first pause (storage/base.py)
MONITOR_POLL_S = 0.05  # the client's report polling interval (client/train.py _Monitor.POLL_S)
REPORT_BYTES_PER_ACTION = 90  # a report's JSON carries one span per action
SIM_STEPS = 3


# --- a tiny discrete-event kernel --------------------------------------------------------------


class _Event:
    __slots__ = ("callbacks", "time")

    def __init__(self) -> None:
        self.time: float | None = None
        self.callbacks: list[Callable[[float], None]] = []

    @property
    def done(self) -> bool:
        return self.time is not None


class _Kernel:
    """Timed callbacks plus generator processes that ``yield`` events or delays."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn))

    def trigger(self, ev: _Event, t: float) -> None:
        def fire() -> None:
            ev.time = self.now
            for cb in ev.callbacks:
                cb(self.now)
            ev.callbacks.clear()

        self.at(t, fire)

    def event_at(self, t: float) -> _Event:
        ev = _Event()
        self.trigger(ev, t)
        return ev

    def process(self, gen: Generator[Any, None, None]) -> _Event:
        finished = _Event()

        def step(_: float = 0.0) -> None:
            try:
                item = next(gen)
            except StopIteration:
                finished.time = self.now
                for cb in finished.callbacks:
                    cb(self.now)
                finished.callbacks.clear()
                return
            ev = item if isinstance(item, _Event) else self.event_at(self.now + float(item))
            if ev.done:
                self.at(self.now, step)
            else:
                ev.callbacks.append(lambda _t: step())

        self.at(self.now, step)
        return finished

    def run(self) -> None:
        while self._heap:
            t, _, fn = heapq.heappop(self._heap)
            self.now = t
            fn()


def _all(kernel: _Kernel, events: list[_Event]) -> _Event:
    """An event that fires when every one of ``events`` has."""
    out = _Event()
    pending = [e for e in events if not e.done]
    if not pending:
        kernel.trigger(out, kernel.now)
        return out
    count = [len(pending)]

    def one(_t: float) -> None:
        count[0] -= 1
        if count[0] == 0:
            kernel.trigger(out, kernel.now)

    for e in pending:
        e.callbacks.append(one)
    return out


# --- storage, links and lanes --------------------------------------------------------------------


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
    (``burst`` bytes at most) across at once."""

    def __init__(self, kernel: _Kernel, rate: float, burst: float = 0.0) -> None:
        self.kernel, self.rate, self.burst = kernel, rate, burst
        self.tokens, self.idle_since = burst, 0.0
        self.flows: dict[int, list[Any]] = {}  # id -> [bytes left, callback(t)]
        self.last = 0.0
        self.version = 0
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
            for fid in [f for f, flow in self.flows.items() if flow[0] <= 1e-6]:
                self.flows.pop(fid)[1](now)
            if self.flows:
                self._reschedule()
            else:
                self.idle_since = now
                self.version += 1

        self.kernel.at(when, finish)


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
        self.queue: list[tuple[Callable[[Callable[[], None]], None], _Event]] = []

    def submit(self, task: Callable[[Callable[[], None]], None]) -> _Event:
        ev = _Event()
        self.queue.append((task, ev))
        self._dispatch()
        return ev

    def _dispatch(self) -> None:
        while self.idle and self.queue:
            task, ev = self.queue.pop(0)
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
            Lane.UPLOAD: _Pool(self, "upload", 1),
            Lane.DOWNLOAD: _Pool(self, "download", 1),
        }
        self.counts = _Counts()
        # CPU quota (where the platform has one): CPU-seconds in the bucket, full at the start
        self.quota_left = self.quota_cap() if sim.quota_period else 0.0
        self.quota_at = 0.0  # when quota_left was last brought up to date
        self.busy: list[tuple[float, float]] = []  # intervals with bytes or latency in flight
        # Transfers made while this function computes slow that compute down (the profile's
        # lane_overhead_s each): seconds owed, paid when the compute action ends.
        self.computing = False
        self.lane_debt = 0.0

    def quota_cap(self) -> float:
        """The bucket's depth: a function coming out of a wait gets at most one period's quota
        (share x period) at full speed before the quota's rate applies, as in a fresh CFS
        period; ``demand`` threads drain it at ``demand - share`` while it refills."""
        share, demand = self.sim.cpus[self.worker.stage], self.sim.demand[self.worker.stage]
        return share * self.sim.quota_period * max(0.0, demand - share) / demand

    def refill_quota(self, *, capped: bool = True) -> float:
        """Bring the CPU quota up to now (it refills at the share's rate); the CPU-s left.
        ``capped=False`` right after a compute chunk: what it spent is taken off before the
        bucket's depth applies."""
        share = self.sim.cpus[self.worker.stage]
        self.quota_left += share * (self.kernel.now - self.quota_at)
        if capped:
            self.quota_left = min(self.quota_left, self.quota_cap())
        self.quota_at = self.kernel.now
        return self.quota_left

    def spend_quota(self, cpu_s: float) -> None:
        """Take ``cpu_s`` a compute chunk spent off the quota (refilled over the chunk)."""
        self.refill_quota(capped=False)
        self.quota_left = min(self.quota_left - cpu_s, self.quota_cap())

    def charge_quota(self, cpu_s: float) -> None:
        """Spend ``cpu_s`` of the CPU quota on a transfer thread: the quota (CFS bandwidth
        control) throttles the function's cgroup as a whole, so its transfer threads leave that
        much less for its compute."""
        if self.sim.quota_period:
            self.quota_left -= cpu_s

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
        self.charge_quota(work)
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


# --- CPU: busy functions share the host's cores ---------------------------------------------------


class _Cpu:
    """Compute jobs progress at full speed unless the host's cores are oversubscribed; then the
    cores are shared max-min fairly among busy functions, each capped at its own demand."""

    def __init__(self, kernel: _Kernel, cores: float | None, background: float = 0.0) -> None:
        self.kernel, self.cores, self.background = kernel, cores, background
        self.pollers = 0  # downloads waiting for a key: each polls every latency + POLL_MAX_S
        self.poll_cores = 0.0  # CPU one poller uses (cores)
        self.jobs: dict[int, list[Any]] = {}  # id -> [remaining work, demand, event, rate]
        self.last = 0.0
        self.version = 0
        self._ids = itertools.count()

    def run(self, work: float, demand: float, one_core: float | None = None) -> _Event:
        """Run ``work`` seconds (at full speed) needing ``demand`` cores; ``one_core`` is the
        time on exactly one core / ``work``: how a job given fewer cores than it wants slows."""
        ev = _Event()
        if work <= 0:
            self.kernel.trigger(ev, self.kernel.now)
            return ev
        self._advance()
        one_core = min(demand, 1.0) if one_core is None else one_core
        self.jobs[next(self._ids)] = [work, demand, ev, 1.0, one_core]
        self._reschedule()
        return ev

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


# --- the prediction -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionBreakdown:
    """Where one function's steady-state iteration goes (seconds; they sum to the period)."""

    compute_s: float
    communication_s: float  # waiting for its own transfers (bytes or latency in flight)
    sync_s: float  # the gradient all-reduce
    idle_s: float  # waiting for other functions (pipeline fill and drain, data from peers)


@dataclass
class Prediction:
    """What a plan will do on a platform, per steady-state iteration."""

    plan: Plan
    platform: str
    time_s: float
    cost_usd: float
    memory_mb: list[float]  # per stage: what one of its functions needs
    breakdown: dict[str, FunctionBreakdown]
    requests: dict[str, float]
    first_iteration_s: float
    startup_s: float
    cpus: list[float]  # per stage
    micro_batch_sizes: list[int]
    reports: list[list[dict[str, Any]]] = field(default_factory=list, repr=False)

    @property
    def compute_cost_usd(self) -> float:
        return self.cost_usd - self.request_cost_usd

    request_cost_usd: float = 0.0

    def fits(self) -> bool:
        """Whether every stage's memory need fits the memory it is given."""
        return all(m <= s.memory_mb for m, s in zip(self.memory_mb, self.plan.stages, strict=True))

    def trace(self) -> dict[str, Any]:
        """Chrome/Perfetto trace of the simulated steps, in ``funcpipe train --trace``'s format."""
        from funcpipe.client.trace import chrome_trace

        return chrome_trace(self.reports)


class _Sim:
    def __init__(
        self,
        plan: Plan,
        profile: Profile,
        platform: PlatformProfile,
        sizes: list[int],
        *,
        sync_algorithm: str,
        overlap: bool,
        steps: int,
    ) -> None:
        self.plan, self.profile, self.platform = plan, profile, platform
        self.sizes, self.sync_algorithm, self.overlap, self.steps = (
            sizes, sync_algorithm, overlap, steps,
        )  # fmt: skip
        self.kernel = _Kernel()
        self.store = _Store(self.kernel)
        self.latency = platform.link.latency_s
        self.cpu = _Cpu(self.kernel, platform.host_cores, platform.background_tasks)
        self.cpu.poll_cores = getattr(profile, "poll_s", 0.0) / (POLL_MAX_S + self.latency)
        self.schedule = build_schedule(plan)
        self.spans: dict[tuple[WorkerId, int], list[tuple[str, str, float, float]]] = {}
        self.bounds: dict[tuple[WorkerId, int], tuple[float, float]] = {}
        self.compute: dict[tuple[WorkerId, int], float] = {}
        self.sync: dict[tuple[WorkerId, int], float] = {}
        self.cpus = [platform.cpus(s.memory_mb) for s in plan.stages]
        cap = getattr(platform, "max_threads", None)
        self.demand = [float(threads_for(c, cap)) for c in self.cpus]  # threads per function
        self.quota_period = getattr(platform, "cpu_quota_period_s", None)
        self.functions = {
            w: _Function(self, w, platform.link) for w in self.schedule if w != CLIENT
        }
        self._work: dict[tuple[Any, ...], float] = {}

    def profile_transfer_s(self, nbytes: float) -> float:
        cost = getattr(self.profile, "transfer_cpu_s", None)
        return cost(nbytes) if cost is not None else 0.0

    def record(self, w: WorkerId, step: int, label: str, lane: str, t0: float, t1: float) -> None:
        self.spans.setdefault((w, step), []).append((label, lane, t0, t1))

    # --- sizes -----------------------------------------------------------------------------
    def nbytes(self, a: Action) -> float:
        ch = channel(a)
        mb = self.sizes[ch.micro_batch]
        if ch.kind == "input":
            return self.profile.input_bytes(mb)
        if ch.kind == "target":
            return self.profile.target_bytes(mb)
        boundary = (
            self.plan.stages[ch.stage].end - 1
            if ch.kind == "act"
            else (self.plan.stages[ch.stage].start - 1)
        )
        return self.profile.activation_bytes(boundary, mb) + 200  # + safetensors header

    def work(self, a: Action, cpus: float | None = None) -> float:
        """Seconds of compute ``a`` at ``cpus`` cores (default: its stage's share)."""
        cpus = self.cpus[a.stage] if cpus is None else cpus
        mb = None if a.micro_batch is None else self.sizes[a.micro_batch]
        key = (a.op, a.stage, mb, cpus)
        if key not in self._work:
            self._work[key] = self._compute_work(a, cpus)
        return self._work[key]

    def _compute_work(self, a: Action, cpus: float) -> float:
        stage = self.plan.stages[a.stage]
        layers = range(stage.start, stage.end)
        cap = getattr(self.platform, "max_threads", None)
        if a.op is Op.FORWARD:
            mb = self.sizes[a.micro_batch]
            return sum(self.profile.forward_s(i, mb, cpus, cap) for i in layers)
        if a.op is Op.BACKWARD:
            mb = self.sizes[a.micro_batch]
            return sum(self.profile.backward_s(i, mb, cpus, cap) for i in layers)
        if a.op is Op.STEP:
            return sum(self.profile.step_s(i, cpus, cap) for i in layers)
        return 0.0

    def grad_numel(self, s: int) -> int:
        stage = self.plan.stages[s]
        grad = sum(self.profile.grad_bytes(i) for i in range(stage.start, stage.end))
        # flat float32 gradients plus one flag per parameter tensor (unknown: ~1 per 1 KiB)
        return int(grad // 4)

    # --- processes -----------------------------------------------------------------------------
    def function(self, w: WorkerId) -> Generator[Any, None, None]:
        fn = self.functions[w]
        actions = self.schedule[w]
        deps = {a: local_deps(a, actions) for a in actions}
        cpus = self.cpus[w.stage]
        threads = self.demand[w.stage]
        # Under a quota per period the threads run at full speed while quota lasts.
        demand = threads if self.quota_period else min(cpus, threads)
        for step in range(self.steps):
            start = self.kernel.now
            done: dict[Action, _Event] = {}  # an action's event; made early if waited for

            def finished(a: Action, ev: _Event, done: dict[Action, _Event] = done) -> None:
                mine = done.setdefault(a, ev)
                if mine is not ev:
                    ev.callbacks.append(lambda _t, mine=mine: self.kernel.trigger(mine, _t))

            uploads: list[_Event] = []
            compute = sync = 0.0
            for a in actions:
                label = str(a)
                if a.lane is Lane.UPLOAD:
                    ev = fn.lanes[Lane.UPLOAD].submit(
                        fn.upload_task((step, channel(a)), self.nbytes(a), label, step)
                    )
                    uploads.append(ev)
                    finished(a, ev)
                elif a.lane is Lane.DOWNLOAD:
                    ev = fn.lanes[Lane.DOWNLOAD].submit(
                        fn.download_task(
                            (step, channel(a)), self.nbytes(a), delete=True, span=label, step=step
                        )
                    )
                    finished(a, ev)
                else:
                    for d in deps[a]:
                        ev = done.setdefault(d, _Event())
                        if not ev.done:
                            yield ev
                    t0 = self.kernel.now
                    if a.op is Op.SYNC:
                        if self.grad_numel(a.stage):
                            yield from self.all_reduce(fn, step, a.stage)
                        sync += self.kernel.now - t0
                    else:
                        fn.computing = True
                        yield from self.run_compute(fn, a, demand)
                        fn.computing = False
                        yield from self.pay_lane_debt(fn, a)
                        compute += self.kernel.now - t0
                    finished(a, self.kernel.event_at(self.kernel.now))
                    self.record(w, step, label, "compute", t0, self.kernel.now)
                if not self.overlap and a.lane is not Lane.COMPUTE:
                    yield done[a]
            for ev in uploads:
                if not ev.done:
                    yield ev
            self.bounds[(w, step)] = (start, self.kernel.now)
            self.compute[(w, step)] = compute
            self.sync[(w, step)] = sync
            report = fn.upload_task(("report", step, w), REPORT_BYTES_PER_ACTION * len(actions))
            yield fn.direct(report)

    def run_compute(self, fn: _Function, a: Action, demand: float) -> Generator[Any, None, None]:
        """Compute ``a`` on ``fn``'s CPU share, sharing the host's cores with other functions.

        Without a quota period a share below the thread count slows the work down uniformly.
        With one (CFS bandwidth control), the function's threads run at full speed while its
        quota lasts and at the share's rate once it is spent; the quota is a bucket refilled at
        the share's rate, deep enough for one period's quota (share x period CPU-seconds) at
        full speed (see ``_Function.quota_cap``). A function that mostly waits for transfers
        therefore computes at full speed. (The kernel's quota is per period, so a function is
        really throttled until the period ends; a run's steps do not keep in phase with its
        periods, and the bucket is that behaviour on average: modelled per period, a plan's
        predicted time jumped by a period when its compute grew by a few percent.)
        """
        share = self.cpus[a.stage]
        if not self.quota_period or demand < share:
            solo = self.work(a)
            one = self.work(a, 1.0) if solo > 0 else 0.0
            yield self.cpu.run(solo, min(demand, share), one / solo if solo > 0 else 1.0)
            return
        full = self.work(a, demand)  # seconds with its threads unthrottled
        one = self.work(a, 1.0) / full if full > 0 else 1.0
        left = full
        while left > 1e-12:
            level = fn.refill_quota()
            if level < -1e-12:  # transfer threads overdrew it: wait until it is paid back
                yield -level / share
                continue
            if level > 1e-12:  # full speed until the bucket is empty (it refills meanwhile)
                chunk = min(left, level / (demand - share))
                yield self.cpu.run(chunk, demand, one)
                fn.spend_quota(chunk * demand)
                left -= chunk
                continue
            # empty: the rest runs at the share's rate, as without a period
            solo = self.work(a) * left / full
            t1 = self.work(a, 1.0) * left / full
            yield self.cpu.run(solo, share, t1 / solo if solo > 0 else 1.0)
            fn.spend_quota(solo * share)
            left = 0.0

    def pay_lane_debt(self, fn: _Function, a: Action) -> Generator[Any, None, None]:
        """The time the transfers made during compute action ``a`` added to it.

        The main thread waits for the interpreter lock that the lanes hold and spends CPU on
        handing it over. Under a CPU quota that CPU comes out of the quota, which the next
        compute pays back (as for the lanes' own CPU); otherwise the action takes that much
        longer at the function's share.
        """
        debt, fn.lane_debt = fn.lane_debt, 0.0
        if debt <= 1e-12:
            return
        if self.quota_period:
            fn.charge_quota(debt)
            return
        share = min(1.0, self.cpus[a.stage])
        yield self.cpu.run(debt / share, share, share)

    def all_reduce(self, fn: _Function, step: int, s: int) -> Generator[Any, None, None]:
        """The runtime's all_reduce for replica ``fn.worker.replica`` of stage ``s``."""
        n, w = self.plan.stages[s].replicas, fn.worker.replica
        numel = self.grad_numel(s) + 1
        pipelined = self.sync_algorithm == "pipelined"
        k = default_subchunks(numel, n, 4) if pipelined else 1
        k = max(1, min(k, numel // n)) if numel >= n else 1
        pieces = [split_sizes(c, k) for c in split_sizes(numel, n)]
        workers = IN_FLIGHT if pipelined else 1
        up, down = _Pool(fn, "upload", workers), _Pool(fn, "download", workers)

        def key(*parts: Any) -> tuple[Any, ...]:
            return ("sync", step, s, *parts)

        sources = [(w - t) % n for t in range(1, n)]
        others = [(w + t) % n for t in range(1, n)]
        if pipelined:
            sent = [
                up.submit(fn.upload_task(key("rs", (w + t) % n, w, j), 4 * pieces[(w + t) % n][j]))
                for t in range(1, n)
                for j in range(k)
            ]
            fetched = [
                (src, j, down.submit(
                    fn.download_task(key("rs", w, src, j), 4 * pieces[w][j], delete=False)
                ))
                for src in sources
                for j in range(k)
            ]  # fmt: skip
            merged = [
                down.submit(fn.download_task(key("ag", o, j), 4 * pieces[o][j], delete=False))
                for j in range(k)
                for o in others
            ]
            for src, j, ev in fetched:
                if not ev.done:
                    yield ev
                if src == sources[-1]:
                    sent.append(up.submit(fn.upload_task(key("ag", w, j), 4 * pieces[w][j])))
            for ev in merged + sent:
                if not ev.done:
                    yield ev
        else:
            for t in range(1, n):
                o = (w + t) % n
                yield fn.direct(fn.upload_task(key("rs", o, w, 0), 4 * pieces[o][0]))
            for src in sources:
                yield fn.direct(
                    fn.download_task(key("rs", w, src, 0), 4 * pieces[w][0], delete=False)
                )
            yield fn.direct(fn.upload_task(key("ag", w, 0), 4 * pieces[w][0]))
            for o in others:
                yield fn.direct(fn.download_task(key("ag", o, 0), 4 * pieces[o][0], delete=False))
        # cleanup: replicas > 0 write a done flag; replica 0 collects them, then deletes the
        # prefix (rs pieces, merged pieces, flags): a listing and a bulk delete per 1000 keys
        if w:
            yield fn.direct(fn.upload_task(key("done", w), 0))
            return
        flags = [
            down.submit(fn.download_task(key("done", r), 0, delete=False)) for r in range(1, n)
        ]
        yield _all(self.kernel, flags)
        held = n * (n - 1) * k + n * k + (n - 1)
        fn.counts.lists += math.ceil(held / 1000)
        fn.counts.puts += math.ceil(held / 1000)  # DeleteObjects is billed as a PUT
        fn.counts.deletes += held
        yield self.latency

    def run(self) -> None:
        # The client feeds two steps ahead: every step's data is in storage before it starts.
        for step in range(self.steps):
            for a in self.schedule[CLIENT]:
                self.store.publish((step, channel(a)), 0.0)
        finished = {w: self.kernel.process(self.function(w)) for w in self.functions}
        self.kernel.run()
        stuck = [str(w) for w, ev in finished.items() if not ev.done]
        if stuck:
            raise ScheduleError(
                f"simulation of the plan's schedule never finished on {', '.join(stuck)}: "
                "its dependencies form a cycle (run funcpipe.runtime.check.check_schedule)"
            )


def _micro_batch_sizes(plan: Plan, profile: Profile, batch_size: int | None) -> list[int]:
    if batch_size is None:
        return [max(profile.micro_batch_sizes)] * plan.micro_batches
    plan.check_batch(batch_size)
    base, extra = divmod(batch_size, plan.micro_batches)
    return [base + (b < extra) for b in range(plan.micro_batches)]  # torch.tensor_split's sizes


def _memory_mb(plan: Plan, profile: Profile, s: int, sizes: list[int], base_mb: float) -> float:
    stage = plan.stages[s]
    return stage_memory_mb(
        profile,
        stage.start,
        stage.end,
        micro_batch=max(sizes),
        held=micro_batches_held(plan.micro_batches, stage.replicas),
        replicas=stage.replicas,
        base_mb=base_mb,
    )


def simulate(
    plan: Plan,
    profile: Profile,
    platform: str | PlatformProfile = "aws-lambda",
    *,
    batch_size: int | None = None,
    sync_algorithm: str = "pipelined",
    overlap: bool = True,
    steps: int = SIM_STEPS,
) -> Prediction:
    """Simulate ``steps`` iterations of ``plan``; see the module docstring for the model."""
    prof = get_platform(platform)
    if not isinstance(plan, Plan):
        raise ConfigError("plan must be a funcpipe.Plan")
    plan.check_model(profile.num_layers)
    if steps < 2:
        raise ConfigError(f"steps must be >= 2 to measure a steady-state period, got {steps}")
    sizes = _micro_batch_sizes(plan, profile, batch_size)
    sim = _Sim(
        plan, profile, prof, sizes, sync_algorithm=sync_algorithm, overlap=overlap, steps=steps
    )
    sim.run()
    ends = [max(sim.bounds[(w, t)][1] for w in sim.functions) for t in range(steps)]
    period = (ends[-1] - ends[0]) / (steps - 1)
    first = ends[0]

    breakdown: dict[str, FunctionBreakdown] = {}
    t = steps - 1
    for w, fn in sim.functions.items():
        lo, hi = ends[t - 1], ends[t]
        comp = sim.compute[(w, t)]
        syn = sim.sync[(w, t)]
        start, end = sim.bounds[(w, t)]
        blocked = max(0.0, (end - start) - comp - syn)
        comm = min(blocked, _overlap_in(fn.busy, start, end) - _compute_overlap(sim, w, t, fn))
        comm = max(0.0, comm)
        breakdown[str(w)] = FunctionBreakdown(
            compute_s=comp,
            communication_s=comm,
            sync_s=syn,
            idle_s=max(0.0, (hi - lo) - comp - syn - comm),
        )

    total = _Counts()
    for fn in sim.functions.values():
        for name in ("puts", "gets", "lists", "deletes"):
            setattr(total, name, getattr(total, name) + getattr(fn.counts, name))
    per_step = {k: v / steps for k, v in vars(total).items()}
    # the client: 2 puts per micro-batch, one exists() per poll, one get+delete per report
    per_step["puts"] += 2 * plan.micro_batches
    per_step["gets"] += period / MONITOR_POLL_S + 2 * plan.num_functions
    per_step["deletes"] += plan.num_functions
    pricing = prof.pricing
    request_cost = pricing.request_cost(
        per_step["puts"], per_step["gets"], per_step["lists"], per_step["deletes"]
    )
    base = prof.runtime_base_mb
    reports = [
        [
            {
                "step": s,
                "stage": w.stage,
                "replica": w.replica,
                "start": sim.bounds[(w, s)][0],
                "end": sim.bounds[(w, s)][1],
                "loss": 0.0,
                "spans": sim.spans.get((w, s), []),
                "traffic": {},
            }
            for w in sorted(sim.functions)
        ]
        for s in range(steps)
    ]
    return Prediction(
        plan=plan,
        platform=prof.name,
        time_s=period,
        cost_usd=pricing.compute_cost(plan, period) + request_cost,
        request_cost_usd=request_cost,
        memory_mb=[_memory_mb(plan, profile, s, sizes, base) for s in range(plan.num_stages)],
        breakdown=breakdown,
        requests=per_step,
        first_iteration_s=prof.startup + first,
        startup_s=prof.startup,
        cpus=sim.cpus,
        micro_batch_sizes=sizes,
        reports=reports,
    )


def _overlap_in(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` inside [lo, hi]."""
    total, cur_lo, cur_hi = 0.0, None, None
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi):
        if cur_hi is None or a > cur_hi:
            if cur_hi is not None:
                total += cur_hi - cur_lo
            cur_lo, cur_hi = a, b
        else:
            cur_hi = max(cur_hi, b)
    if cur_hi is not None:
        total += cur_hi - cur_lo
    return total


def _compute_overlap(sim: _Sim, w: WorkerId, step: int, fn: _Function) -> float:
    """Link activity hidden behind compute (it does not delay the function)."""
    compute = [(a, b) for label, lane, a, b in sim.spans.get((w, step), []) if lane == "compute"]
    hidden = 0.0
    for a, b in compute:
        hidden += _overlap_in(fn.busy, a, b)
    return hidden


def predict(
    plan: Plan,
    profile: Profile,
    platform: str | PlatformProfile = "aws-lambda",
    *,
    batch_size: int | None = None,
    sync_algorithm: str = "pipelined",
    overlap: bool = True,
) -> Prediction:
    """Time, cost and memory of one steady-state iteration of ``plan`` on ``platform``.

    ``platform`` is a name ("aws-lambda", "aws-lambda-arm64", "alibaba-fc", "local") or a
    :class:`~funcpipe.planning.platforms.PlatformProfile`. ``batch_size`` is the global batch
    (split into ``plan.micro_batches`` micro-batches as ``train`` splits it); None means each
    micro-batch has the profile's largest measured size.
    """
    return simulate(
        plan, profile, platform, batch_size=batch_size, sync_algorithm=sync_algorithm,
        overlap=overlap,
    )  # fmt: skip
