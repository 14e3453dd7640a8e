"""How functions fail, said once for every platform: the failed states and which errors pass.

Each platform detects a failure its own way (a report over a pipe, a status record in storage, a
Lithops future) and builds the state with these functions, so a time-out reads the same on all
of them. What kind of failure it was travels as data, set where it is detected: the state's
``reason``, and ``transient`` for an error a relaunch may cure, decided from the exception
itself by :func:`is_transient`, never read back out of the message.
"""

from __future__ import annotations

from funcpipe.platforms.base import FunctionSpec, InvocationState, Reason, Status

__all__ = [
    "TRANSIENT_ERRORS",
    "cancelled",
    "during",
    "is_transient",
    "out_of_memory",
    "raised",
    "timed_out",
]

#: Exceptions of storage and network trouble, by class name: a function that raised one of
#: them (or raised while handling one) may well succeed when relaunched; any other error is its
#: code's own and would recur. Names, not classes: the function side may not have the client
#: libraries (botocore, urllib3) that define some of them.
TRANSIENT_ERRORS = frozenset(
    {
        "StorageTimeout",
        "StorageError",
        "ConnectionError",
        "ConnectionResetError",
        "TimeoutError",
        "BrokenPipeError",
        "EndpointConnectionError",
        "ReadTimeoutError",
    }
)

TIMEOUT_FIX = "give it a longer timeout_s or less work per function"
MEMORY_FIX = "raise memory_mb or give the stage less work"


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception its traceback shows it came from, is in TRANSIENT_ERRORS.

    Walks the chain a printed traceback shows (the cause, else the context unless suppressed),
    and matches each exception's own class name, not its bases: a KeyNotFound is a StorageError,
    but a missing key stays missing after a relaunch.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in TRANSIENT_ERRORS:
            return True
        if exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            exc = None if exc.__suppress_context__ else exc.__context__
    return False


def during(activity: str | None) -> str:
    """`` during 'forward mb 2'``: where the function was, when the platform knows."""
    return f" during {activity!r}" if activity else ""


def timed_out(
    spec: FunctionSpec,
    how: str = "",
    *,
    activity: str | None = None,
    peak_mb: float | None = None,
    where_logs: str = "",
) -> InvocationState:
    """The function ran past ``spec.timeout_s``; ``how`` says what became of it, as it follows
    the sentence (" and was killed")."""
    logs = f"; {where_logs}" if where_logs else ""
    return InvocationState(
        Status.FAILED,
        Reason.TIMEOUT,
        f"function {spec.name!r} ran past its timeout of {spec.timeout_s:g} s{during(activity)}"
        f"{how}; {TIMEOUT_FIX}{logs}",
        peak_mb,
        activity,
    )


def out_of_memory(
    spec: FunctionSpec,
    how: str = "",
    *,
    activity: str | None = None,
    peak_mb: float | None = None,
    detail: str = "",
) -> InvocationState:
    """The function went over ``spec.memory_mb``; ``how`` follows the sentence (" and was
    killed by the kernel"), ``detail`` (the function's own report) goes below it."""
    peak = f" (peak {peak_mb:.0f} MB)" if peak_mb is not None else ""
    below = f"\n{detail}" if detail else ""
    return InvocationState(
        Status.FAILED,
        Reason.MEMORY,
        f"function {spec.name!r} exceeded its memory cap of {spec.memory_mb} MB{peak}"
        f"{during(activity)}{how}; {MEMORY_FIX}{below}",
        peak_mb,
        activity,
    )


def raised(
    spec: FunctionSpec,
    traceback: str,
    *,
    transient: bool = False,
    activity: str | None = None,
    peak_mb: float | None = None,
) -> InvocationState:
    """The function's own code raised; ``traceback`` is the function's, as it printed it."""
    return InvocationState(
        Status.FAILED,
        Reason.ERROR,
        f"function {spec.name!r} raised{during(activity)}:\n{traceback}",
        peak_mb,
        activity,
        transient,
    )


def cancelled(
    spec: FunctionSpec,
    why: str = "",
    *,
    activity: str | None = None,
    peak_mb: float | None = None,
) -> InvocationState:
    """The client stopped the function; ``why`` completes the sentence (" because ...")."""
    return InvocationState(
        Status.CANCELLED,
        Reason.CANCELLED,
        f"function {spec.name!r} was cancelled{why}{during(activity)}",
        peak_mb,
        activity,
    )
