"""The walker: the one statement of how a function goes through its list."""

from __future__ import annotations

import pytest

from funcpipe import Plan, Stage
from funcpipe.errors import ScheduleError
from funcpipe.schedule import Action, Do, Lane, Op, WorkerId, build_schedule, lane_widths, walk

A = Action


def _walked(actions, widths=None, overlap=True) -> list[tuple[str, str]]:
    widths = lane_widths() if widths is None else widths
    return [(i.do.value, str(i.action)) for i in walk(actions, widths, overlap=overlap)]


def test_transfers_are_queued_and_compute_waits_only_for_its_inputs() -> None:
    plan = Plan(stages=[Stage(start=0, end=1), Stage(start=1, end=2)], micro_batches=2)
    acts = build_schedule(plan)[WorkerId(1, 0)]
    assert _walked(acts) == [
        ("submit", "recv_act mb0@s1"),
        ("submit", "recv_act mb1@s1"),
        ("submit", "load_target mb0@s1"),
        ("submit", "load_target mb1@s1"),
        ("await", "recv_act mb0@s1"),
        ("run", "forward mb0@s1"),
        ("await", "recv_act mb1@s1"),
        ("run", "forward mb1@s1"),
        ("await", "load_target mb1@s1"),
        ("run", "backward mb1@s1"),
        ("submit", "send_grad mb1@s1"),
        ("await", "load_target mb0@s1"),
        ("run", "backward mb0@s1"),
        ("submit", "send_grad mb0@s1"),
        ("run", "step@s1"),
        ("await", "send_grad mb1@s1"),
        ("await", "send_grad mb0@s1"),
    ]


def test_without_overlap_every_transfer_is_awaited_where_it_is_listed() -> None:
    acts = [A(Op.LOAD_INPUT, 0, 0), A(Op.FORWARD, 0, 0), A(Op.SEND_ACT, 0, 0)]
    assert _walked(acts, overlap=False) == [
        ("submit", "load_input mb0@s0"),
        ("await", "load_input mb0@s0"),
        ("run", "forward mb0@s0"),
        ("submit", "send_act mb0@s0"),
        ("await", "send_act mb0@s0"),
    ]


def test_a_lane_of_width_zero_runs_inline() -> None:
    acts = [A(Op.SYNC_BEGIN, 0), A(Op.SR_SEND, 0, None, 0, 1, 0), A(Op.SR_RECV, 0, None, 1, 0, 0)]
    widths = lane_widths("naive")
    assert [i.do for i in walk(acts, widths)] == [Do.RUN, Do.RUN, Do.RUN]
    assert widths[Lane.UPLOAD] == 1


def test_a_dependency_listed_after_its_user_is_an_error() -> None:
    acts = [A(Op.FORWARD, 0, 0), A(Op.LOAD_INPUT, 0, 0)]
    with pytest.raises(ScheduleError, match="listed after it"):
        list(walk(acts, lane_widths()))
