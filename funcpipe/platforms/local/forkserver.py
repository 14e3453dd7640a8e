"""Warm starts for the local platform: functions forked from an interpreter that imported torch.

A fresh interpreter spends seconds importing torch before it runs a line of the function (the
cold start a Lambda pays, which ``LocalPlatform`` emulates by default). For development and test
suites that start hundreds of short jobs, ``LocalPlatform(start="forkserver")`` (or
``FUNCPIPE_LOCAL_START=forkserver``) forks each function from a server process instead:

* the server is a fresh interpreter of its own, started once per client process, that imports
  torch and the function runtime and then **never runs a torch op**, so it has no OpenMP pool
  that a fork could inherit dead, no user state and no weights; it is not a fork of the client;
* a function still receives only its package (the same payload, fds and limits as a fresh one),
  enters its own cgroups, process group, wall-clock timer and environment before it runs, and
  re-seeds the generators a fork would share;
* its cold start is then the time to load its package, and its resident set starts without the
  library pages it has not touched yet (a forked child maps them lazily): memory and start-up
  figures that should match a Lambda's come from fresh interpreters, the default.

The server watches its control socket: when the client goes away it kills the functions started
with ``kill_with_parent`` and exits once the others have ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ForkServer", "ServedProcess", "forkserver"]

#: The descriptors a spawn request carries, in order: the function's report pipe, activity label
#: and payload, then the client's stdout and stderr as they are now (pytest swaps them per test).
_FDS = ("report_fd", "activity_fd", "payload_fd", "stdout", "stderr")
_MAX_MESSAGE = 1 << 20  # a request holds the client's environment: well under this
_REPLY_TIMEOUT_S = 60.0  # the server's first reply waits for its imports


# --- client side ---------------------------------------------------------------------------------


@dataclass
class ServedProcess:
    """A function forked by the server, with the surface LocalPlatform needs of a process."""

    pid: int
    sentinel: int  # a pidfd: readable once the process has ended
    _server: ForkServer
    _closed: bool = False

    @property
    def exitcode(self) -> int | None:
        """Popen's convention: the exit code, or minus the signal that ended it."""
        code = self._server._exit_code(self.pid)
        if code is None and _pidfd_done(self.sentinel):
            code = self._server._exit_code(self.pid, wait_s=2.0)  # the relay is on its way
        return code

    def join(self, timeout: float | None = None) -> None:
        self._server._wait_exit(self.pid, timeout)

    def kill(self) -> None:
        if self.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.sentinel, signal.SIGKILL)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.sentinel)


def _pidfd_done(fd: int) -> bool:
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(0))
    except (OSError, ValueError):
        return True
    finally:
        sel.close()


@dataclass
class ForkServer:
    """The client's handle on one server process (one per interpreter and import path)."""

    process: subprocess.Popen
    sock: socket.socket
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _replies: dict[int, tuple[dict[str, Any], list[int]]] = field(default_factory=dict)
    _exits: dict[int, int] = field(default_factory=dict)
    _next_id: int = 0
    _dead: str | None = None

    owner: int = 0  # the client process: a fork of it must not share the socket

    @classmethod
    def start(cls) -> ForkServer:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "funcpipe.platforms.local.forkserver", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                start_new_session=True,  # Ctrl-C in the client's terminal is the client's
                close_fds=True,
            )
        finally:
            theirs.close()
        server = cls(process, ours, owner=os.getpid())
        threading.Thread(target=server._read, name="funcpipe-forkserver", daemon=True).start()
        return server

    def spawn(
        self,
        setup: dict[str, Any],
        fds: list[int],
        *,
        cgroups: list[str],
        timeout_s: float,
        kill_with_parent: bool,
        env: dict[str, str],
    ) -> ServedProcess:
        """Fork a function with ``setup`` (the child setup of LocalPlatform) and its 3 fds."""
        with self._cond:
            ident = self._next_id
            self._next_id += 1
        request = {
            "id": ident,
            "setup": setup,
            "cgroups": cgroups,
            "timeout_s": timeout_s,
            "kill_with_parent": kill_with_parent,
            "env": env,
            "cwd": os.getcwd(),
            "path": [p for p in sys.path if p],
        }
        data = json.dumps(request).encode()
        with self._lock:
            if self._dead:
                raise OSError(self._dead)
            socket.send_fds(self.sock, [data], [*fds, 1, 2])
        with self._cond:
            ok = self._cond.wait_for(
                lambda: ident in self._replies or self._dead is not None, _REPLY_TIMEOUT_S
            )
            if not ok or ident not in self._replies:
                raise OSError(self._dead or "the fork server did not answer")
            reply, got = self._replies.pop(ident)
        if "error" in reply:
            for fd in got:
                os.close(fd)
            raise OSError(f"the fork server could not start the function: {reply['error']}")
        return ServedProcess(int(reply["pid"]), got[0], self)

    def _read(self) -> None:
        """Replies to spawns (with the child's pidfd) and exit statuses, until the server ends."""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_MESSAGE, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                with self._cond:
                    self._dead = f"the fork server (pid {self.process.pid}) has ended"
                    self._cond.notify_all()
                return
            message = json.loads(data)
            with self._cond:
                if message.get("exit") is not None:
                    self._exits[int(message["pid"])] = int(message["exit"])
                else:
                    self._replies[int(message["id"])] = (message, list(fds))
                self._cond.notify_all()

    def _exit_code(self, pid: int, wait_s: float = 0.0) -> int | None:
        with self._cond:
            if wait_s:
                self._cond.wait_for(lambda: pid in self._exits or self._dead is not None, wait_s)
            if pid in self._exits:
                return self._exits[pid]
            if self._dead is not None:
                return -signal.SIGKILL  # its server is gone, and with it every child
            return None

    def _wait_exit(self, pid: int, timeout: float | None) -> None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self._dead is not None, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


