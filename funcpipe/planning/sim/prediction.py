"""A plan's prediction: its simulated steps turned into a period, a cost and a breakdown.

Several steps are simulated back to back; ``time_s`` is the steady-state period (end of the last
step minus end of the first, divided by the steps in between), the figure a measured run's
``(end[last] - end[0]) / (steps - 1)`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from funcpipe.errors import ConfigError
from funcpipe.planning.memory import stage_memory_mb
from funcpipe.planning.plan import Plan
from funcpipe.planning.platforms import PlatformProfile, get_platform
from funcpipe.planning.profile import Profile
from funcpipe.planning.sim.lanes import _Counts, _Function
from funcpipe.planning.sim.replay import _Sim
from funcpipe.schedule.actions import CLIENT, Action, Op, Schedule, WorkerId
from funcpipe.schedule.rules import activations_held

__all__ = ["FunctionBreakdown", "Prediction", "predict", "simulate"]

MONITOR_POLL_S = 0.05  # the client's report polling interval (client/health.py POLL_S)
SIM_STEPS = 3


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
        from funcpipe.runtime.trace import chrome_trace

        return chrome_trace(self.reports)


def _micro_batch_sizes(plan: Plan, profile: Profile, batch_size: int | None) -> list[int]:
    if batch_size is None:
        return [max(profile.micro_batch_sizes)] * plan.micro_batches
    plan.check_batch(batch_size)
    base, extra = divmod(batch_size, plan.micro_batches)
    return [base + (b < extra) for b in range(plan.micro_batches)]  # torch.tensor_split's sizes


def _memory_mb(plan: Plan, profile: Profile, s: int, sizes: list[int], base_mb: float,
               schedule: Schedule) -> float:  # fmt: skip
    """What the busiest function of stage s needs, holding what its list holds at its peak."""
    stage = plan.stages[s]
    held = max(activations_held(acts) for w, acts in schedule.items() if w.stage == s)
    return stage_memory_mb(
        profile,
        stage.start,
        stage.end,
        micro_batch=max(sizes),
        held=held,
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
    _client_requests(sim.schedule[CLIENT], period, per_step)
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
        memory_mb=[
            _memory_mb(plan, profile, s, sizes, base, sim.schedule) for s in range(plan.num_stages)
        ],
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
    total, cur = 0.0, None
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi):
        if cur is None or a > cur[1]:
            if cur is not None:
                total += cur[1] - cur[0]
            cur = (a, b)
        else:
            cur = (cur[0], max(cur[1], b))
    if cur is not None:
        total += cur[1] - cur[0]
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


def _client_requests(actions: list[Action], period: float, per_step: dict[str, float]) -> None:
    """What the client's lowered list costs a step: a put per micro-batch fed; per report read,
    the existence check that finds it, its get and its delete; and, while it waits for reports,
    one existence check per poll interval."""
    reads = sum(a.op is Op.READ_REPORT for a in actions)
    per_step["puts"] += sum(a.op in (Op.PUT_INPUT, Op.PUT_TARGET) for a in actions)
    per_step["gets"] += (period / MONITOR_POLL_S if reads else 0.0) + 2 * reads
    per_step["deletes"] += reads
