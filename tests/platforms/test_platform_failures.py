"""Failure kinds as data: which errors a relaunch may cure, and the one wording of each state."""

from __future__ import annotations

import json

import pytest

from funcpipe.errors import KeyNotFound, StorageError, StorageTimeout, StorageUnavailable
from funcpipe.platforms import FunctionSpec, Status
from funcpipe.platforms.base import Reason
from funcpipe.platforms.failures import cancelled, is_transient, out_of_memory, raised, timed_out
from funcpipe.storage.retry import Transient

SPEC = FunctionSpec("stage1-replica0", 1024, 60)


class EndpointConnectionError(Exception):
    """Stands in for botocore's: matched by name, the client library need not be installed."""


def _raised(outer: type[BaseException], inner: BaseException | None, how: str) -> BaseException:
    """``outer`` raised with ``inner`` as its cause ("from"), its context ("during") or neither."""
    try:
        try:
            if inner is not None:
                raise inner
        except BaseException as first:
            if how == "from":
                raise outer("outer") from first
            if how == "from None":
                raise outer("outer") from None
            raise outer("outer")  # noqa: B904 - the context is what is tested
        raise outer("outer")
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (StorageError("S3 PUT failed"), True),
        (StorageTimeout("waiting for key"), True),
        (ConnectionResetError("reset"), True),
        (BrokenPipeError("pipe"), True),
        (TimeoutError("slow"), True),
        (EndpointConnectionError("no route"), True),
        (ValueError("bad shape"), False),
        (MemoryError(), False),
        # A subclass counts by its own name only: a missing key stays missing after a relaunch,
        # and retries that ran out of time on injected faults named nothing more.
        (KeyNotFound("storage key 'a' not found"), False),
        (_raised(StorageUnavailable, Transient("503"), "from"), False),
        (_raised(StorageUnavailable, EndpointConnectionError("x"), "from"), True),
        (_raised(RuntimeError, ConnectionResetError("x"), "during"), True),
        (_raised(RuntimeError, ConnectionResetError("x"), "from None"), False),
        (_raised(RuntimeError, None, "during"), False),
    ],
)
def test_transient_errors_are_storage_and_network_trouble(
    exc: BaseException, transient: bool
) -> None:
    assert is_transient(exc) is transient


def test_a_cycle_of_contexts_ends() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not is_transient(a)


def test_each_state_reads_the_same_on_every_platform() -> None:
    st = timed_out(SPEC, " and was killed", activity="forward mb 2")
    assert (st.status, st.reason) == (Status.FAILED, Reason.TIMEOUT)
    assert st.message == (
        "function 'stage1-replica0' ran past its timeout of 60 s during 'forward mb 2' and was "
        "killed; give it a longer timeout_s or less work per function"
    )
    st = out_of_memory(SPEC, peak_mb=1100.4, detail="its resident set reached 1100 MB")
    assert st.reason == "memory" and st.peak_memory_mb == 1100.4
    assert st.message == (
        "function 'stage1-replica0' exceeded its memory cap of 1024 MB (peak 1100 MB); raise "
        "memory_mb or give the stage less work\nits resident set reached 1100 MB"
    )
    st = raised(SPEC, "Traceback ...\nValueError: x", transient=False)
    assert st.message == "function 'stage1-replica0' raised:\nTraceback ...\nValueError: x"
    st = cancelled(SPEC, " (its abort key could not be written: down)")
    assert (st.status, st.reason) == (Status.CANCELLED, "cancelled")


def test_a_reason_is_its_plain_string() -> None:
    assert Reason.MEMORY == "memory" and f"{Reason.CRASH}" == "crash" == str(Reason.CRASH)
    assert json.dumps({"reason": Reason.TIMEOUT}) == '{"reason": "timeout"}'
    assert Reason("error") is Reason.ERROR
