"""One lowered schedule, two interpreters: what train() checks and ships is what every function
runs and what the simulator replays, and a schedule written here runs through all of them."""

from __future__ import annotations

import json

import pytest
import torch
from test_equivalence import OPTIMIZERS, assert_trains_like_pytorch, make_batches, make_model
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.client import launch
from funcpipe.client import train as train_module
from funcpipe.planning.profile import Profile
from funcpipe.planning.profiler import profile
from funcpipe.planning.sim import replay
from funcpipe.planning.simulate import predict
from funcpipe.runtime.package import FunctionPackage
from funcpipe.runtime.worker import _actions
from funcpipe.schedule import (
    CLIENT,
    SCHEDULES,
    Action,
    Op,
    Schedule,
    WorkerId,
    build_schedule,
    check_schedule,
    lane_widths,
    parse_action,
)

PLANS = {
    "1": Plan(stages=[Stage(start=0, end=7)], micro_batches=2),
    "2x3": Plan(
        stages=[Stage(start=0, end=4, replicas=3), Stage(start=4, end=7)], micro_batches=3
    ),  # fmt: skip
    "1-2-3": Plan(
        stages=[
            Stage(start=0, end=2),
            Stage(start=2, end=5, replicas=2),
            Stage(start=5, end=7, replicas=3),
        ],
        micro_batches=4,
    ),  # fmt: skip
    "4-stages": Plan(
        stages=[
            Stage(start=0, end=1, replicas=2),
            Stage(start=1, end=4),
            Stage(start=4, end=6, replicas=3),
            Stage(start=6, end=7),
        ],
        micro_batches=5,
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def small_profile() -> Profile:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    return profile(make_model(), (x, y), loss_fn=nn.CrossEntropyLoss(), micro_batch_sizes=[2],
                   repeats=1, min_seconds=0.0, runtime_base_mb=300.0)  # fmt: skip


def _shipped(
    monkeypatch: pytest.MonkeyPatch, plan: Plan, **options
) -> dict[WorkerId, FunctionPackage]:
    """The packages train() would start every function with (no function is started)."""
    checked: dict[str, Schedule | None] = {}

    def run_job(config, training, evaluation):
        checked["training"], checked["evaluation"] = training, evaluation
        make = launch.package_maker(config, launch.code_refs(config),
                                    [{} for _ in plan.stages], training, evaluation)  # fmt: skip
        checked["packages"] = {
            w: FunctionPackage.from_json(make(w.stage, w.replica, 0, 0, {}))
            for w in training
            if w != CLIENT
        }  # type: ignore[assignment]

    monkeypatch.setattr(train_module, "run_job", run_job)
    train(make_model(), nn.CrossEntropyLoss(), optimizer=OPTIMIZERS["adam"],
          batches=make_batches(2), plan=plan, steps=2, progress=False, **options)  # fmt: skip
    return checked  # type: ignore[return-value]


def _replayed(monkeypatch: pytest.MonkeyPatch, plan: Plan, prof: Profile, **options):
    """Every list the simulator's functions walk, with the lane widths and overlap it used."""
    walked: dict[tuple[Action, ...], tuple[dict, bool]] = {}
    real = replay.walk

    def spy(actions, widths, *, overlap=True, deps=None):
        walked[tuple(actions)] = (dict(widths), overlap)
        return real(actions, widths, overlap=overlap, deps=deps)

    monkeypatch.setattr(replay, "walk", spy)
    predict(plan, prof, "local", batch_size=10, **options)
    return walked


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("sync_algorithm", ["pipelined", "naive"])
@pytest.mark.parametrize("name", list(PLANS))
def test_functions_and_simulator_consume_the_same_lowered_lists(
    monkeypatch: pytest.MonkeyPatch, small_profile: Profile, name: str, sync_algorithm: str,
    overlap: bool,
) -> None:  # fmt: skip
    plan = PLANS[name]
    options = {"sync_algorithm": sync_algorithm, "overlap": overlap}
    checked = _shipped(monkeypatch, plan, eval_batches=make_batches(3), eval_every=1, **options)
    training, evaluation = checked["training"], checked["evaluation"]
    walked = _replayed(monkeypatch, plan, small_profile, **options)
    packages = checked["packages"]
    assert set(packages) == {w for w in training if w != CLIENT}
    for w, pkg in packages.items():
        runs = _actions(pkg, "actions")  # what the function's executor is given
        assert runs == training[w]
        assert _actions(pkg, "eval_actions") == evaluation[w]
        assert walked[tuple(runs)] == (lane_widths(sync_algorithm), overlap)
        assert pkg.sync_algorithm == sync_algorithm and pkg.overlap == overlap
    assert len(walked) == len(packages)  # the simulator walked nothing else
    # both were checked before any function would start: lowered, no SYNC left
    assert not any(a.op is Op.SYNC for acts in training.values() for a in acts)
    check_schedule(training, lane_widths(sync_algorithm))
    check_schedule(evaluation)


def _fifo_backward(plan: Plan) -> Schedule:
    """A schedule that exists only here: GPipe, but the backwards run in forward order."""
    schedule = build_schedule(plan)
    for w, acts in schedule.items():
        if w == CLIENT:
            continue
        backward = [a for a in acts if a.op in (Op.RECV_GRAD, Op.BACKWARD, Op.SEND_GRAD)]
        firsts = [a for a in backward if a.op is Op.RECV_GRAD]
        rest = [a for a in backward if a.op is not Op.RECV_GRAD]
        order = sorted(firsts, key=lambda a: a.micro_batch) + sorted(
            rest, key=lambda a: (a.micro_batch, a.op is Op.SEND_GRAD)
        )
        at = acts.index(backward[0])
        kept = [a for a in acts if a not in set(backward)]
        schedule[w] = kept[:at] + order + kept[at:]
    return schedule


def test_a_schedule_written_here_runs_simulates_and_checks_with_no_other_change(
    monkeypatch: pytest.MonkeyPatch, small_profile: Profile
) -> None:
    monkeypatch.setitem(SCHEDULES, "fifo-backward", _fifo_backward)
    base = PLANS["1-2-3"]
    plan = Plan(stages=base.stages, micro_batches=base.micro_batches, schedule="fifo-backward")
    assert json.loads(plan.to_json())["schedule"] == "fifo-backward"
    assert Plan.from_json(plan.to_json()) == plan
    # the checker and the simulator take it from the registry
    walked = _replayed(monkeypatch, plan, small_profile)
    order = [a.micro_batch for a in next(iter(
        acts for acts in walked if acts[0].stage == 1)) if a.op is Op.BACKWARD]  # fmt: skip
    assert order == sorted(order)
    monkeypatch.undo()
    monkeypatch.setitem(SCHEDULES, "fifo-backward", _fifo_backward)
    # the functions run it from their packages (they never see the builder): same result
    result = assert_trains_like_pytorch(make_model(), make_batches(2), plan,
                                        optimizer=OPTIMIZERS["adam"])  # fmt: skip
    for report in (r for r in result.reports[0] if r["stage"] == 1):
        ran = [parse_action(label) for label, *_ in report["spans"]]
        backward = [a.micro_batch for a in ran if a.op is Op.BACKWARD]
        assert len(backward) == 2 and backward == sorted(backward)
