"""A serverless platform on one machine: each function is a fresh interpreter with Lambda limits.

Each function is a new Python process started from its payload alone (never a fork of the
caller: a fork would inherit the caller's pages uncharged, its random state and, once the caller
has run torch, a dead OpenMP pool that deadlocks the child's first parallel op). The process gets:

* a **memory cap** of `memory_mb` covering what a Lambda's covers: interpreter, libraries,
  weights, activations, buffers. Preferred: a cgroup v1 memory controller group per function,
  entered before exec, so the kernel OOM-kills the process when its own pages pass the cap, plus
  a watch on the resident set (shared library pages already cached by other processes are not
  charged by the kernel, but a Lambda pays for them). Reported as reason "memory" with the peak.
  Fallback where cgroups are not writable: ``RLIMIT_AS`` (address-space growth past the loaded
  runtime) plus the same resident-set watch on growth.
* a **CPU share** proportional to memory, like Lambda (about 1 vCPU per 1769 MB): a cgroup v1 CFS
  quota, or, as fallback, CPU affinity to ceil(share) cores. torch gets floor(share) threads (at
  least one) so it does not oversubscribe, and never all the host's cores: the client and every
  function's transfer threads run beside it, and a torch op whose threads wait at a barrier for
  one that lost its core runs at the slowest thread's pace.
* a **wall-clock limit** (`timeout_s`) counted from before exec, so start-up counts as on Lambda:
  an interval timer with the default SIGALRM action ends it even in C code, and the parent kills
  it if it is still there shortly after.

The parent starts no threads, so timeouts and results are observed whenever `state` or `join` is
called. Cleanup is layered: `close()`, an atexit hook, SIGKILL on parent death
(``PR_SET_PDEATHSIG``), and a sweep of cgroup folders left by dead callers when a new
`LocalPlatform` starts.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import mmap
import multiprocessing
import multiprocessing.connection
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from funcpipe.errors import ConfigError, FuncPipeError
from funcpipe.platforms.base import (
    FunctionSpec,
    Invocation,
    InvocationState,
    Platform,
    PlatformLimits,
    Status,
)
from funcpipe.platforms.cgroup_v1 import (
    controller_writable,
    read_int,
    remove_cgroup,
    sweep_stale,
    was_oom_killed,
    write_value,
)
from funcpipe.platforms.forkserver import ServedProcess, forkserver
from funcpipe.platforms.local_child import (
    ACT_SIZE,
    ChildSetup,
    read_activity,
    set_parent_death_signal,
)

__all__ = ["LAMBDA_CPU_PER_GB", "LocalPlatform", "local_torch_threads"]

LAMBDA_CPU_PER_GB = 1024 / 1769  # Lambda gives one vCPU at 1769 MB
MIN_CPU_SHARE = 0.1
CFS_PERIOD_US = 100_000
KILL_GRACE_S = 2.0  # how long past its deadline the parent waits for the child's own SIGALRM
REAP_TIMEOUT_S = 5.0  # how long to wait for a SIGKILLed process to disappear
MAX_WAIT_SLICE_S = 0.5  # join re-checks at least this often
_MB = 1024 * 1024

_MEMORY_MODES = ("auto", "cgroup", "rlimit", "none")
_START_MODES = ("fresh", "forkserver")
START_ENV = "FUNCPIPE_LOCAL_START"
_CPU_MODES = ("auto", "cgroup", "affinity", "none")


# --- the parent side -----------------------------------------------------------------------------


@dataclass
class _Run:
    """Parent-side bookkeeping of one invocation."""

    inv: Invocation
    process: _Process | ServedProcess
    report_fd: int | None
    activity: mmap.mmap | None
    deadline: float
    mem_cgroup: str | None
    cpu_cgroup: str | None
    rlimit: bool = False
    report_bytes: bytearray = field(default_factory=bytearray)
    killed_for: str | None = None  # "timeout" | "cancelled" when we sent the SIGKILL
    final: InvocationState | None = None
    last_activity: str | None = None


class LocalPlatform(Platform):
    """Runs each function as a forked OS process with a memory cap, a CPU share and a timeout.

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
            :mod:`funcpipe.platforms.forkserver`). Default: ``$FUNCPIPE_LOCAL_START`` or "fresh".
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
        if memory_enforcement not in _MEMORY_MODES:
            raise ConfigError(
                f"memory_enforcement={memory_enforcement!r} is not one of {_MEMORY_MODES}"
            )
        if cpu_enforcement not in _CPU_MODES:
            raise ConfigError(f"cpu_enforcement={cpu_enforcement!r} is not one of {_CPU_MODES}")
        if cpu_per_gb is not None and not cpu_per_gb > 0:
            raise ConfigError(
                f"cpu_per_gb={cpu_per_gb!r} must be a positive number of cores per GB, "
                "or None for no CPU cap"
            )
        start = start or os.environ.get(START_ENV) or "fresh"
        if start not in _START_MODES:
            raise ConfigError(
                f"start={start!r} (or ${START_ENV}) is not one of {_START_MODES}: 'fresh' starts "
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
        self._runs: dict[int, _Run] = {}
        self._lock = threading.RLock()  # a lock, not a thread: the caller may poll from threads
        self._closed = False
        self._next_core = 0

        self.memory_mode = self._pick_mode(
            memory_enforcement, "memory", "memory.limit_in_bytes", "rlimit"
        )
        self.cpu_mode = (
            "none"
            if cpu_per_gb is None
            else self._pick_mode(cpu_enforcement, "cpu", "cpu.cfs_quota_us", "affinity")
        )
        self._group_dirs = {
            ctrl: os.path.join(cgroup_root, ctrl, "funcpipe", self._token)
            for ctrl, mode in (("memory", self.memory_mode), ("cpu", self.cpu_mode))
            if mode == "cgroup"
        }
        for ctrl in self._group_dirs:
            sweep_stale(os.path.join(cgroup_root, ctrl, "funcpipe"))
        self._finalizer = weakref.finalize(
            self, _close_runs, self._runs, self._lock, self._cleanup_info()
        )
        atexit.register(self._finalizer)

    def _pick_mode(self, requested: str, controller: str, probe: str, fallback: str) -> str:
        if requested in ("auto", "cgroup") and controller_writable(self._root, controller, probe):
            return "cgroup"
        if requested == "cgroup":
            raise ConfigError(
                f"{controller}_enforcement='cgroup' needs a writable cgroup v1 '{controller}' "
                f"controller under {self._root}/{controller} (run as root on a cgroup v1 host), "
                f"or pass {controller}_enforcement='{fallback}'"
            )
        return fallback if requested == "auto" else requested

    def _cleanup_info(self) -> tuple[int, list[str]]:
        return self._owner_pid, list(self._group_dirs.values())

    # --- resources ---------------------------------------------------------------------------

    def cpu_share(self, memory_mb: int) -> float | None:
        """Cores a function of `memory_mb` gets (None when CPU is not capped)."""
        if self.cpu_per_gb is None:
            return None
        share = memory_mb / 1024 * self.cpu_per_gb
        return min(max(share, MIN_CPU_SHARE), float(len(self._host_cores)))

    def _make_cgroups(self, spec: FunctionSpec, inv: Invocation) -> tuple[str | None, str | None]:
        """Create and configure the function's groups; on failure none of them is left behind."""
        leaf = f"{re.sub(r'[^A-Za-z0-9._-]', '_', spec.name)[:80]}-{inv.id}"
        mem_cg = cpu_cg = None
        try:
            if "memory" in self._group_dirs:
                os.makedirs(path := os.path.join(self._group_dirs["memory"], leaf))
                mem_cg = path  # only what this call created is removed on failure
                limit = spec.memory_mb * _MB
                write_value(os.path.join(mem_cg, "memory.limit_in_bytes"), limit)
                with contextlib.suppress(OSError):  # only exists with swap accounting
                    write_value(os.path.join(mem_cg, "memory.memsw.limit_in_bytes"), limit)
            if "cpu" in self._group_dirs:
                os.makedirs(path := os.path.join(self._group_dirs["cpu"], leaf))
                cpu_cg = path
                share = self.cpu_share(spec.memory_mb) or 0.0
                write_value(os.path.join(cpu_cg, "cpu.cfs_period_us"), CFS_PERIOD_US)
                write_value(os.path.join(cpu_cg, "cpu.cfs_quota_us"), round(share * CFS_PERIOD_US))
        except BaseException:
            for cg in (mem_cg, cpu_cg):
                if cg:
                    remove_cgroup(cg)
            raise
        return mem_cg, cpu_cg

    def _affinity_cores(self, share: float | None) -> list[int] | None:
        if self.cpu_mode != "affinity" or share is None:
            return None
        n = min(len(self._host_cores), math.ceil(share))
        start = self._next_core
        self._next_core = (start + n) % len(self._host_cores)  # spread functions over cores
        return [self._host_cores[(start + i) % len(self._host_cores)] for i in range(n)]

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
            try:
                mem_cg, cpu_cg = self._make_cgroups(spec, inv)
            except OSError as exc:
                raise FuncPipeError(
                    f"function {spec.name!r}: cannot set up its cgroup ({exc}); pass "
                    "memory_enforcement='rlimit' and cpu_enforcement='affinity' to run without "
                    "cgroups"
                ) from exc
            share = self.cpu_share(spec.memory_mb)
            threads = self.torch_threads or local_torch_threads(share, len(self._host_cores))
            act_fd = os.memfd_create(f"funcpipe-activity-{inv.id}")
            os.ftruncate(act_fd, ACT_SIZE)
            act = mmap.mmap(act_fd, ACT_SIZE)
            payload_fd = _payload_fd(payload, inv.id)
            read_fd, write_fd = os.pipe()
            setup = ChildSetup(
                name=spec.name,
                memory_mb=spec.memory_mb,
                timeout_s=float(spec.timeout_s),
                rlimit=self.memory_mode == "rlimit",
                watch_memory=self.memory_mode != "none",
                cpu_cores=self._affinity_cores(share),
                torch_threads=threads,
                report_fd=write_fd,
                activity_fd=act_fd,
                payload_fd=payload_fd,
                invoked_at=time.time(),
            )
            env = {
                **os.environ,
                **{v: str(threads) for v in _THREAD_VARS},
                # Code the user passes by reference (their own modules) resolves as in the client.
                "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            }
            cgroups = [cg for cg in (mem_cg, cpu_cg) if cg]
            try:
                process: _Process | ServedProcess
                if self.start_mode == "forkserver":
                    process = forkserver().spawn(
                        dataclasses.asdict(setup),
                        [write_fd, act_fd, payload_fd],
                        cgroups=cgroups,
                        timeout_s=spec.timeout_s,
                        kill_with_parent=self.kill_with_parent,
                        env=env,
                    )
                else:
                    process = _Process(
                        [sys.executable, "-m", "funcpipe.platforms.local_child", setup.to_json()],
                        env=env,
                        pass_fds=(write_fd, act_fd, payload_fd),
                        preexec_fn=_enter_sandbox(cgroups, spec.timeout_s, self.kill_with_parent),
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
                os.close(payload_fd)
            os.close(write_fd)  # the child holds the only write end: EOF means it is gone
            os.set_blocking(read_fd, False)
            self._runs[inv.id] = _Run(
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
            self._drain(run)
            if run.process.exitcode is None:
                if time.monotonic() > run.deadline + KILL_GRACE_S:
                    self._kill(run, "timeout")
                else:
                    return InvocationState(
                        Status.RUNNING,
                        peak_memory_mb=self._peak_mb(run),
                        activity=self._activity(run),
                    )
            return self._finish(run)

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
                waitables: list = [sentinel]
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
            self._drain(run)
            if run.process.exitcode is None:
                self._kill(run, "cancelled")
            self._finish(run)

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

    def _run(self, inv: Invocation) -> _Run:
        run = self._runs.get(inv.id)
        if run is None or run.inv != inv:
            raise ConfigError(
                f"invocation {inv.id} of function {inv.spec.name!r} was not started by this "
                "platform; pass the Invocation returned by this platform's start()"
            )
        return run

    def _drain(self, run: _Run) -> None:
        """Read what the child has written so far, without blocking."""
        while run.report_fd is not None:
            try:
                chunk = os.read(run.report_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                os.close(run.report_fd)
                run.report_fd = None
                return
            run.report_bytes += chunk

    def _activity(self, run: _Run) -> str | None:
        """The function's newest label; a read that finds none keeps the one known before."""
        label = read_activity(run.activity) if run.activity is not None else None
        if label is not None:
            run.last_activity = label
        return run.last_activity

    def _peak_mb(self, run: _Run) -> float | None:
        if run.mem_cgroup is None:
            return None
        peak = read_int(os.path.join(run.mem_cgroup, "memory.max_usage_in_bytes"))
        return None if peak is None else peak / _MB

    def _kill(self, run: _Run, why: str) -> None:
        run.killed_for = why
        with contextlib.suppress(OSError):
            os.killpg(run.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            run.process.kill()
        run.process.join(REAP_TIMEOUT_S)

    def _finish(self, run: _Run) -> InvocationState:
        """Turn a process that is gone (or was just killed) into its final state, then clean up."""
        self._drain(run)
        activity = self._activity(run)
        peak = self._peak_mb(run)
        oom = run.mem_cgroup is not None and was_oom_killed(run.mem_cgroup)
        report = _parse_report(run.report_bytes)
        if report.get("peak_mb") is not None:
            peak = max(peak or 0.0, float(report["peak_mb"]))
        run.final = _classify(run, report, activity, peak, oom)
        _release(run)
        return run.final


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def local_torch_threads(share: float | None, host_cores: int) -> int:
    """torch threads of a local function with CPU ``share`` (None: no share) on this host.

    One per whole core of its share, at least one, and at most ``host_cores - 1``. Measured on
    a 2-core host: the demo CNN's function with a 2-core share took 0.20-0.28 s a step with two
    threads and 0.16-0.17 s with one (bench/model_error.py, 2026-11-26), while two threads in a
    process alone were 1.4 times as fast as one.
    """
    whole = host_cores if share is None else math.floor(share + 1e-9)
    return max(1, min(whole, host_cores - 1))


def _payload_fd(payload: bytes, ident: int) -> int:
    """The payload in an anonymous in-memory file the child reads from (no file left behind)."""
    fd = os.memfd_create(f"funcpipe-payload-{ident}")
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _enter_sandbox(cgroups: list[str], timeout_s: float, kill_with_parent: bool):
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


class _Process:
    """A started function process with the small surface the platform needs."""

    def __init__(self, args: list[str], **kwargs: object) -> None:
        self._popen = subprocess.Popen(args, close_fds=True, **kwargs)  # type: ignore[call-overload]
        self.pid = self._popen.pid
        self.sentinel = os.pidfd_open(self.pid)

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
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None  # type: ignore[assignment]


def _parse_report(data: bytes) -> dict:
    if not data:
        return {}
    try:
        report = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return {"kind": "garbled", "message": data.decode("utf-8", "replace")[-4000:]}
    return report if isinstance(report, dict) else {}


def _during(activity: str | None) -> str:
    return f" during {activity!r}" if activity else ""


def _classify(
    run: _Run, report: dict, activity: str | None, peak: float | None, oom: bool
) -> InvocationState:
    spec = run.inv.spec
    name = spec.name
    code = run.process.exitcode
    kind = report.get("kind")

    def failed(reason: str, message: str) -> InvocationState:
        return InvocationState(Status.FAILED, reason, message, peak, activity)

    peak_text = f" (peak {peak:.0f} MB)" if peak is not None else ""
    if run.killed_for == "cancelled":
        return InvocationState(
            Status.CANCELLED, "cancelled", f"function {name!r} was cancelled{_during(activity)}",
            peak, activity,
        )  # fmt: skip
    if run.killed_for == "timeout" or code == -signal.SIGALRM:
        return failed(
            "timeout",
            f"function {name!r} ran past its timeout of {spec.timeout_s:g} s{_during(activity)} "
            "and was killed; give it a longer timeout_s or less work per function",
        )
    if kind == "ok" and code == 0:
        return InvocationState(Status.SUCCEEDED, None, None, peak, activity)
    if kind == "memory":
        tried = report.get("tried_bytes")
        tried_text = f": it tried to allocate {tried} bytes ({tried / _MB:.0f} MB)" if tried else ""
        return failed(
            "memory",
            f"function {name!r} exceeded its memory cap of {spec.memory_mb} MB{peak_text}"
            f"{_during(activity)}{tried_text}; raise memory_mb or give the stage less work\n"
            f"{report.get('message', '')}",
        )
    if kind in ("error", "setup"):
        return failed(
            "error", f"function {name!r} raised{_during(activity)}:\n{report.get('message', '')}"
        )
    if code == 0:  # the target ended the process itself with status 0
        return InvocationState(Status.SUCCEEDED, None, None, peak, activity)
    if code is not None and code < 0:
        sig = -code
        if sig == signal.SIGKILL and oom:
            return failed(
                "memory",
                f"function {name!r} exceeded its memory cap of {spec.memory_mb} MB{peak_text}"
                f"{_during(activity)} and was killed by the kernel; raise memory_mb or give the "
                "stage less work",
            )
        return failed(
            "crash",
            f"function {name!r} was killed by signal {signal.Signals(sig).name} ({sig})"
            f"{_during(activity)}",
        )
    status = "unknown" if code is None else str(code)
    tail = f":\n{report['message']}" if report.get("message") else ""
    hint = (
        " (its address space is capped by RLIMIT_AS, so a failed allocation or thread start in "
        "native code may have ended it; raise memory_mb)"
        if run.rlimit
        else ""
    )
    return failed(
        "crash",
        f"function {name!r} exited with status {status}{_during(activity)} "
        f"without reporting a result{hint}{tail}",
    )


def _release(run: _Run) -> None:
    """Free the pipe, the shared label and the cgroups of a finished invocation."""
    if run.report_fd is not None:
        with contextlib.suppress(OSError):
            os.close(run.report_fd)
        run.report_fd = None
    if run.activity is not None:
        run.activity.close()
        run.activity = None
    for cg in (run.mem_cgroup, run.cpu_cgroup):
        if cg:
            remove_cgroup(cg)
    with contextlib.suppress(ValueError):
        run.process.close()


def _close_runs(runs: dict[int, _Run], lock: threading.RLock, info: tuple[int, list[str]]) -> None:
    """Kill all running functions and remove the platform's cgroups (close/atexit/GC)."""
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
                activity = read_activity(run.activity) if run.activity is not None else None
                activity = run.last_activity if activity is None else activity
                run.final = InvocationState(
                    Status.CANCELLED,
                    "cancelled",
                    f"function {run.inv.spec.name!r} was cancelled because its platform closed",
                    None,
                    activity,
                )
                _release(run)
        for path in group_dirs:
            remove_cgroup(path)
