"""The replay: every function walks the runtime's own lowered action list against the modelled
platform.

What is replayed is exactly what runs: the plan's schedule lowered as ``train`` lowers it (SYNC
cut into the scatter-reduce's pieces, a REPORT ending each step, the client's feeding and report
reads), and each function goes through it by the one walker (:func:`funcpipe.schedule.walk`), as
the executor does: here its instructions are interpreted with modelled lanes, links and CPU
(:mod:`.lanes`, :mod:`.link`, :mod:`.cpu`). Compute times come from the :class:`Profile` at the
CPU share of the stage's memory; a piece of the all-reduce moves the bytes its layout gives
(:func:`funcpipe.schedule.lower.sync_layout`), and replica 0's clean-up costs its listing, bulk
delete and one latency. The client feeds two steps ahead, so a step's inputs and targets are in
storage when it starts; its requests (feeding, polling reports) are counted for the cost. Steps
overlap across functions exactly as they do at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any, cast

from funcpipe.errors import ScheduleError
from funcpipe.planning.plan import Plan
from funcpipe.planning.platforms import PlatformProfile
from funcpipe.planning.profile import Profile, threads_for
from funcpipe.planning.sim.cpu import _Cpu, run_compute
from funcpipe.planning.sim.kernel import _Event, _Kernel
from funcpipe.planning.sim.lanes import _Function
from funcpipe.planning.sim.link import _Store
from funcpipe.schedule.actions import CLIENT, GETS, PUTS, Action, Op, WorkerId
from funcpipe.schedule.build import schedule_for
from funcpipe.schedule.channels import Channel, channel
from funcpipe.schedule.lower import lane_widths, lower, stage_layouts
from funcpipe.schedule.rules import dependencies
from funcpipe.schedule.walk import Do, walk
from funcpipe.storage.base import POLL_MAX_S

REPORT_BYTES_PER_ACTION = 90  # a report's JSON carries one span per action
_COMPUTE = frozenset({Op.FORWARD, Op.BACKWARD, Op.STEP, Op.EVAL_FORWARD})
_READ_ONCE = frozenset({Op.LOAD_INPUT, Op.LOAD_TARGET, Op.RECV_ACT, Op.RECV_GRAD})


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
        numel = [
            self.grad_numel(s) + 1 if self.grad_numel(s) else 0 for s in range(len(plan.stages))
        ]
        self.layouts = stage_layouts([st.replicas for st in plan.stages], numel,
                                     sync_algorithm=sync_algorithm)  # fmt: skip
        # what every function runs: the plan's schedule, lowered as train() lowers it
        self.schedule = lower(schedule_for(plan), self.layouts, sync_algorithm=sync_algorithm)
        self.deps = {w: dependencies(acts) for w, acts in self.schedule.items()}
        self.widths = lane_widths(sync_algorithm)
        # a function walks the same instructions every step: the walker is asked once
        self.walks = {
            w: list(walk(acts, self.widths, overlap=overlap, deps=self.deps[w]))
            for w, acts in self.schedule.items()
            if w != CLIENT
        }
        self._moves: dict[Action, tuple[Channel, float, str]] = {}
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
        if ch.kind in ("rs", "ag"):  # piece p of chunk dst (scatter) or src (gather)
            owner = ch.dst if ch.kind == "rs" else ch.src
            layout = self.layouts[ch.stage]
            return layout.piece_bytes(int(owner), int(ch.piece)) if layout is not None else 0.0  # type: ignore[arg-type]
        if ch.kind in ("done", "report"):
            return 0.0
        mb = self.sizes[int(ch.micro_batch)]  # type: ignore[arg-type]
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
            mb = self.sizes[cast(int, a.micro_batch)]
            return sum(self.profile.forward_s(i, mb, cpus, cap) for i in layers)
        if a.op is Op.BACKWARD:
            mb = self.sizes[cast(int, a.micro_batch)]
            return sum(self.profile.backward_s(i, mb, cpus, cap) for i in layers)
        if a.op is Op.STEP:
            return sum(self.profile.step_s(i, cpus, cap) for i in layers)
        return 0.0

    def grad_numel(self, s: int) -> int:
        """Stage s's gradient values (the simulator's estimate of its all-reduce's vector)."""
        stage = self.plan.stages[s]
        grad = sum(self.profile.grad_bytes(i) for i in range(stage.start, stage.end))
        # flat float32 gradients plus one flag per parameter tensor (unknown: ~1 per 1 KiB)
        return int(grad // 4)

    # --- processes -----------------------------------------------------------------------------
    def function(self, w: WorkerId) -> Generator[Any, None, None]:
        """Function ``w`` walks its lowered list step after step: the walker's instructions
        interpreted with modelled lanes, link and CPU."""
        fn = self.functions[w]
        actions, instructions = self.schedule[w], self.walks[w]
        cpus = self.cpus[w.stage]
        threads = self.demand[w.stage]
        # Under a quota per period the threads run at full speed while quota lasts.
        demand = threads if self.quota_period else min(cpus, threads)
        for step in range(self.steps):
            start = self.kernel.now
            queued: dict[Action, _Event] = {}
            compute = sync = 0.0
            sync_from = start
            for do, a in instructions:
                if do is Do.SUBMIT:
                    queued[a] = fn.lanes[a.lane].submit(self.transfer(fn, step, a))
                    continue
                if do is Do.AWAIT:
                    ev = queued.pop(a)
                    if not ev.done:
                        yield ev
                    continue
                t0 = self.kernel.now
                if a.op is Op.REPORT:  # the step is over: everything it wrote is across
                    self.bounds[(w, step)] = (start, t0)
                    self.compute[(w, step)], self.sync[(w, step)] = compute, sync
                    nbytes = REPORT_BYTES_PER_ACTION * (len(actions) - 1)  # a span per action
                    yield fn.direct(fn.upload_task((step, channel(a)), nbytes))
                elif a.op in PUTS or a.op in GETS:  # a transfer on the walking thread
                    yield fn.direct(self.transfer(fn, step, a))
                elif a.op is Op.SYNC_BEGIN:
                    sync_from = t0
                elif a.op is Op.SYNC_END:  # one span for the whole all-reduce, as at run time
                    sync += t0 - sync_from
                    self.record(w, step, str(Action(Op.SYNC, a.stage)), "compute", sync_from, t0)
                elif a.op is Op.SYNC_CLEAR:
                    yield from self.clear_sync(fn, a.stage)
                elif a.op in _COMPUTE:
                    fn.computing = True
                    yield from self.run_compute(fn, a, demand)
                    fn.computing = False
                    yield from self.pay_lane_debt(fn, a)
                    compute += self.kernel.now - t0
                    self.record(w, step, str(a), "compute", t0, self.kernel.now)
                elif a.op not in (Op.REDUCE, Op.GATHER):  # the sums cost nothing modelled
                    raise ScheduleError(f"the simulator cannot replay {a} on {w}")
            if (w, step) not in self.bounds:  # a list without a REPORT
                self.bounds[(w, step)] = (start, self.kernel.now)
                self.compute[(w, step)], self.sync[(w, step)] = compute, sync

    def transfer(self, fn: _Function, step: int, a: Action) -> Callable[[Callable[[], None]], None]:
        """The modelled request of transfer ``a``: its key, its bytes, its lane span."""
        move = self._moves.get(a)
        if move is None:  # the same every step
            move = self._moves[a] = (channel(a), self.nbytes(a), str(a))
        ch, nbytes, label = move
        if a.op in PUTS:
            return fn.upload_task((step, ch), nbytes, label, step)
        return fn.download_task((step, ch), nbytes, delete=a.op in _READ_ONCE, span=label,
                                step=step)  # fmt: skip

    def run_compute(self, fn: _Function, a: Action, demand: float) -> Generator[Any, None, None]:
        """Compute ``a`` on ``fn``'s CPU share (see :func:`.cpu.run_compute`)."""
        yield from run_compute(
            self.cpu, fn.quota, self.cpus[a.stage], demand, lambda cpus: self.work(a, cpus)
        )

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
        if fn.quota is not None:
            fn.quota.charge(debt)
            return
        share = min(1.0, self.cpus[a.stage])
        yield self.cpu.run(debt / share, share, share)

    def clear_sync(self, fn: _Function, s: int) -> Generator[Any, None, None]:
        """Replica 0 deletes the sync's keys (rs pieces, summed pieces, flags): a listing and
        a bulk delete per 1000 keys, one request latency on the walking thread."""
        layout = self.layouts[s]
        n, k = (layout.world, layout.pieces) if layout is not None else (1, 1)
        held = n * (n - 1) * k + n * k + (n - 1)
        fn.counts.lists += math.ceil(held / 1000)
        fn.counts.puts += math.ceil(held / 1000)  # DeleteObjects is billed as a PUT
        fn.counts.deletes += held
        yield self.latency

    def run(self) -> None:
        # The client feeds two steps ahead: every step's data is in storage before it starts.
        for step in range(self.steps):
            for a in self.schedule[CLIENT]:
                if a.op in PUTS:
                    self.store.publish((step, channel(a)), 0.0)
        finished = {w: self.kernel.process(self.function(w)) for w in self.functions}
        self.kernel.run()
        stuck = [str(w) for w, ev in finished.items() if not ev.done]
        if stuck:
            raise ScheduleError(
                f"simulation of the plan's schedule never finished on {', '.join(stuck)}: "
                "its dependencies form a cycle (run funcpipe.runtime.check.check_schedule)"
            )
