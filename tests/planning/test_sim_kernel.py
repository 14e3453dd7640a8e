"""The event kernel's deadline, and the optimiser's time limit holding inside a simulation."""

from __future__ import annotations

import time

import pytest

from funcpipe import Plan, Stage
from funcpipe.planning.optimize import solve
from funcpipe.planning.profile import LayerProfile, Profile
from funcpipe.planning.sim.kernel import OutOfTime, _Kernel, deadline
from funcpipe.planning.simulate import predict


def _endless(kernel: _Kernel):
    while True:
        yield 1.0


def test_a_simulation_past_its_deadline_stops() -> None:
    with deadline(time.perf_counter() + 0.05):
        kernel = _Kernel()
    kernel.process(_endless(kernel))
    t0 = time.perf_counter()
    with pytest.raises(OutOfTime):
        kernel.run()
    assert time.perf_counter() - t0 < 0.5
    assert kernel.now > 100  # it ran until then


def test_no_deadline_outside_the_context() -> None:
    with deadline(1.0):
        with deadline(None):
            assert _Kernel().deadline is None
        assert _Kernel().deadline == 1.0
    assert _Kernel().deadline is None


MB = 4


def _heavy() -> tuple[Profile, Plan]:
    """Eight layers of 100 MB of parameters on 16 replicas: a second or more to simulate."""
    layers = [
        LayerProfile(
            name=f"l{i}",
            param_bytes=10**8,
            grad_bytes=10**8,
            optimizer_bytes=2 * 10**8,
            forward_s={MB: {1: 0.01}},
            backward_s={MB: {1: 0.02}},
            output_bytes={MB: 10**5},
            saved_bytes={MB: 10**5},
            temp_bytes={MB: 10**5},
            step_s={1: 0.01},
        )
        for i in range(8)
    ]
    prof = Profile(
        layers=layers, micro_batch_sizes=[MB], threads=[1], input_bytes_table={MB: 10**5},
        target_bytes_table={MB: 1000}, runtime_base_mb=100.0,
    )  # fmt: skip
    plan = Plan(stages=[Stage(start=0, end=8, memory_mb=10240, replicas=16)], micro_batches=16)
    return prof, plan


def test_the_optimisers_time_limit_holds_inside_a_simulation() -> None:
    """Every plan the search scores is a long simulation (the predictor simulates one large
    plan whatever it is asked); a 0.3 s limit stops the first one, not the solve after it."""
    prof, heavy = _heavy()
    sol = solve(
        prof, "aws-lambda", batch_size=64, micro_batch_counts=[16], memory_choices=[10240],
        predictor=lambda plan: predict(heavy, prof, "aws-lambda", batch_size=64),
        time_limit_s=0.3,
    )  # fmt: skip
    assert sol.solve_s < 0.3 + 0.4
    assert sol.extra["simulation_cut"] and not sol.extra["proven_optimal"]
    assert sol.best is None and "time_limit_s=0.3" in sol.note


@pytest.mark.parametrize("method", ["tpdmp", "lambdaml"])
def test_the_baselines_time_limit_holds_inside_a_simulation(method: str) -> None:
    prof, heavy = _heavy()
    sol = solve(
        prof, "aws-lambda", batch_size=64, micro_batch_counts=[16], memory_choices=[10240],
        predictor=lambda plan: predict(heavy, prof, "aws-lambda", batch_size=64),
        time_limit_s=0.3, method=method,
    )  # fmt: skip
    # the first simulation alone takes seconds; it is stopped at the limit (what runs past it is
    # the search's own set-up, a few tenths of a second on a loaded machine)
    assert sol.solve_s < 0.3 + 1.0
    assert sol.extra["stopped"] and sol.best is None
