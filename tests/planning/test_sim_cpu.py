"""Compute jobs without a shared host end when the shared host's model says they would with
cores to spare, one heap push and pop each."""

from __future__ import annotations

import random

import pytest

from funcpipe.planning.sim.cpu import _Cpu
from funcpipe.planning.sim.kernel import _Kernel


def _ends(cores: float | None, jobs: list[tuple[float, float, float]]) -> list[float]:
    kernel = _Kernel()
    cpu = _Cpu(kernel, cores)
    events: list = []
    for start, work, demand in jobs:
        kernel.at(start, lambda w=work, d=demand: events.append(cpu.run(w, d)))
    kernel.run()
    return [ev.time for ev in events]


@pytest.mark.parametrize("seed", range(20))
def test_jobs_without_a_shared_host_run_at_full_speed(seed: int) -> None:
    rng = random.Random(seed)
    t, jobs = rng.choice([0.0, 500.0]), []
    for _ in range(rng.randint(1, 80)):
        t += rng.choice([0.0, rng.expovariate(10.0)])
        jobs.append((t, rng.choice([0.0, 0.01, rng.uniform(0, 2)]), rng.choice([0.5, 1.0, 3.0])))
    got = _ends(None, jobs)
    assert got == pytest.approx(_ends(1e9, jobs), rel=1e-12, abs=1e-12)
    assert got == pytest.approx([s + w for s, w, _ in jobs], rel=1e-12, abs=1e-12)


def test_ten_thousand_jobs_at_once() -> None:
    works = [1.0 + i * 1e-3 for i in range(10_000)]
    assert _ends(None, [(0.0, w, 1.0) for w in works]) == pytest.approx(works)
