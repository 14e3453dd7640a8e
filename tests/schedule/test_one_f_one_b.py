"""1F1B: one builder, checked for every small plan shape, holding what it promises."""

from __future__ import annotations

import itertools

import pytest

from funcpipe import Plan, Stage
from funcpipe.schedule import (
    CLIENT,
    Op,
    WorkerId,
    build_schedule,
    check_schedule,
    get_schedule,
    lane_widths,
    lower,
    stage_layouts,
)
from funcpipe.schedule.rules import activations_held


def _plans():
    for stages in range(1, 5):
        for replicas in itertools.product((1, 2, 3), repeat=stages):
            for micro in sorted({max(replicas), max(replicas) + 1, 2 * stages + 1, 8}):
                yield Plan(
                    stages=[Stage(start=i, end=i + 1, replicas=d) for i, d in enumerate(replicas)],
                    micro_batches=micro,
                    schedule="1f1b",
                )


PLANS = list(_plans())


def test_every_small_plan_shape_is_deadlock_free_lowered_or_not() -> None:
    build = get_schedule("1f1b")
    for plan in PLANS:
        schedule = build(plan)
        check_schedule(schedule)
        world = [s.replicas for s in plan.stages]
        for algorithm in ("pipelined", "naive"):
            layouts = stage_layouts(world, [40] * len(world), sync_algorithm=algorithm)
            check_schedule(lower(schedule, layouts, sync_algorithm=algorithm),
                           lane_widths(algorithm))  # fmt: skip


def test_it_runs_the_same_work_as_gpipe_and_holds_at_most_stages_minus_s() -> None:
    one_replica = Plan(stages=[Stage(start=i, end=i + 1) for i in range(4)], micro_batches=16,
                       schedule="1f1b")  # fmt: skip
    held = [activations_held(get_schedule("1f1b")(one_replica)[WorkerId(s, 0)]) for s in range(4)]
    assert held == [4, 3, 2, 1]  # stage 0 of 4 holds 4 of its 16 micro-batches, not 16
    for plan in PLANS:
        one, gpipe = get_schedule("1f1b")(plan), build_schedule(plan)
        assert one[CLIENT] == gpipe[CLIENT]
        for w, acts in one.items():
            if w == CLIENT:
                continue
            assert sorted(map(str, acts)) == sorted(map(str, gpipe[w]))
            mine = len(plan.micro_batches_of(w.stage, w.replica))
            assert activations_held(acts) <= min(plan.num_stages - w.stage, mine)
            assert activations_held(gpipe[w]) == mine


def test_the_last_stage_alternates_from_the_start() -> None:
    plan = Plan(stages=[Stage(start=0, end=1), Stage(start=1, end=2)], micro_batches=3,
                schedule="1f1b")  # fmt: skip
    acts = get_schedule("1f1b")(plan)[WorkerId(1, 0)]
    compute = [str(a) for a in acts if a.op in (Op.FORWARD, Op.BACKWARD)]
    assert compute == [
        "forward mb0@s1", "backward mb0@s1", "forward mb1@s1", "backward mb1@s1",
        "forward mb2@s1", "backward mb2@s1",
    ]  # fmt: skip
    first = get_schedule("1f1b")(plan)[WorkerId(0, 0)]
    compute = [str(a) for a in first if a.op in (Op.FORWARD, Op.BACKWARD)]
    assert compute[:3] == ["forward mb0@s0", "forward mb1@s0", "backward mb0@s0"]


def test_an_unknown_schedule_names_the_known_ones() -> None:
    with pytest.raises(Exception, match="unknown schedule 'zb'.*1f1b, gpipe"):
        get_schedule("zb")
