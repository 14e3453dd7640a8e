"""The parent's record of one local function: its process, report pipe, label and cgroups.

A run reads what its function reported so far without blocking, knows the function's newest
label and peak memory, kills it, and, once it is gone, turns what is known into the final state
and frees everything it held. :func:`close_runs` does that for every run of a platform at once.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import threading
from dataclasses import dataclass, field

from funcpipe.platforms import failures
from funcpipe.platforms.base import Invocation, InvocationState
from funcpipe.platforms.local.activity import read_activity
from funcpipe.platforms.local.caps import MB
from funcpipe.platforms.local.cgroup_v1 import read_int, remove_cgroup, was_oom_killed
from funcpipe.platforms.local.outcome import Ending, classify, parse_report
from funcpipe.platforms.local.spawn import LocalProcess

__all__ = ["REAP_TIMEOUT_S", "Run", "close_runs"]

REAP_TIMEOUT_S = 5.0  # how long to wait for a SIGKILLed process to disappear


@dataclass
class Run:
    """Parent-side bookkeeping of one invocation."""

    inv: Invocation
    process: LocalProcess
    report_fd: int | None
    activity: mmap.mmap | None
    deadline: float  # monotonic clock
    mem_cgroup: str | None
    cpu_cgroup: str | None
    rlimit: bool = False
    report_bytes: bytearray = field(default_factory=bytearray)
    killed_for: str | None = None  # "timeout" | "cancelled" when we sent the SIGKILL
    final: InvocationState | None = None
    last_activity: str | None = None

    def drain(self) -> None:
        """Read what the child has written so far, without blocking."""
        while self.report_fd is not None:
            try:
                chunk = os.read(self.report_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                os.close(self.report_fd)
                self.report_fd = None
                return
            self.report_bytes += chunk

    def label(self) -> str | None:
        """The function's newest label; a read that finds none keeps the one known before."""
        label = read_activity(self.activity) if self.activity is not None else None
        if label is not None:
            self.last_activity = label
        return self.last_activity

    def peak_mb(self) -> float | None:
        """The memory group's high-water mark (None without one)."""
        if self.mem_cgroup is None:
            return None
        peak = read_int(os.path.join(self.mem_cgroup, "memory.max_usage_in_bytes"))
        return None if peak is None else peak / MB

    def kill(self, why: str) -> None:
        """SIGKILL the function and its process group, and wait for it to be gone."""
        self.killed_for = why
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.join(REAP_TIMEOUT_S)

    def finish(self) -> InvocationState:
        """Turn a process that is gone (or was just killed) into its final state, then clean up."""
        self.drain()
        activity = self.label()
        peak = self.peak_mb()
        report = parse_report(self.report_bytes)
        if report.get("peak_mb") is not None:
            peak = max(peak or 0.0, float(report["peak_mb"]))
        self.final = classify(
            Ending(
                spec=self.inv.spec,
                exitcode=self.process.exitcode,
                killed_for=self.killed_for,
                rlimit=self.rlimit,
                report=report,
                activity=activity,
                peak_mb=peak,
                oom=self.mem_cgroup is not None and was_oom_killed(self.mem_cgroup),
            )
        )
        self.release()
        return self.final

    def release(self) -> None:
        """Free the pipe, the shared label and the cgroups of a finished invocation."""
        if self.report_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.report_fd)
            self.report_fd = None
        if self.activity is not None:
            self.activity.close()
            self.activity = None
        for cg in (self.mem_cgroup, self.cpu_cgroup):
            if cg:
                remove_cgroup(cg)
        with contextlib.suppress(ValueError):
            self.process.close()


def close_runs(runs: dict[int, Run], lock: threading.RLock, info: tuple[int, list[str]]) -> None:
    """Kill all running functions and remove the platform's cgroups (close/atexit/GC).

    ``info``: the platform's owner process (a fork of it does nothing) and its cgroup folders.
    """
    owner_pid, group_dirs = info
    if os.getpid() != owner_pid:
        return
    with lock:
        for run in runs.values():
            if run.final is not None:
                continue
            run.killed_for = "cancelled"
            with contextlib.suppress(OSError):
                os.killpg(run.process.pid, signal.SIGKILL)
            with contextlib.suppress(OSError, ValueError):
                run.process.kill()
        for run in runs.values():
            if run.final is None:
                with contextlib.suppress(ValueError):
                    run.process.join(REAP_TIMEOUT_S)
                run.final = failures.cancelled(
                    run.inv.spec, " because its platform closed", activity=run.label()
                )
                run.release()
        for path in group_dirs:
            remove_cgroup(path)