_servers: dict[tuple[int, str, str], ForkServer] = {}
_servers_lock = threading.Lock()


def forkserver() -> ForkServer:
    """This process's server for its interpreter and import path, started on first use."""
    key = (os.getpid(), sys.executable, os.pathsep.join(p for p in sys.path if p))
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server._dead is not None:
            server = _servers[key] = ForkServer.start()
        return server


# --- server side ---------------------------------------------------------------------------------


def _preload() -> None:
    """Import what every function needs, without running a torch op (no thread pools start)."""
    import cloudpickle  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401 - an optimizer's first step imports it: seconds
    import torch.optim  # noqa: F401

    import funcpipe.platforms.local.child  # noqa: F401
    import funcpipe.runtime.function  # noqa: F401
    import funcpipe.runtime.worker  # noqa: F401


def _child(request: dict[str, Any], fds: list[int], sock: socket.socket) -> None:
    """In the forked function: enter its sandbox, become the package's process, never return."""
    from funcpipe.platforms.local import child

    try:
        sock.close()
        os.dup2(fds[3], 1)
        os.dup2(fds[4], 2)
        keep = {0, 1, 2, *fds[:3]}
        for name in os.listdir("/proc/self/fd"):  # the server's socket, other children's pidfds
            if int(name) not in keep:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        for path in request["cgroups"]:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0")
        os.setpgid(0, 0)
        child.set_parent_death_signal()  # the server's end is the function's end
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores it
        signal.setitimer(signal.ITIMER_REAL, float(request["timeout_s"]))
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path[:] = [*request["path"], *(p for p in sys.path if p not in request["path"])]
        _reseed()
        setup = dict(request["setup"])
        setup["report_fd"], setup["activity_fd"], setup["payload_fd"] = fds[:3]
        child.main(["", json.dumps(setup)])  # ends the process
    except BaseException as exc:  # noqa: BLE001 - report what went wrong before the payload ran
        with contextlib.suppress(Exception):
            child.send_report(
                fds[0], {"kind": "setup", "message": f"could not set up its sandbox: {exc!r}"}
            )
    finally:
        os._exit(70)


def _reseed() -> None:
    """A fork shares its server's random state; a fresh interpreter would draw its own."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def _serve(sock: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, bool]] = {}  # pid -> (pidfd, kill_with_parent)
    client_gone = False

    def send(message: dict[str, Any], fds: list[int] | None = None) -> None:
        if not client_gone:
            with contextlib.suppress(OSError):
                socket.send_fds(sock, [json.dumps(message).encode()], fds or [])

    while not (client_gone and not children):
        for key, _ in sel.select():
            if key.data is None:  # a request, or the client is gone
                try:
                    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, len(_FDS))
                except OSError:
                    data, fds = b"", []
                if not data:
                    client_gone = True
                    sel.unregister(sock)
                    for pid, (_fd, kill) in children.items():
                        if kill:
                            with contextlib.suppress(OSError):
                                os.killpg(pid, signal.SIGKILL)
                            with contextlib.suppress(OSError):
                                os.kill(pid, signal.SIGKILL)
                    continue
                request = json.loads(data)
                try:
                    pid = os.fork()
                except OSError as exc:
                    for fd in fds:
                        os.close(fd)
                    send({"id": request["id"], "error": repr(exc)})
                    continue
                if pid == 0:
                    sel.close()
                    _child(request, list(fds), sock)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pid] = (pidfd, bool(request["kill_with_parent"]))
                sel.register(pidfd, selectors.EVENT_READ, pid)
                send({"id": request["id"], "pid": pid}, [pidfd])
            else:  # a child has ended
                pid = key.data
                _, status = os.waitpid(pid, 0)
                pidfd, _ = children.pop(pid)
                sel.unregister(pidfd)
                os.close(pidfd)
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                send({"pid": pid, "exit": code})


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload()
    _serve(sock)


if __name__ == "__main__":
    main()
