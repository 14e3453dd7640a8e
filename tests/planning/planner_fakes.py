"""Small synthetic profiles and platforms for planner tests (no torch measurement needed)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

from funcpipe.planning.memory import stage_memory_mb
from funcpipe.planning.plan import Plan

MIB = 1024 * 1024


@dataclass
class FakeProfile:
    """Per-layer costs linear in the micro-batch and inverse in the CPU share."""

    fwd: list[float]  # seconds per sample at 1 CPU
    act: list[float]  # output bytes per sample
    params: list[float]  # bytes
    saved: list[float]  # bytes per sample
    runtime_base_mb: float = 100.0
    names: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.fwd)

    @property
    def layer_names(self) -> list[str]:
        return self.names or [f"layer{i}" for i in range(self.num_layers)]

    def forward_s(
        self, layer: int, micro_batch: float, cpus: float, max_threads: int | None = None
    ) -> float:
        return 0.001 + self.fwd[layer] * micro_batch / min(cpus, 2.0, max_threads or 2.0)

    def backward_s(
        self, layer: int, micro_batch: float, cpus: float, max_threads: int | None = None
    ) -> float:
        return 2 * self.forward_s(layer, micro_batch, cpus, max_threads)

    def step_s(self, layer: int, cpus: float, max_threads: int | None = None) -> float:
        return self.params[layer] / 1e9

    def activation_bytes(self, layer: int, micro_batch: float) -> float:
        return self.act[layer] * micro_batch

    def input_bytes(self, micro_batch: float) -> float:
        return 3072.0 * micro_batch

    def target_bytes(self, micro_batch: float) -> float:
        return 8.0 * micro_batch

    def param_bytes(self, layer: int) -> float:
        return self.params[layer]

    def grad_bytes(self, layer: int) -> float:
        return self.params[layer]

    def optimizer_bytes(self, layer: int) -> float:
        return 2 * self.params[layer]

    def saved_bytes(self, layer: int, micro_batch: float) -> float:
        return self.saved[layer] * micro_batch

    def temp_bytes(self, layer: int, micro_batch: float) -> float:
        return self.saved[layer] * micro_batch / 2

    def working_bytes(self, layer: int, micro_batch: float) -> float:
        return self.saved_bytes(layer, micro_batch) + self.temp_bytes(layer, micro_batch)


def random_profile(rng: random.Random, layers: int) -> FakeProfile:
    return FakeProfile(
        fwd=[rng.uniform(0.001, 0.02) for _ in range(layers)],
        act=[rng.choice([1e3, 1e4, 1e5, 1e6]) for _ in range(layers)],
        params=[rng.choice([0.0, 1e5, 1e6, 2e7, 1e8]) for _ in range(layers)],
        saved=[rng.uniform(1e4, 4e6) for _ in range(layers)],
    )


@dataclass(frozen=True)
class FakePlatform:
    name: str = "fake"
    memory_choices_mb: tuple[int, ...] = (512, 1024, 2048, 4096)
    up: float = 70e6
    down: float = 70e6
    latency_s: float = 0.01
    runtime_base_mb: float = 100.0

    def cpus(self, memory_mb: float) -> float:
        return memory_mb / 1769

    @property
    def link(self):  # noqa: ANN201
        return SimpleNamespace(up_bytes_s=self.up, down_bytes_s=self.down, latency_s=self.latency_s)

    @property
    def prices(self):  # noqa: ANN201
        return SimpleNamespace(
            gb_second=0.0000166667, put=5e-6, get=4e-7, delete=1e-7, invocation=2e-7
        )


class FakePredictor:
    """Stands in for the simulator: the analytic bound plus plan-dependent extras (always >= it)."""

    def __init__(self, profile: FakeProfile, platform: FakePlatform, batch_size: int) -> None:
        self.profile, self.platform, self.batch_size = profile, platform, batch_size
        self.calls = 0

    def __call__(self, plan: Plan) -> SimpleNamespace:
        from funcpipe.planning.bound import Options, link_of, plan_bound, prices_of
        from funcpipe.planning.space import SearchSpace, Weights

        self.calls += 1
        p, pf = self.profile, self.platform
        bounds = tuple([s.start for s in plan.stages] + [plan.num_layers])
        space = SearchSpace(p, pf, self.batch_size, bounds, (plan.micro_batches,),
                            tuple(sorted(pf.memory_choices_mb)))  # fmt: skip
        stages = [(i, i + 1, s.memory_mb, s.replicas) for i, s in enumerate(plan.stages)]
        t, _, _ = plan_bound(space, plan.micro_batches, stages, link_of(pf), prices_of(pf),
                             Weights(1, 0))  # fmt: skip
        m = plan.micro_batches
        mu = self.batch_size // m
        worst = max(
            sum(p.forward_s(i, mu, pf.cpus(s.memory_mb)) for i in range(s.start, s.end))
            for s in plan.stages
        )
        time_s = t + 0.3 * (m - 1) * worst / plan.num_stages + 0.002 * plan.num_functions
        gb = sum(s.replicas * s.memory_mb / 1024 for s in plan.stages)
        pr = pf.prices
        req = prices_of(pf)
        last = plan.num_stages - 1
        cost = time_s * gb * pr.gb_second + req.client(m) + req.polls(time_s) * 1.5
        # the all-reduce's requests as the runtime splits it (sub-chunks of about 1 MB)
        opts = Options(space, m, link_of(pf), req)
        cost += sum(req.stage(m, s.replicas, i == last, opts.subchunks(i, i + 1, s.replicas))
                    for i, s in enumerate(plan.stages))  # fmt: skip
        mems = [
            stage_memory_mb(
                p,
                s.start,
                s.end,
                micro_batch=mu,
                held=math.ceil(m / s.replicas),
                replicas=s.replicas,
                base_mb=pf.runtime_base_mb,
            )  # fmt: skip
            for s in plan.stages
        ]
        return SimpleNamespace(time_s=time_s, cost_usd=cost, memory_mb=mems)
