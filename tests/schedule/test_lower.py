"""Lowering: SYNC into the scatter-reduce's pieces, reports, the client's reads; all checked."""

from __future__ import annotations

import pytest

from funcpipe import Plan, Stage
from funcpipe.errors import ScheduleError
from funcpipe.schedule import (
    CLIENT,
    Action,
    Lane,
    Op,
    WorkerId,
    build_schedule,
    check_schedule,
    lane_widths,
    lower,
    parse_action,
    stage_layouts,
    sync_layout,
)


def _plan(*replicas: int, micro: int = 4) -> Plan:
    stages = [Stage(start=i, end=i + 1, replicas=r) for i, r in enumerate(replicas)]
    return Plan(stages=stages, micro_batches=micro)


def _lowered(plan: Plan, numel: int, algorithm: str = "pipelined"):
    world = [s.replicas for s in plan.stages]
    layouts = stage_layouts(world, [numel] * len(world), sync_algorithm=algorithm)
    return lower(build_schedule(plan), layouts, sync_algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["pipelined", "naive"])
@pytest.mark.parametrize("replicas", [(1,), (2,), (3, 1), (1, 2, 3), (2, 2, 2, 1)])
@pytest.mark.parametrize("numel", [5, 3_000_000])
def test_lowered_schedules_pass_the_checker(replicas, numel, algorithm) -> None:
    plan = _plan(*replicas, micro=5)
    lowered = _lowered(plan, numel, algorithm)
    check_schedule(lowered, lane_widths(algorithm))
    assert not any(a.op is Op.SYNC for acts in lowered.values() for a in acts)
    for w, acts in lowered.items():
        assert [parse_action(str(a)) for a in acts] == acts  # the text form reads back
        if w != CLIENT:
            assert acts[-1] == Action(Op.REPORT, w.stage, None, w.replica)
    reads = [a for a in lowered[CLIENT] if a.op is Op.READ_REPORT]
    assert len(reads) == plan.num_functions


def test_a_replica_sends_every_peer_its_pieces_and_owns_one_chunk() -> None:
    plan = _plan(3)
    layout = sync_layout(750_001, 3)
    assert layout.pieces == 1  # ~1 MB chunks: one piece each
    acts = _lowered(plan, 750_001)[WorkerId(0, 1)]
    sends = [(a.src, a.dst) for a in acts if a.op is Op.SR_SEND]
    assert sends == [(1, 2), (1, 0)]
    reduces = [a.src for a in acts if a.op is Op.REDUCE]
    assert reduces == [0, 2]  # peers w-1, w-2: the fixed order of the float64 sum
    assert [a.op for a in acts if a.op in (Op.DONE_SEND, Op.DONE_RECV)] == [Op.DONE_SEND]
    zero = _lowered(plan, 750_001)[WorkerId(0, 0)]
    assert [a.src for a in zero if a.op is Op.DONE_RECV] == [1, 2]
    assert zero.index(Action(Op.SYNC_CLEAR, 0)) < zero.index(Action(Op.SYNC_END, 0))


def test_large_gradients_are_cut_into_pieces_of_about_a_megabyte() -> None:
    layout = sync_layout(12_000_000, 2)  # 24 MB chunks of float32
    assert layout.pieces == 24
    assert sum(layout.piece_bytes(c, p) for c in range(2) for p in range(24)) == 48_000_000
    assert sync_layout(12_000_000, 2, subchunks=1).pieces == 1
    assert sync_layout(3, 4).pieces == 1  # fewer values than replicas


def test_sync_lanes_run_inline_for_the_naive_algorithm() -> None:
    assert lane_widths("naive")[Lane.SYNC_UP] == 0
    assert lane_widths("pipelined")[Lane.SYNC_DOWN] == 3
    with pytest.raises(Exception, match="sync_algorithm"):
        lane_widths("ring")


def test_a_stage_with_nothing_to_synchronise_has_no_sync() -> None:
    plan = _plan(2, 2)
    layouts = stage_layouts([2, 2], [0, 10])
    lowered = lower(build_schedule(plan), layouts)
    assert not any(a.op is Op.SYNC_BEGIN for a in lowered[WorkerId(0, 0)])
    assert any(a.op is Op.SYNC_BEGIN for a in lowered[WorkerId(1, 0)])


def test_the_checker_finds_a_lost_piece_of_the_all_reduce() -> None:
    lowered = _lowered(_plan(3), 30)
    acts = lowered[WorkerId(0, 2)]
    acts.remove(next(a for a in acts if a.op is Op.SR_SEND and a.dst == 0))
    with pytest.raises(ScheduleError, match=r"rs of stage 0 from replica 2 for replica 0"):
        check_schedule(lowered)


def test_the_checker_finds_a_missing_report_reader() -> None:
    lowered = _lowered(_plan(1, 1), 10)
    lowered[CLIENT] = [a for a in lowered[CLIENT] if a.op is not Op.READ_REPORT or a.stage]
    with pytest.raises(ScheduleError, match="no function downloads it"):
        check_schedule(lowered)


def test_bad_text_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="is not an action"):
        parse_action("forward 3")
    with pytest.raises(ValueError, match="unknown op 'fly'"):
        parse_action("fly mb1@s0")
