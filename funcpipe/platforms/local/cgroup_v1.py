"""cgroup v1 plumbing for the local platform: tiny file helpers, OOM detection, cleanup.

Kept apart from the platform so the process logic reads without the sysfs details.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def write_value(path: str, value: object) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def was_oom_killed(cgroup: str) -> bool:
    """Whether the kernel's OOM killer struck in `cgroup`.

    memory.oom_control counts kills (Linux >= 4.13); older kernels only tell us that the group
    hit its limit (failcnt) and how close it got (max usage), which together mean the same.
    """
    text = read_text(os.path.join(cgroup, "memory.oom_control")) or ""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value) > 0
    failcnt = read_int(os.path.join(cgroup, "memory.failcnt")) or 0
    peak = read_int(os.path.join(cgroup, "memory.max_usage_in_bytes")) or 0
    limit = read_int(os.path.join(cgroup, "memory.limit_in_bytes")) or 0
    return failcnt > 0 and limit > 0 and peak >= 0.95 * limit


def cgroup_pids(cgroup: str) -> list[int]:
    text = read_text(os.path.join(cgroup, "cgroup.procs")) or ""
    return [int(p) for p in text.split()]


def controller_writable(root: str, controller: str, probe: str) -> bool:
    """Whether we can create groups under ``<root>/<controller>/funcpipe`` and set `probe` there."""
    mount = os.path.join(root, controller)
    if not os.path.isfile(os.path.join(mount, probe)):
        return False
    try:
        os.makedirs(os.path.join(mount, "funcpipe"), exist_ok=True)
    except OSError:
        return False
    return os.access(os.path.join(mount, "funcpipe", probe), os.W_OK)


def remove_cgroup(path: str, timeout: float = 1.0) -> bool:
    """Kill what is left in `path` and rmdir it; retries briefly while the kernel lets go."""
    if not os.path.isdir(path):
        return True
    end = time.monotonic() + timeout
    while True:
        for sub in os.scandir(path):
            if sub.is_dir(follow_symlinks=False):
                remove_cgroup(sub.path, timeout)
        for pid in cgroup_pids(path):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(controller_dir: str) -> None:
    """Remove empty ``funcpipe/<pid>-<token>`` groups whose owning caller process is gone.

    Functions of a dead caller die with it (PR_SET_PDEATHSIG), leaving empty groups. The sweep
    never kills: a pid we cannot see may belong to a caller in another pid namespace, and a
    group that still holds processes refuses rmdir anyway.
    """
    with contextlib.suppress(OSError):
        for entry in os.scandir(controller_dir):
            pid_text = entry.name.partition("-")[0]
            if entry.is_dir() and pid_text.isdigit() and not pid_alive(int(pid_text)):
                with contextlib.suppress(OSError):
                    for leaf in os.scandir(entry.path):
                        if leaf.is_dir(follow_symlinks=False):
                            os.rmdir(leaf.path)
                    os.rmdir(entry.path)
