"""Starting a local function's process: a fresh interpreter (the default) or a fork server's child.

Either way the process receives only its payload (in an anonymous in-memory file), its report
pipe and its activity mapping, and enters its sandbox before anything of the function runs: its
cgroups, its own process group, death with its parent, and its wall-clock timer, which keeps
counting across exec, so start-up counts as on Lambda.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from funcpipe.platforms.local.caps import THREAD_VARS
from funcpipe.platforms.local.child import ChildSetup, set_parent_death_signal
from funcpipe.platforms.local.forkserver import ServedProcess, forkserver

__all__ = [
    "CHILD_MODULE",
    "START_ENV",
    "START_MODES",
    "FreshProcess",
    "function_env",
    "payload_fd",
    "spawn",
]

START_MODES = ("fresh", "forkserver")
START_ENV = "FUNCPIPE_LOCAL_START"
#: What a fresh function's interpreter runs (``-m``), so a process list names it.
CHILD_MODULE = "funcpipe.platforms.local_child"


class FreshProcess:
    """A function started as a new interpreter, with the small surface the platform needs."""

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        pass_fds: tuple[int, ...],
        preexec_fn: Callable[[], None],
    ) -> None:
        self._popen = subprocess.Popen(
            args, env=env, pass_fds=pass_fds, preexec_fn=preexec_fn, close_fds=True
        )
        self.pid = self._popen.pid
        self.sentinel = os.pidfd_open(self.pid)
        self._closed = False

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.sentinel)


#: A started local function, whichever way it started.
LocalProcess = FreshProcess | ServedProcess


def function_env(torch_threads: int) -> dict[str, str]:
    """The function's environment: the client's, with its thread count and import path."""
    return {
        **os.environ,
        **{var: str(torch_threads) for var in THREAD_VARS},
        # Code the user passes by reference (their own modules) resolves as in the client.
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }


def payload_fd(payload: bytes | bytearray, ident: int) -> int:
    """The payload in an anonymous in-memory file the child reads from (no file left behind)."""
    fd = os.memfd_create(f"funcpipe-payload-{ident}")
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def spawn(
    start_mode: str,
    setup: ChildSetup,
    *,
    cgroups: list[str],
    timeout_s: float,
    kill_with_parent: bool,
    env: dict[str, str],
) -> LocalProcess:
    """Start the function ``setup`` describes ("fresh" or "forkserver"); returns at once."""
    fds = [setup.report_fd, setup.activity_fd, setup.payload_fd]
    if start_mode == "forkserver":
        return forkserver().spawn(
            dataclasses.asdict(setup),
            fds,
            cgroups=cgroups,
            timeout_s=timeout_s,
            kill_with_parent=kill_with_parent,
            env=env,
        )
    return FreshProcess(
        [sys.executable, "-m", CHILD_MODULE, setup.to_json()],
        env=env,
        pass_fds=tuple(fds),
        preexec_fn=enter_sandbox(cgroups, timeout_s, kill_with_parent),
    )


def enter_sandbox(
    cgroups: list[str], timeout_s: float, kill_with_parent: bool
) -> Callable[[], None]:
    """Runs in the child between fork and exec: everything from here on is charged and timed.

    Only async-signal-safe-ish work (os calls, no locks): the client may have threads.
    """
    procs = [os.path.join(cg, "cgroup.procs").encode() for cg in cgroups]

    def enter() -> None:
        for path in procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" = the writing process itself
            finally:
                os.close(fd)
        os.setpgid(0, 0)  # own process group: kill takes grandchildren too, Ctrl-C stays with us
        if kill_with_parent:
            set_parent_death_signal()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)  # kept across exec, like Lambda's clock

    return enter
