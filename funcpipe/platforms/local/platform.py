"""LocalPlatform: start, watch and stop local functions, and clean up after them.

The parent starts no threads, so timeouts and results are observed whenever `state` or `join` is
called. Cleanup is layered: `close()`, an atexit hook, SIGKILL on parent death
(``PR_SET_PDEATHSIG``), and a sweep of cgroup folders left by dead callers when a new
`LocalPlatform` starts.
"""

from __future__ import annotations

import atexit
import mmap
import multiprocessing.connection
import os
import secrets
import sys
import threading
import time
import weakref

from funcpipe.errors import ConfigError, FuncPipeError
from funcpipe.platforms.base import (
    FunctionSpec,
    Invocation,
    InvocationState,
    Platform,
    PlatformLimits,
    Status,
)
from funcpipe.platforms.local import caps
from funcpipe.platforms.local.activity import ACT_SIZE
from funcpipe.platforms.local.caps import LAMBDA_CPU_PER_GB, local_torch_threads
from funcpipe.platforms.local.cgroup_v1 import remove_cgroup, sweep_stale
from funcpipe.platforms.local.child import ChildSetup
from funcpipe.platforms.local.runs import Run, close_runs
from funcpipe.platforms.local.spawn import START_ENV, START_MODES, function_env, payload_fd, spawn

__all__ = ["LocalPlatform"]

KILL_GRACE_S = 2.0  # how long past its deadline the parent waits for the child's own SIGALRM
MAX_WAIT_SLICE_S = 0.5  # join re-checks at least this often


