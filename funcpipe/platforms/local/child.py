"""The function side of the local platform: a fresh interpreter that runs one payload.

The parent has already put the process in its cgroups and armed its time limit before exec, so
the interpreter, its imports and everything the function loads count, as on Lambda. Here it
applies what is left (address-space cap, CPU affinity), watches its resident set, runs the
payload, and reports the outcome to the parent as a small JSON message over a pipe (never
pickled). Activity labels go through a shared mapping (:mod:`.activity`) so the parent can still
read the last one after a kill.

A fresh interpreter starts here through ``python -m funcpipe.platforms.local_child``; a forked
one (:mod:`.forkserver`) calls :func:`main`.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import mmap
import os
import re
import resource
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from funcpipe.platforms.failures import is_transient
from funcpipe.platforms.local.activity import ACT_SIZE, activity_writer
from funcpipe.platforms.local.cgroup_v1 import read_text
from funcpipe.runtime.activity import _install_activity_sink

MAX_REPORT_BYTES = 60_000  # below the 64 KiB pipe buffer, so the child never blocks on its report
_MB = 1024 * 1024
_M_ARENA_MAX = -8  # glibc mallopt parameter
_ALLOC_RE = re.compile(r"tried to allocate (\d+) bytes")


@dataclass(frozen=True)
class ChildSetup:
    """What the new interpreter applies to itself before running the payload (sent as JSON)."""

    name: str
    memory_mb: int
    timeout_s: float
    rlimit: bool
    watch_memory: bool  # kill past the cap on resident set size (all modes but "none")
    cpu_cores: list[int] | None  # affinity fallback
    torch_threads: int
    report_fd: int
    activity_fd: int
    payload_fd: int
    invoked_at: float  # wall clock when the parent started the process (cold start begins)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _status_kb(field_name: str) -> int | None:
    text = read_text("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def _cut_middle(text: str, keep: int) -> str:
    """Keep the head and the tail of `text` (the tail of a traceback names the error)."""
    if len(text) <= keep:
        return text
    half = max(keep // 2, 1)
    return f"{text[:half]}\n... {len(text) - 2 * half} characters cut ...\n{text[-half:]}"


def send_report(fd: int, report: dict) -> None:
    """Write the JSON report; it is kept under the pipe buffer so the write never blocks."""
    message = report.get("message") or ""
    data = json.dumps(report, ensure_ascii=False).encode("utf-8")
    budget = len(message)
    while len(data) > MAX_REPORT_BYTES and budget > 0:
        budget = int(budget * MAX_REPORT_BYTES / len(data) * 0.9)
        report["message"] = _cut_middle(message, budget)
        data = json.dumps(report, ensure_ascii=False).encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def set_parent_death_signal() -> None:
    """SIGKILL this process when the thread that started it exits (survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _apply_limits(setup: ChildSetup) -> None:
    """Limits the parent could not set before exec (cgroups, time limit and group are set)."""
    if setup.rlimit:
        # An address-space cap cannot tell torch's huge virtual reservations from real use, so
        # this fallback caps growth past the loaded runtime (cgroups cap the whole process).
        import torch  # noqa: F401

        # glibc reserves 64 MB of address space per malloc arena (one per thread by default);
        # under an address-space cap that would starve a threaded function, so share two.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
        vm_kb = _status_kb("VmSize") or 0
        cap = vm_kb * 1024 + setup.memory_mb * _MB
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if setup.cpu_cores:
        os.sched_setaffinity(0, setup.cpu_cores)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(setup.torch_threads)


def _is_memory_error(exc: BaseException, rlimit: bool) -> bool:
    """Whether `exc` means the function ran out of its memory (or, under rlimit, address space)."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    if "can't allocate memory" in text or "DefaultCPUAllocator" in text:
        return True
    return rlimit and ("std::bad_alloc" in text or "can't start new thread" in text)


_report_lock = threading.Lock()
# The high-water mark catches any spike between two samples, so the interval only delays the
# kill, and the resident set grows past the cap until then. Each sample costs the function's
# core about 0.3 ms (reading /proc, taking the GIL from the training thread): at 10 ms that was
# 3 % of a one-core function's CPU. So the watch samples every 50 ms while the cap is far, and
# sooner as it nears: never later than the fastest a process fills memory (one thread faults in
# fresh pages at about 2.4 GB/s on the project's VM; the rate below leaves room for more)
# could take it to the cap, and never sooner than 5 ms, which bounds the overshoot to a few MB.
WATCH_INTERVAL_S = 0.05
MIN_WATCH_INTERVAL_S = 0.005
FILL_KB_PER_S = 4 * 1024 * 1024


def watch_interval_s(headroom_kb: float) -> float:
    """Seconds until the next sample of a resident set ``headroom_kb`` below its cap."""
    return min(WATCH_INTERVAL_S, max(MIN_WATCH_INTERVAL_S, headroom_kb / FILL_KB_PER_S))


def _watch_memory(setup: ChildSetup, baseline_kb: int, report_fd: int) -> None:
    """Kill this function once its resident set has passed its cap, as Lambda does.

    The kernel's cgroup charges only pages this process faulted in first; shared libraries
    already cached by other processes are not charged to it, yet a Lambda pays for them. The
    high-water mark catches a spike that came and went between two samples.
    """
    cap_kb = setup.memory_mb * 1024
    while True:
        hwm = _status_kb("VmHWM")
        headroom_kb = cap_kb if hwm is None else cap_kb - (hwm - baseline_kb)
        if hwm is not None and headroom_kb < 0:
            with _report_lock:
                send_report(
                    report_fd,
                    {
                        "kind": "memory",
                        "peak_mb": hwm / 1024,
                        "message": f"its resident set reached {hwm / 1024:.0f} MB "
                        "(interpreter, libraries and data)",
                    },
                )
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(watch_interval_s(headroom_kb))


def _read_payload(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


def main(argv: list[str] | None = None) -> None:
    """Body of the function's fresh interpreter; never returns (os._exit skips atexit hooks)."""
    setup = ChildSetup(**json.loads((argv or sys.argv)[1]))
    code = 1
    try:
        act = mmap.mmap(setup.activity_fd, ACT_SIZE)
        try:
            payload = _read_payload(setup.payload_fd)
            _apply_limits(setup)
            baseline = (_status_kb("VmHWM") or 0) if setup.rlimit else 0
            if setup.watch_memory:
                threading.Thread(
                    target=_watch_memory,
                    args=(setup, baseline, setup.report_fd),
                    name="memory-watch",
                    daemon=True,
                ).start()
        except BaseException as exc:  # noqa: BLE001 - any failure here must be reported, not raised
            send_report(
                setup.report_fd,
                {
                    "kind": "setup",
                    "message": f"could not set up its sandbox: {exc!r}\n{traceback.format_exc()}",
                },
            )
            return
        _install_activity_sink(activity_writer(act))
        report: dict = {"kind": "ok"}
        try:
            from funcpipe.runtime.function import run

            run(payload, allow_call=True, invoked_at=setup.invoked_at)
            code = 0
        except SystemExit as exc:
            if exc.code in (None, 0):
                code = 0
            else:
                report = {"kind": "error", "message": f"called sys.exit({exc.code!r})"}
        except BaseException as exc:  # noqa: BLE001 - the whole point is to report everything
            kind = "memory" if _is_memory_error(exc, setup.rlimit) else "error"
            report = {
                "kind": kind,
                "message": traceback.format_exc(),
                "exc": repr(exc)[:2000],
                "transient": is_transient(exc),
            }
            match = _ALLOC_RE.search(str(exc))
            if match:
                report["tried_bytes"] = int(match.group(1))
        hwm = _status_kb("VmHWM")
        if hwm is not None:
            report["peak_mb"] = hwm / 1024  # the whole process, interpreter included, as Lambda
        with _report_lock:
            send_report(setup.report_fd, report)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
