"""The schedule is data: its shape is pinned here, and the checker catches broken ones."""

from __future__ import annotations

import pytest

from funcpipe import Plan, Stage
from funcpipe.errors import ScheduleError
from funcpipe.runtime.check import check_schedule
from funcpipe.runtime.schedule import (
    CLIENT,
    Action,
    Op,
    WorkerId,
    build_schedule,
    format_schedule,
)

A = Action


def plan_2x2() -> Plan:
    return Plan(
        stages=[Stage(start=0, end=2, replicas=2), Stage(start=2, end=4, replicas=1)],
        micro_batches=4,
    )


def test_gpipe_order_of_a_first_stage_replica() -> None:
    sched = build_schedule(plan_2x2())
    assert sched[WorkerId(0, 1)] == [
        A(Op.LOAD_INPUT, 0, 1),
        A(Op.LOAD_INPUT, 0, 3),
        A(Op.FORWARD, 0, 1),
        A(Op.SEND_ACT, 0, 1),
        A(Op.FORWARD, 0, 3),
        A(Op.SEND_ACT, 0, 3),
        A(Op.RECV_GRAD, 0, 3),
        A(Op.RECV_GRAD, 0, 1),
        A(Op.BACKWARD, 0, 3),
        A(Op.BACKWARD, 0, 1),
        A(Op.SYNC, 0),
        A(Op.STEP, 0),
    ]


def test_last_stage_gets_all_micro_batches_and_no_sync_when_alone() -> None:
    sched = build_schedule(plan_2x2())
    acts = sched[WorkerId(1, 0)]
    assert [a.micro_batch for a in acts if a.op is Op.FORWARD] == [0, 1, 2, 3]
    assert [a.micro_batch for a in acts if a.op is Op.BACKWARD] == [3, 2, 1, 0]
    assert [a.micro_batch for a in acts if a.op is Op.SEND_GRAD] == [3, 2, 1, 0]
    assert Op.SYNC not in {a.op for a in acts}
    assert acts[-1] == A(Op.STEP, 1)
    assert Op.LOAD_TARGET in {a.op for a in acts}


def test_micro_batch_moves_between_replicas_round_robin() -> None:
    plan = Plan(
        stages=[Stage(start=0, end=1, replicas=2), Stage(start=1, end=2, replicas=3)],
        micro_batches=6,
    )
    sched = build_schedule(plan)
    for b in range(6):
        assert A(Op.SEND_ACT, 0, b) in sched[WorkerId(0, b % 2)]
        assert A(Op.RECV_ACT, 1, b) in sched[WorkerId(1, b % 3)]


@pytest.mark.parametrize(
    "replicas,micro", [((1,), 1), ((1, 1), 3), ((2, 2), 4), ((1, 2, 3), 4), ((3, 1, 2, 1), 5)]
)
def test_generated_schedules_pass_the_checker(replicas: tuple[int, ...], micro: int) -> None:
    stages = [Stage(start=i, end=i + 1, replicas=d) for i, d in enumerate(replicas)]
    sched = build_schedule(Plan(stages=stages, micro_batches=micro))
    order = check_schedule(sched)
    assert len(order) == sum(len(v) for v in sched.values())


def test_checker_catches_a_download_without_upload() -> None:
    sched = build_schedule(plan_2x2())
    sched[WorkerId(0, 0)].remove(A(Op.SEND_ACT, 0, 2))
    with pytest.raises(ScheduleError, match="no function uploads it"):
        check_schedule(sched)


def test_checker_catches_an_upload_nobody_reads() -> None:
    sched = build_schedule(plan_2x2())
    sched[WorkerId(1, 0)].remove(A(Op.RECV_ACT, 1, 0))
    sched[WorkerId(1, 0)].remove(A(Op.FORWARD, 1, 0))
    with pytest.raises(ScheduleError, match="left in storage"):
        check_schedule(sched)


def test_checker_catches_a_cycle() -> None:
    """Stage 0 waiting for a gradient before sending the activation it depends on deadlocks."""
    sched = build_schedule(plan_2x2())
    acts = sched[WorkerId(0, 0)]
    acts.remove(A(Op.SEND_ACT, 0, 0))
    acts.insert(acts.index(A(Op.BACKWARD, 0, 0)) + 1, A(Op.SEND_ACT, 0, 0))
    with pytest.raises(ScheduleError, match="deadlock") as err:
        check_schedule(sched)
    assert "stage0-replica0" in str(err.value)


def test_checker_catches_a_compute_before_its_data_in_walk_order() -> None:
    """A backward listed before the forward it needs blocks the walk forever."""
    sched = build_schedule(plan_2x2())
    acts = sched[WorkerId(1, 0)]
    acts.remove(A(Op.BACKWARD, 1, 0))
    acts.insert(0, A(Op.BACKWARD, 1, 0))
    with pytest.raises(ScheduleError, match="deadlock"):
        check_schedule(sched)


def test_checker_catches_an_upload_listed_before_its_producer() -> None:
    sched = build_schedule(plan_2x2())
    acts = sched[WorkerId(0, 0)]
    acts.remove(A(Op.SEND_ACT, 0, 0))
    acts.insert(0, A(Op.SEND_ACT, 0, 0))
    with pytest.raises(ScheduleError, match="lists send_act mb0@s0 before forward mb0@s0"):
        check_schedule(sched)


def test_checker_catches_a_missing_sync_replica() -> None:
    sched = build_schedule(plan_2x2())
    sched[WorkerId(0, 1)].remove(A(Op.SYNC, 0))
    with pytest.raises(ScheduleError, match="SYNC of stage 0 is missing on stage0-replica1"):
        check_schedule(sched)


def test_checker_catches_duplicates() -> None:
    sched = build_schedule(plan_2x2())
    sched[CLIENT].append(A(Op.PUT_INPUT, 0, 0))
    with pytest.raises(ScheduleError, match="more than once"):
        check_schedule(sched)


def test_format_names_every_function() -> None:
    text = format_schedule(build_schedule(plan_2x2()))
    for name in ("client", "stage0-replica0", "stage0-replica1", "stage1-replica0"):
        assert name in text
