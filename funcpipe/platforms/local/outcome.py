"""How a local function ended, from what its parent saw: its report, exit status and cgroup.

The child reports its own outcome (ok, error with traceback, memory) as JSON over a pipe; a
process that was killed reports nothing, and then its exit status, the parent's own kill and
the kernel's OOM count say what happened.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from typing import Any

from funcpipe.platforms import failures
from funcpipe.platforms.base import FunctionSpec, InvocationState, Reason, Status

__all__ = ["Ending", "classify", "parse_report"]

_MB = 1024 * 1024


def parse_report(data: bytes | bytearray) -> dict[str, Any]:
    """The child's JSON report; a report cut short by a kill is kept as text."""
    if not data:
        return {}
    try:
        report = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return {"kind": "garbled", "message": data.decode("utf-8", "replace")[-4000:]}
    return report if isinstance(report, dict) else {}


@dataclass(frozen=True)
class Ending:
    """What the parent knows of a function that is gone."""

    spec: FunctionSpec
    exitcode: int | None  # Popen's convention: minus the signal that ended it
    killed_for: str | None  # "timeout" | "cancelled" when the parent sent the SIGKILL
    rlimit: bool  # its memory was capped by RLIMIT_AS
    report: dict[str, Any]
    activity: str | None
    peak_mb: float | None
    oom: bool  # the kernel's OOM killer struck in its memory group


def classify(end: Ending) -> InvocationState:
    """The final state of a function that is gone (or was just killed)."""
    spec, code, report, activity, peak = (
        end.spec,
        end.exitcode,
        end.report,
        end.activity,
        end.peak_mb,
    )
    kind = report.get("kind")
    if end.killed_for == "cancelled":
        return failures.cancelled(spec, activity=activity, peak_mb=peak)
    if end.killed_for == "timeout" or code == -signal.SIGALRM:
        return failures.timed_out(spec, " and was killed", activity=activity, peak_mb=peak)
    if kind == "ok" and code == 0:
        return InvocationState(Status.SUCCEEDED, None, None, peak, activity)
    if kind == "memory":
        tried = report.get("tried_bytes")
        tried_text = f": it tried to allocate {tried} bytes ({tried / _MB:.0f} MB)" if tried else ""
        return failures.out_of_memory(
            spec, tried_text, activity=activity, peak_mb=peak, detail=report.get("message", "")
        )
    if kind in ("error", "setup"):
        return failures.raised(
            spec,
            report.get("message", ""),
            transient=bool(report.get("transient")),
            activity=activity,
            peak_mb=peak,
        )
    if code == 0:  # the target ended the process itself with status 0
        return InvocationState(Status.SUCCEEDED, None, None, peak, activity)
    if code is not None and code < 0:
        sig = -code
        if sig == signal.SIGKILL and end.oom:
            return failures.out_of_memory(
                spec, " and was killed by the kernel", activity=activity, peak_mb=peak
            )
        return InvocationState(
            Status.FAILED,
            Reason.CRASH,
            f"function {spec.name!r} was killed by signal {signal.Signals(sig).name} ({sig})"
            f"{failures.during(activity)}",
            peak,
            activity,
        )
    status = "unknown" if code is None else str(code)
    tail = f":\n{report['message']}" if report.get("message") else ""
    hint = (
        " (its address space is capped by RLIMIT_AS, so a failed allocation or thread start in "
        "native code may have ended it; raise memory_mb)"
        if end.rlimit
        else ""
    )
    return InvocationState(
        Status.FAILED,
        Reason.CRASH,
        f"function {spec.name!r} exited with status {status}{failures.during(activity)} "
        f"without reporting a result{hint}{tail}",
        peak,
        activity,
    )