class LocalPlatform(Platform):
    """Runs each function as its own OS process with a memory cap, a CPU share and a timeout.

    Args:
        memory_enforcement: "auto" (cgroup v1 when writable, else rlimit), "cgroup" (fail if not
            writable), "rlimit" (address-space growth cap), or "none" (no cap; for debugging).
        cpu_per_gb: cores per GB of function memory; defaults to Lambda's ratio (1 core at
            1769 MB). The share is clamped to [0.1, host cores]. None = no CPU cap.
        cpu_enforcement: "auto" (cgroup CFS quota when writable, else affinity), "cgroup",
            "affinity" (ceil(share) cores) or "none" (only torch's thread count is set).
        cgroup_root: where the cgroup v1 controllers are mounted.
        kill_with_parent: SIGKILL functions when the thread that started them exits (Linux
            PR_SET_PDEATHSIG), so a killed client leaves no processes behind. Turn it off if you
            start functions from short-lived threads.
        limits: per-function bounds; Lambda's by default.
        start: "fresh" (a new interpreter per function: a Lambda's cold start, its memory from
            the first page) or "forkserver" (forked from a server that imported torch once:
            start-up in milliseconds, for development and test suites; see
            :mod:`funcpipe.platforms.local.forkserver`). Default: ``$FUNCPIPE_LOCAL_START`` or
            "fresh".
        torch_threads: torch threads of every function; default: one per whole core of its
            share, at most the host's cores minus one (:func:`local_torch_threads`).

    Functions still running when the platform is closed, garbage-collected or when the caller
    exits are killed and reported as cancelled.
    """

    def __init__(
        self,
        *,
        memory_enforcement: str = "auto",
        cpu_per_gb: float | None = LAMBDA_CPU_PER_GB,
        cpu_enforcement: str = "auto",
        cgroup_root: str = "/sys/fs/cgroup",
        kill_with_parent: bool = True,
        limits: PlatformLimits | None = None,
        start: str | None = None,
        torch_threads: int | None = None,
    ) -> None:
        if not sys.platform.startswith("linux"):
            raise ConfigError(
                f"LocalPlatform needs Linux (fork, rlimits, CPU affinity); this is {sys.platform}"
            )
        if memory_enforcement not in caps.MEMORY_MODES:
            raise ConfigError(
                f"memory_enforcement={memory_enforcement!r} is not one of {caps.MEMORY_MODES}"
            )
        if cpu_enforcement not in caps.CPU_MODES:
            raise ConfigError(f"cpu_enforcement={cpu_enforcement!r} is not one of {caps.CPU_MODES}")
        if cpu_per_gb is not None and not cpu_per_gb > 0:
            raise ConfigError(
                f"cpu_per_gb={cpu_per_gb!r} must be a positive number of cores per GB, "
                "or None for no CPU cap"
            )
        start = start or os.environ.get(START_ENV) or "fresh"
        if start not in START_MODES:
            raise ConfigError(
                f"start={start!r} (or ${START_ENV}) is not one of {START_MODES}: 'fresh' starts "
                "a new interpreter per function, 'forkserver' forks it from a warm one"
            )
        whole = isinstance(torch_threads, int) and not isinstance(torch_threads, bool)
        if torch_threads is not None and not (whole and torch_threads >= 1):
            raise ConfigError(f"torch_threads={torch_threads!r} must be a whole number >= 1")
        self.torch_threads = torch_threads
        self.start_mode = start
        self.limits = limits or PlatformLimits()
        self.cpu_per_gb = cpu_per_gb
        self.kill_with_parent = kill_with_parent
        self._root = cgroup_root
        self._owner_pid = os.getpid()
        self._token = f"{self._owner_pid}-{secrets.token_hex(4)}"
        self._host_cores = sorted(os.sched_getaffinity(0))
        self._runs: dict[int, Run] = {}
        self._lock = threading.RLock()  # a lock, not a thread: the caller may poll from threads
        self._closed = False
        self._next_core = 0

        self.memory_mode = caps.pick_mode(
            memory_enforcement, cgroup_root, "memory", "memory.limit_in_bytes", "rlimit"
        )
        self.cpu_mode = (
            "none"
            if cpu_per_gb is None
            else caps.pick_mode(cpu_enforcement, cgroup_root, "cpu", "cpu.cfs_quota_us", "affinity")
        )
        self._group_dirs = {
            ctrl: os.path.join(cgroup_root, ctrl, "funcpipe", self._token)
            for ctrl, mode in (("memory", self.memory_mode), ("cpu", self.cpu_mode))
            if mode == "cgroup"
        }
        for ctrl in self._group_dirs:
            sweep_stale(os.path.join(cgroup_root, ctrl, "funcpipe"))
        self._finalizer = weakref.finalize(
            self,
            close_runs,
            self._runs,
            self._lock,
            (self._owner_pid, list(self._group_dirs.values())),
        )
        atexit.register(self._finalizer)

    def cpu_share(self, memory_mb: int) -> float | None:
        """Cores a function of `memory_mb` gets (None when CPU is not capped)."""
        return caps.cpu_share(memory_mb, self.cpu_per_gb, len(self._host_cores))

    # --- Platform API ------------------------------------------------------------------------

    def start(self, spec: FunctionSpec, payload: bytes) -> Invocation:
        if self._closed:
            raise FuncPipeError("this LocalPlatform is closed; create a new one to start functions")
        if not isinstance(payload, bytes | bytearray):
            raise ConfigError(
                f"function {spec.name!r}: payload must be bytes (a function package's JSON, or "
                f"funcpipe.runtime.function.call_payload(fn)), got {type(payload).__name__}"
            )
        self.limits.check(spec)
        inv = Invocation.new(spec)
        with self._lock:
            for ctrl, path in self._group_dirs.items():
                try:
                    os.makedirs(path, exist_ok=True)
                except OSError as exc:
                    raise FuncPipeError(f"cannot create the {ctrl} cgroup {path}: {exc}") from exc
            share = self.cpu_share(spec.memory_mb)
            try:
                mem_cg, cpu_cg = caps.make_cgroups(self._group_dirs, spec, inv, share)
            except OSError as exc:
                raise FuncPipeError(
                    f"function {spec.name!r}: cannot set up its cgroup ({exc}); pass "
                    "memory_enforcement='rlimit' and cpu_enforcement='affinity' to run without "
                    "cgroups"
                ) from exc
            threads = self.torch_threads or local_torch_threads(share, len(self._host_cores))
            cores = None
            if self.cpu_mode == "affinity" and share is not None:
                cores, self._next_core = caps.spread_cores(self._host_cores, self._next_core, share)
            act_fd = os.memfd_create(f"funcpipe-activity-{inv.id}")
            os.ftruncate(act_fd, ACT_SIZE)
            act = mmap.mmap(act_fd, ACT_SIZE)
            pay_fd = payload_fd(payload, inv.id)
            read_fd, write_fd = os.pipe()
            setup = ChildSetup(
                name=spec.name,
                memory_mb=spec.memory_mb,
                timeout_s=float(spec.timeout_s),
                rlimit=self.memory_mode == "rlimit",
                watch_memory=self.memory_mode != "none",
                cpu_cores=cores,
                torch_threads=threads,
                report_fd=write_fd,
                activity_fd=act_fd,
                payload_fd=pay_fd,
                invoked_at=time.time(),
            )
            try:
                process = spawn(
                    self.start_mode,
                    setup,
                    cgroups=[cg for cg in (mem_cg, cpu_cg) if cg],
                    timeout_s=spec.timeout_s,
                    kill_with_parent=self.kill_with_parent,
                    env=function_env(threads),
                )
            except BaseException:
                os.close(read_fd)
                os.close(write_fd)
                act.close()
                for cg in (mem_cg, cpu_cg):
                    if cg:
                        remove_cgroup(cg)
                raise
            finally:
                os.close(act_fd)
                os.close(pay_fd)
            os.close(write_fd)  # the child holds the only write end: EOF means it is gone
            os.set_blocking(read_fd, False)
            self._runs[inv.id] = Run(
                inv=inv,
                process=process,
                report_fd=read_fd,
                activity=act,
                deadline=time.monotonic() + spec.timeout_s,
                mem_cgroup=mem_cg,
                cpu_cgroup=cpu_cg,
                rlimit=setup.rlimit,
            )
        return inv

    def state(self, inv: Invocation) -> InvocationState:
        with self._lock:
            run = self._run(inv)
            if run.final is not None:
                return run.final
            run.drain()
            if run.process.exitcode is None:
                if time.monotonic() > run.deadline + KILL_GRACE_S:
                    run.kill("timeout")
                else:
                    return InvocationState(
                        Status.RUNNING,
                        peak_memory_mb=run.peak_mb(),
                        activity=run.label(),
                    )
            return run.finish()

    def join(self, inv: Invocation, timeout: float) -> InvocationState:
        end = time.monotonic() + max(0.0, timeout)
        while True:
            st = self.state(inv)
            now = time.monotonic()
            if st.done or now >= end:
                return st
            with self._lock:
                run = self._run(inv)
                if run.final is not None:
                    continue
                sentinel = run.process.sentinel
                waitables: list[int] = [sentinel]
                if run.report_fd is not None:
                    waitables.append(run.report_fd)
                kill_at = run.deadline + KILL_GRACE_S
            # Short waits: another thread may finish this run and close these fds meanwhile.
            wait_s = min(end - now, max(kill_at - now, 0.0) + 0.01, MAX_WAIT_SLICE_S)
            try:
                ready = multiprocessing.connection.wait(waitables, timeout=wait_s)
            except (OSError, ValueError):
                continue
            if sentinel in ready:
                time.sleep(0.002)  # the sentinel closes just before the process becomes reapable

    def cancel(self, inv: Invocation) -> None:
        with self._lock:
            run = self._run(inv)
            if run.final is not None:
                return
            run.drain()
            if run.process.exitcode is None:
                run.kill("cancelled")
            run.finish()

    def close(self) -> None:
        """Kill every function still running and remove all cgroups; safe to call twice."""
        if os.getpid() != self._owner_pid:
            return  # a forked function must not tear down its caller's platform
        self._closed = True
        self._finalizer()
        atexit.unregister(self._finalizer)

    def invocations(self) -> list[Invocation]:
        """All invocations started on this platform, in start order."""
        with self._lock:
            return [run.inv for run in self._runs.values()]

    # --- internals ---------------------------------------------------------------------------

    def _run(self, inv: Invocation) -> Run:
        run = self._runs.get(inv.id)
        if run is None or run.inv != inv:
            raise ConfigError(
                f"invocation {inv.id} of function {inv.spec.name!r} was not started by this "
                "platform; pass the Invocation returned by this platform's start()"
            )
        return run
