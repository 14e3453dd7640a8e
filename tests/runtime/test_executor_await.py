"""A storage wait's own timeout reaches the caller unchanged, with its key and true duration."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from funcpipe.errors import StorageTimeout
from funcpipe.runtime.executor import Executor
from funcpipe.runtime.schedule import Action, Op, WorkerId


def test_storage_timeout_is_not_rewritten() -> None:
    ex = Executor.__new__(Executor)  # only _await's fields are needed
    ex.worker, ex.actions, ex.timeout_s = WorkerId(1, 0), [Action(Op.STEP, 1)], 0.1
    fut: Future[None] = Future()
    fut.set_exception(StorageTimeout("timed out after 0.1 s waiting for storage key 'k'"))
    with pytest.raises(StorageTimeout, match="after 0.1 s waiting for storage key 'k'"):
        ex._await(fut, Action(Op.RECV_ACT, 1, 0))


def test_a_lane_that_never_finishes_is_reported_with_its_wait() -> None:
    ex = Executor.__new__(Executor)
    ex.worker, ex.actions, ex.timeout_s = WorkerId(1, 0), [], -29.8  # bound = 0.2 s
    with pytest.raises(StorageTimeout, match=r"stage1-replica0: recv_act mb0@s1 did not finish"):
        ex._await(Future(), Action(Op.RECV_ACT, 1, 0))
