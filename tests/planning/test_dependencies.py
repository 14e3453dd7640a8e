"""Executor, checker and simulator take an action's dependencies from one rule."""

from __future__ import annotations

import pytest

from funcpipe import Plan
from funcpipe.errors import ScheduleError
from funcpipe.planning.profile import Profile
from funcpipe.planning.simulate import predict
from funcpipe.schedule import Action, Op, build_schedule, check_schedule, rules


def _cyclic(action: Action, index) -> list[Action]:
    """The real rule plus one bad edge: a forward that waits for the step at the end."""
    deps = _real(action, index)
    if action.op is Op.FORWARD:
        deps = deps + index.all_of(Op.STEP)
    return deps


_real = rules._deps


def test_a_changed_rule_reaches_checker_walker_and_simulator(
    monkeypatch: pytest.MonkeyPatch, cnn_profile: Profile
) -> None:
    plan = Plan.even(12, stages=2, micro_batches=2)
    check_schedule(build_schedule(plan))
    predict(plan, cnn_profile, "aws-lambda")
    monkeypatch.setattr(rules, "_deps", _cyclic)
    with pytest.raises(ScheduleError, match="deadlock"):
        check_schedule(build_schedule(plan))
    with pytest.raises(ScheduleError, match="listed after it"):
        predict(plan, cnn_profile, "aws-lambda")


def test_the_executor_waits_for_what_the_rule_names() -> None:
    from funcpipe.runtime.executor import Executor
    from funcpipe.schedule import WorkerId

    plan = Plan.even(4, stages=2, micro_batches=2)
    w = WorkerId(1, 0)
    ex = Executor(w, build_schedule(plan)[w], runner=None, storage=None,  # type: ignore[arg-type]
                  replicas=1, timeout_s=1.0)  # fmt: skip
    try:
        backward = Action(Op.BACKWARD, 1, 0)
        assert ex.deps["train"][backward] == [
            Action(Op.FORWARD, 1, 0),
            Action(Op.LOAD_TARGET, 1, 0),
        ]
    finally:
        ex.close()
