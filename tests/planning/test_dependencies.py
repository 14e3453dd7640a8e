"""Executor, checker and simulator take an action's dependencies from one function."""

from __future__ import annotations

import pytest

from funcpipe import Plan
from funcpipe.errors import ScheduleError
from funcpipe.planning import simulate
from funcpipe.planning.profile import Profile
from funcpipe.runtime import check, executor, schedule
from funcpipe.runtime.schedule import Action, Op, build_schedule


def test_all_three_use_schedule_local_deps() -> None:
    assert executor.local_deps is schedule.local_deps
    assert check.local_deps is schedule.local_deps
    assert simulate.local_deps is schedule.local_deps


def _cyclic(action: Action, actions: list[Action]) -> list[Action]:
    """The real rule plus one bad edge: a forward that waits for the step at the end."""
    deps = schedule.local_deps(action, actions)
    if action.op is Op.FORWARD:
        deps = deps + [a for a in actions if a.op is Op.STEP]
    return deps


def test_a_changed_rule_reaches_checker_and_simulator(
    monkeypatch: pytest.MonkeyPatch, cnn_profile: Profile
) -> None:
    plan = Plan.even(12, stages=2, micro_batches=2)
    check.check_schedule(build_schedule(plan))
    simulate.predict(plan, cnn_profile, "aws-lambda")
    monkeypatch.setattr(check, "local_deps", _cyclic)
    monkeypatch.setattr(simulate, "local_deps", _cyclic)
    with pytest.raises(ScheduleError, match="deadlock"):
        check.check_schedule(build_schedule(plan))
    with pytest.raises(ScheduleError, match="never finished"):
        simulate.predict(plan, cnn_profile, "aws-lambda")


def test_executor_waits_for_what_local_deps_names(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Action] = []

    def spy(action: Action, actions: list[Action]) -> list[Action]:
        seen.append(action)
        return schedule.local_deps(action, actions)

    monkeypatch.setattr(executor, "local_deps", spy)
    plan = Plan.even(4, stages=2, micro_batches=2)
    w = schedule.WorkerId(1, 0)
    ex = executor.Executor(w, build_schedule(plan)[w], runner=None, storage=None,  # type: ignore[arg-type]
                           replicas=1, timeout_s=1.0)  # fmt: skip
    try:
        assert {a for a in seen} == {
            a for a in build_schedule(plan)[w] if a.lane.value == "compute"
        }
        backward = Action(Op.BACKWARD, 1, 0)
        expected = [Action(Op.FORWARD, 1, 0), Action(Op.LOAD_TARGET, 1, 0)]
        assert ex.deps["train"][backward] == expected
    finally:
        ex.close()
