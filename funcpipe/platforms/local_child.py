"""The function side of the local platform: what a forked child does before and around `target`.

It applies the memory cap, CPU share and time limit to itself, runs the function, and reports
the outcome to the parent as a small JSON message over a pipe (never pickled). Activity labels
go through a shared mapping so the parent can still read the last one after a kill.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import re
import resource
import signal
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from funcpipe.platforms import base
from funcpipe.platforms.cgroup_v1 import (
    read_text,
    write_value,
)

MAX_REPORT_BYTES = 60_000  # below the 64 KiB pipe buffer, so the child never blocks on its report
_MB = 1024 * 1024
_M_ARENA_MAX = -8  # glibc mallopt parameter
_ALLOC_RE = re.compile(r"tried to allocate (\d+) bytes")


# --- activity labels shared through an anonymous shared mapping --------------------------------
# Two slots, each a uint32 sequence (odd while the child writes it), a uint16 length, then UTF-8
# bytes. Label n goes to slot n % 2 with final sequence 2n, so while one slot is being written the
# other still holds the previous label: a kill mid-write never loses the last finished label.
ACT_SIZE = 1024
_SLOT = ACT_SIZE // 2
_ACT_HEADER = struct.Struct("<IH")
_ACT_MAX = _SLOT - 8


def _activity_writer(buf: mmap.mmap) -> Callable[[str], None]:
    count = [0]

    def write(label: str) -> None:
        data = str(label).encode("utf-8", "replace")[:_ACT_MAX]
        count[0] += 1
        at = _SLOT * (count[0] % 2)
        _ACT_HEADER.pack_into(buf, at, 2 * count[0] - 1, 0)
        buf[at + 8 : at + 8 + len(data)] = data
        _ACT_HEADER.pack_into(buf, at, 2 * count[0], len(data))

    return write


def read_activity(buf: mmap.mmap) -> str | None:
    """The newest finished label, or None before the first one (or after 100 torn reads)."""
    for _ in range(100):
        newest: tuple[int, bytes] | None = None
        written = False
        for at in (0, _SLOT):
            seq, length = _ACT_HEADER.unpack_from(buf, at)
            written = written or seq > 0
            if seq == 0 or seq % 2:
                continue
            data = bytes(buf[at + 8 : at + 8 + length])
            if _ACT_HEADER.unpack_from(buf, at)[0] == seq and (newest is None or seq > newest[0]):
                newest = (seq, data)
        if newest is not None:
            return newest[1].decode("utf-8", "ignore")
        if not written:
            return None
    return None


# --- the child side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSetup:
    """Everything the child applies to itself before running the target."""

    name: str
    memory_mb: int
    timeout_s: float
    mem_cgroup: str | None
    cpu_cgroup: str | None
    rlimit: bool
    cpu_cores: list[int] | None  # affinity fallback
    torch_threads: int
    parent_pid: int
    kill_with_parent: bool


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


def _send_report(fd: int, report: dict) -> None:
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


def _set_parent_death_signal(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _apply_limits(setup: ChildSetup) -> None:
    """Enter cgroups first (before any allocation), then the rest of the sandbox."""
    pid = os.getpid()
    if setup.mem_cgroup:
        write_value(os.path.join(setup.mem_cgroup, "cgroup.procs"), pid)
    if setup.cpu_cgroup:
        write_value(os.path.join(setup.cpu_cgroup, "cgroup.procs"), pid)
    with contextlib.suppress(OSError):
        os.setpgid(
            0, 0
        )  # own process group: kill takes grandchildren too, Ctrl-C stays with caller
    if setup.kill_with_parent:
        _set_parent_death_signal(setup.parent_pid)
    if setup.rlimit:
        # glibc reserves 64 MB of address space per malloc arena (one per thread by default);
        # under an address-space cap that would starve a threaded function, so share two.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
        vm_kb = _status_kb("VmSize") or 0
        cap = vm_kb * 1024 + setup.memory_mb * _MB
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if setup.cpu_cores:
        os.sched_setaffinity(0, setup.cpu_cores)
    threads = str(setup.torch_threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = threads
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(setup.torch_threads)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the caller's handler is not the function's
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, setup.timeout_s)


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


def child_main(
    setup: ChildSetup, target: Callable[[], None], report_fd: int, act: mmap.mmap
) -> None:
    """Body of the forked process; never returns (os._exit skips the caller's atexit hooks)."""
    code = 1
    try:
        try:
            _apply_limits(setup)
        except BaseException as exc:  # noqa: BLE001 - any failure here must be reported, not raised
            _send_report(
                report_fd,
                {
                    "kind": "setup",
                    "message": f"could not set up its sandbox: {exc!r}\n{traceback.format_exc()}",
                },
            )
            return
        base._install_activity_sink(_activity_writer(act))
        rss_start = _status_kb("VmRSS") or 0
        report: dict = {"kind": "ok"}
        try:
            target()
            code = 0
        except SystemExit as exc:
            if exc.code in (None, 0):
                code = 0
            else:
                report = {"kind": "error", "message": f"called sys.exit({exc.code!r})"}
        except BaseException as exc:  # noqa: BLE001 - the whole point is to report everything
            kind = "memory" if _is_memory_error(exc, setup.rlimit) else "error"
            report = {"kind": kind, "message": traceback.format_exc(), "exc": repr(exc)[:2000]}
            match = _ALLOC_RE.search(str(exc))
            if match:
                report["tried_bytes"] = int(match.group(1))
        hwm = _status_kb("VmHWM")
        if hwm is not None:
            report["peak_mb"] = max(0, hwm - rss_start) / 1024
        _send_report(report_fd, report)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
