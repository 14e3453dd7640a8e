"""The function manager: launch a generation of functions, watch them, relaunch, recover.

A **generation** is one set of functions (one per stage and replica) training a run of steps. Its
keys live under ``g<generation>/`` inside the job's namespace, so nothing a function of an older
generation writes late (a zombie on a platform that cannot be cancelled) is ever read as live.

* **Relaunch past the time limit.** Every function lives at most ``function_timeout_s``. Before the
  client feeds step ``u`` it checks that the generation can still afford its next steps and a
  checkpoint; when it cannot, it writes ``stop_at`` into the generation's ``control`` key. Every
  function reads that key at the start of each step (in the background), so all of them agree on
  the last step: they write a checkpoint and end cleanly, and the next generation resumes from it.
* **Recovery.** A function that crashes, is killed, is lost by the platform, exceeds its time limit
  or stops beating for ``heartbeat_deadline_s`` is named, the generation is cancelled and the job
  rolls back to its last complete checkpoint (or its start) and relaunches, at most
  ``max_restarts`` times. A function whose own code raised, or that ran out of memory, fails the
  job at once: a relaunch would fail the same way.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from funcpipe.errors import ConfigError, FunctionFailed, KeyNotFound, MemoryExceeded
from funcpipe.planning.plan import Plan
from funcpipe.platforms.base import FunctionSpec, Invocation, InvocationState, Platform, Status
from funcpipe.runtime import checkpoint as ckpt
from funcpipe.runtime import keys
from funcpipe.runtime.heartbeat import function_key
from funcpipe.runtime.schedule import WorkerId
from funcpipe.storage.base import Storage
from funcpipe.storage.prefixed import PrefixedStorage

__all__ = ["FunctionManager", "Lost", "Recovery", "Replay", "control_key"]

POLL_S = 0.05  # the client is not on the critical path: data is fed two steps ahead
# Errors of a function that a relaunch can cure (storage and network trouble); any other
# exception in a function is its code's own and would recur.
_TRANSIENT = re.compile(
    r"^(?:[\w.]+\.)?(StorageTimeout|StorageError|ConnectionError|ConnectionResetError|"
    r"TimeoutError|BrokenPipeError|EndpointConnectionError|ReadTimeoutError)\b",
    re.M,
)


def control_key() -> str:
    """The client's instructions to one generation (inside its namespace): ``{"stop_at": T}``."""
    return "control"


@dataclass(frozen=True)
class Recovery:
    """One relaunch of the job's functions, in ``TrainResult.recoveries``."""

    kind: str  # "time limit" (planned) or "failure"
    function: str | None  # the function that failed, for failures
    reason: str  # "timeout", "crash", "hang", "cancelled", "error", "stalled", "time limit"
    message: str
    generation: int  # the generation started by this relaunch
    resumed_from: int  # the step it started from (a checkpoint's)
    noticed_at_step: int  # the step the client was waiting for
    detect_s: float | None  # for hangs: last sign of life to detection
    detected_at: float  # wall clock when the client noticed (or planned the stop)
    recover_s: float = 0.0  # detection (or planned stop) to the new generation's first report
    # recover_s in parts: the client's clean-up before the launch, then the new generation's cold
    # start (first invocation to its last function ready, checkpoint restored), then the rest (the
    # client feeding two steps before the start calls, and the first step).
    relaunch_s: float = 0.0
    startup_s: float | None = None  # None: it failed before its first report
    # The work thrown away: steps finished since the checkpoint that run again, and the time from
    # reaching that checkpoint's step (or the failed generation's launch) to the detection.
    redone_steps: int = 0
    lost_s: float = 0.0


class Lost(Exception):
    """A function of the current generation is gone or stuck; the job can roll back."""

    def __init__(
        self,
        worker: WorkerId | None,
        reason: str,
        message: str,
        *,
        recoverable: bool = True,
        detect_s: float | None = None,
        error: FunctionFailed | None = None,
    ) -> None:
        super().__init__(message)
        self.worker, self.reason, self.message = worker, reason, message
        self.recoverable, self.detect_s, self.error = recoverable, detect_s, error


class Replay:
    """The job's batches by step: a sequence is indexed, a stream is held from a checkpoint on.

    A stream cannot be rewound, so the batches since the oldest step the job may roll back to
    are kept in memory (``release_before`` drops older ones once a newer checkpoint completes).
    """

    def __init__(self, batches: Iterable[Any], start: int = 0) -> None:
        self.seq: Sequence[Any] | None = None
        if isinstance(batches, Sequence) and not isinstance(batches, str | bytes):
            self.seq = batches
            self._it: Iterator[Any] | None = None
        else:
            self._it = iter(batches)
        self.held: dict[int, Any] = {}
        self.next_step = 0  # the step the stream's next item belongs to
        self.skip_to(start)

    def skip_to(self, step: int) -> None:
        """Consume a stream's batches of steps before ``step`` (a resumed job's data position)."""
        if self._it is None:
            return
        while self.next_step < step:
            self._pull()
            self.held.pop(self.next_step - 1, None)

    def _pull(self) -> None:
        assert self._it is not None
        try:
            item = next(self._it)
        except StopIteration:
            raise ConfigError(
                f"batches ran out after {self.next_step} steps but more steps were asked for: "
                "pass more batches or fewer steps"
            ) from None
        self.held[self.next_step] = item
        self.next_step += 1

    def get(self, step: int) -> Any:
        if self.seq is not None:
            if step >= len(self.seq):
                raise ConfigError(
                    f"batches ran out after {len(self.seq)} steps: pass more batches or fewer steps"
                )
            return self.seq[step]
        while self.next_step <= step:
            self._pull()
        if step not in self.held:
            raise ConfigError(
                f"the batch of step {step} is no longer held (a stream cannot be rewound): "
                "checkpoint more often (checkpoint_every) or pass a list of batches"
            )
        return self.held[step]

    def release_before(self, step: int) -> None:
        for s in [s for s in self.held if s < step]:
            del self.held[s]


@dataclass
class _Watch:
    """What the client knows of one function's heartbeat."""

    seen: bytes | None = None
    changed: float = 0.0  # client monotonic time of the last change
    activity: str | None = None
    started: bool = False  # it has begun its first step


@dataclass
class _Generation:
    number: int
    first_step: int
    launched: float  # client wall clock before the first start call
    launched_mono: float
    invocations: dict[WorkerId, Invocation] = field(default_factory=dict)
    watch: dict[WorkerId, _Watch] = field(default_factory=dict)
    stop_at: int | None = None
    lifetimes: list[dict[str, Any]] = field(default_factory=list)


PackageMaker = Callable[[int, int, int, int, dict[str, Any]], bytes]


class FunctionManager:
    """Runs a job's steps on generations of functions; see the module docstring.

    ``make_payload(stage, replica, generation, first_step, settings)`` returns the payload
    (package JSON) of one function; ``feed(storage, step)`` puts one step's data into a
    generation's storage; ``on_reports(step, reports)`` receives each step's reports in order
    (again after a rollback, for the steps redone).
    """

    def __init__(
        self,
        *,
        platform: Platform,
        plan: Plan,
        shared: Storage,
        make_payload: PackageMaker,
        feed: Callable[[Storage, int], None],
        total_steps: int,
        timeout_s: float,
        function_timeout_s: float,
        heartbeat_s: float,
        heartbeat_deadline_s: float,
        startup_deadline_s: float,
        max_restarts: int,
        checkpoint_every: int | None,
        settings: dict[str, Any] | None = None,
        first_generation: int = 0,
    ) -> None:
        self.platform, self.plan, self.shared = platform, plan, shared
        self.make_payload, self.feed = make_payload, feed
        self.total_steps, self.timeout_s = total_steps, timeout_s
        self.function_timeout_s = function_timeout_s
        self.heartbeat_s, self.heartbeat_deadline_s = heartbeat_s, heartbeat_deadline_s
        self.startup_deadline_s = startup_deadline_s
        self.max_restarts, self.checkpoint_every = max_restarts, checkpoint_every
        self.settings = dict(settings or {})
        self.first_generation = first_generation
        self.functions = [(s, r) for s, st in enumerate(plan.stages) for r in range(st.replicas)]
        self.gen: _Generation | None = None
        self.generations: list[_Generation] = []
        self.recoveries: list[Recovery] = []
        self.failures: list[Lost] = []
        self.step_times: list[float] = []  # client-observed seconds between step reports
        self.checkpoint_s = 0.0  # the longest checkpoint write seen
        self.checkpoint_writes: list[tuple[int, float]] = []  # (step, slowest piece's seconds)
        self.base: ckpt.Checkpoint | None = None  # where a rollback goes: latest complete
        self._last_report_at: float | None = None
        self._boundary_at: dict[int, float] = {}  # step boundary -> when this generation got there
        self._pending: tuple[dict[str, Any], float] | None = None
        self.restarts = 0
        self._awaited: int | None = None  # a periodic checkpoint not yet seen complete
        self.on_checkpoint: Callable[[ckpt.Checkpoint], None] | None = None

    # --- generations ---------------------------------------------------------------------

    def storage(self, gen: _Generation | None = None) -> Storage:
        g = gen or self.gen
        assert g is not None
        return PrefixedStorage(self.shared, keys.generation_prefix(g.number).rstrip("/"))

    def launch(self, first_step: int, resume: ckpt.Checkpoint | None) -> None:
        """Start a new generation at ``first_step`` (from ``resume``, or the initial weights)."""
        number = self.first_generation if self.gen is None else self.gen.number + 1
        gen = _Generation(number, first_step, time.time(), time.monotonic())
        self.gen = gen
        self.generations.append(gen)
        store = self.storage(gen)
        for step in (first_step, first_step + 1):
            if step < self.total_steps:
                self.feed(store, step)
        settings = {
            **self.settings,
            "total_steps": self.total_steps,
            "function_timeout_s": self.function_timeout_s,
            "checkpoint_every": self.checkpoint_every,
            "heartbeat_s": self.heartbeat_s,
            "resume": None if resume is None else [resume.step, resume.generation],
        }
        now = time.monotonic()
        for s, r in self.functions:
            stage = self.plan.stages[s]
            payload = self.make_payload(s, r, number, first_step, settings)
            spec = FunctionSpec(str(WorkerId(s, r)), stage.memory_mb, self.function_timeout_s)
            gen.invocations[WorkerId(s, r)] = self.platform.start(spec, payload)
            gen.watch[WorkerId(s, r)] = _Watch(changed=now)
        self._last_report_at = None
        self._boundary_at = {first_step: gen.launched_mono}
        self._awaited = None

    def cancel(self, gen: _Generation) -> None:
        for inv in gen.invocations.values():
            self.platform.cancel(inv)

    def cancel_all(self) -> None:
        for gen in self.generations:
            self.cancel(gen)

    # --- watching ------------------------------------------------------------------------

    def _failure(self, worker: WorkerId, state: InvocationState) -> Lost:
        s = worker.stage
        stage = self.plan.stages[s]
        where = f"function '{worker}' (stage {s}, replica {worker.replica})"
        if state.reason == "memory":
            err: FunctionFailed = MemoryExceeded(
                f"{where}: {state.message}\nfix: it needs more than {stage.memory_mb} MB; raise "
                f"stages[{s}].memory_mb, or shrink its share of the work (more micro-batches, "
                "fewer layers in the stage)",
                function=str(worker),
                reason="memory",
            )
            return Lost(worker, "memory", str(err), recoverable=False, error=err)
        message = f"{where} failed ({state.reason}): {state.message}"
        recoverable = state.reason in ("crash", "timeout", "cancelled", "lost") or (
            state.reason == "error" and bool(_TRANSIENT.search(state.message or ""))
        )
        err = FunctionFailed(message, function=str(worker), reason=state.reason)
        return Lost(worker, state.reason or "error", message, recoverable=recoverable, error=err)

    def check(self) -> None:
        """Raise Lost for the first function of the current generation that failed or hangs."""
        gen = self.gen
        assert gen is not None
        for worker, inv in gen.invocations.items():
            state = self.platform.state(inv)
            if state.status in (Status.FAILED, Status.CANCELLED):
                raise self._failure(worker, state)
        self._check_heartbeats(gen)

    def _check_heartbeats(self, gen: _Generation) -> None:
        now = time.monotonic()
        store = self.storage(gen)
        for worker, w in gen.watch.items():
            if now - w.changed < self.heartbeat_s and w.seen is not None:
                continue  # read each heartbeat at most once per period
            try:
                data: bytes | None = store.get(function_key(*worker))
            except KeyNotFound:
                data = None
            if data is not None and data != w.seen:
                w.seen, w.changed = data, now
                with contextlib.suppress(ValueError):
                    beat = json.loads(data)
                    w.activity, w.started = beat.get("activity"), beat.get("step") is not None
                continue
            # Until its first step, a function is starting (imports, loading weights): it may
            # beat irregularly, and the platform reports a crash at once anyway.
            deadline = self.heartbeat_deadline_s if w.started else self.startup_deadline_s
            if now - w.changed > deadline:
                state = self.platform.state(gen.invocations[worker])
                if state.done:
                    continue  # ended: the platform's state tells how
                silent = now - w.changed
                # Its heartbeat's label, or the platform's where no beat carried one yet.
                activity = w.activity or state.activity
                last = f"; last activity: {activity}" if activity else ""
                what = "no heartbeat" if w.seen is not None else "no first heartbeat"
                message = (
                    f"function '{worker}' (stage {worker.stage}, replica {worker.replica}) "
                    f"hangs: {what} for {silent:.1f} s (deadline {deadline:g} s){last}"
                )
                raise Lost(worker, "hang", message, detect_s=silent)

    def wait_keys(self, wanted: list[str], what: str, *, raw: bool = False) -> list[Any]:
        """Read and delete every key (in the current generation) once it exists."""
        store = self.storage()
        found: list[Any] = []
        patience = self.timeout_s + 30
        since = time.monotonic()
        deadline = since + patience + self.startup_deadline_s
        while len(found) < len(wanted):
            self.check()
            key = wanted[len(found)]
            try:
                data = store.get(key)
            except KeyNotFound:
                if time.monotonic() > deadline:
                    missing = ", ".join(wanted[len(found) :])
                    raise Lost(
                        None,
                        "stalled",
                        f"no progress on {what} for {time.monotonic() - since:.0f} s although "
                        f"every function is alive; still waiting for {missing}",
                    ) from None
                time.sleep(POLL_S)
                continue
            store.delete(key)
            found.append(data if raw else json.loads(data))
            since = time.monotonic()
            deadline = since + patience
        return found

    # --- the run -------------------------------------------------------------------------

    def run(
        self,
        first_step: int,
        resume: ckpt.Checkpoint | None,
        on_reports: Callable[[int, list[dict[str, Any]]], None],
        on_eval: Callable[[int, list[dict[str, Any]]], None] | None = None,
        eval_due: Callable[[int], bool] = lambda b: False,
        on_checkpoint: Callable[[ckpt.Checkpoint], None] | None = None,
    ) -> list[bytes]:
        """Train steps ``first_step ..`` to the end; return each stage's final weights."""
        self.base = resume
        self.on_checkpoint = on_checkpoint
        self.launch(first_step, resume)
        t = first_step
        while True:
            try:
                if t >= self.total_steps:
                    return self.wait_keys(
                        [keys.final_state(s) for s in range(self.plan.num_stages)],
                        "final weights",
                        raw=True,
                    )
                reports = self.wait_keys(
                    [keys.report(t, s, r) for s, r in self.functions], f"step {t}"
                )
                self._note_step(t, reports)
                on_reports(t, reports)
                if self._pending is not None:
                    event, t0 = self._pending
                    startup = max(r["ready_at"] for r in reports) - min(
                        r["invoked_at"] for r in reports
                    )
                    self.recoveries.append(
                        Recovery(**event, recover_s=time.monotonic() - t0, startup_s=startup)
                    )
                    self._pending = None
                self._plan_stop(t)
                self._feed_ahead(t)
                if on_eval is not None and eval_due(t + 1):
                    last = self.plan.num_stages - 1
                    wanted = [keys.eval_report(t + 1, last, r) for s, r in self.functions
                              if s == last]  # fmt: skip
                    on_eval(t, self.wait_keys(wanted, f"validation after step {t}"))
                self._track_checkpoints(t + 1)
                gen = self.gen
                assert gen is not None
                if gen.stop_at is not None and t + 1 == gen.stop_at:
                    self._relaunch(gen.stop_at)
                t += 1
            except Lost as lost:
                t = self._recover(lost, t)

    def _note_step(self, t: int, reports: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        if self.gen is not None:
            # Every function has finished a step, so the heartbeat deadline applies from now on,
            # not the start-up one, even if steps are so short that no beat has carried one yet.
            for watch in self.gen.watch.values():
                watch.started = True
        self._boundary_at[t + 1] = now
        if self._last_report_at is not None:
            self.step_times.append(now - self._last_report_at)
        else:  # the first step of a generation: its own duration, without the cold start
            self.step_times.append(
                max(r["end"] for r in reports) - min(r["start"] for r in reports)
            )
        self._last_report_at = now

    def _step_estimate(self) -> float:
        recent = self.step_times[-5:]
        return max(recent) if recent else 0.0

    def _plan_stop(self, t: int) -> None:
        """Before feeding step t+2: stop the generation in time for its lifetime limit.

        Functions read ``control`` at the start of each step, so a stop written now is seen at
        the start of step t+3 at the latest (that read follows the feed of step t+2): the
        earliest agreed stop is after step t+3. Stop there unless the generation can still
        afford one more round, i.e. the steps up to t+4 and a checkpoint, before its limit.
        """
        gen = self.gen
        assert gen is not None
        if gen.stop_at is not None:
            return
        stop = t + 4
        if stop >= self.total_steps:
            return  # this generation ends the job
        tau = self._step_estimate()
        write = max(self.checkpoint_s, tau) + 0.5
        margin = max(1.0, 0.05 * self.function_timeout_s)
        deadline = gen.launched_mono + self.function_timeout_s
        # Affordable with one more round: steps t+1 .. t+4, then the checkpoint of t+5.
        if time.monotonic() + (stop + 1 - t) * tau + write + margin <= deadline:
            return
        gen.stop_at = stop
        self.storage(gen).put(control_key(), json.dumps({"stop_at": stop}).encode())

    def _feed_ahead(self, t: int) -> None:
        gen = self.gen
        assert gen is not None
        u = t + 2
        if u < self.total_steps and (gen.stop_at is None or u < gen.stop_at):
            self.feed(self.storage(gen), u)

    def _relaunch(self, step: int) -> None:
        """The generation stopped as planned after ``step - 1``: continue from its checkpoint."""
        old = self.gen
        assert old is not None
        t0 = time.monotonic()
        target = ckpt.Checkpoint(step, old.number)
        deadline = t0 + self.timeout_s + 30
        while target not in ckpt.complete_checkpoints(self.shared, self.functions):
            self.check()
            if time.monotonic() > deadline:
                raise Lost(None, "stalled", f"the checkpoint of step {step} did not complete")
            time.sleep(POLL_S)
        self._checkpoint_done(target)
        for inv in old.invocations.values():
            self.platform.join(inv, timeout=self.timeout_s)
        self._collect_lifetimes(old)
        self.shared.delete_prefix(keys.generation_prefix(old.number))
        self.launch(step, target)
        event: dict[str, Any] = {
            "kind": "time limit",
            "function": None,
            "reason": "time limit",
            "message": f"generation {old.number} ended before its time limit after step {step - 1}",
            "generation": old.number + 1,
            "resumed_from": step,
            "noticed_at_step": step,
            "detect_s": None,
            "detected_at": time.time(),
            "relaunch_s": self.gen.launched_mono - t0,  # type: ignore[union-attr]
        }
        self._pending = (event, t0)

    def _collect_lifetimes(self, gen: _Generation) -> None:
        """Each function's last record (for its bill), where it wrote one."""
        store = self.storage(gen)
        for s, r in self.functions:
            try:
                gen.lifetimes.append(json.loads(store.get(keys.lifetime(s, r))))
            except (KeyNotFound, ValueError):
                continue

    def _track_checkpoints(self, boundary: int) -> None:
        """Pick up periodic checkpoints once complete: their cost, the rollback point, pruning.

        Functions write a checkpoint between two steps, while the client reads reports; it is
        looked for after each step from its boundary on (one LIST), until it is complete.
        """
        every = self.checkpoint_every
        if every and boundary % every == 0 and boundary < self.total_steps:
            self._awaited = boundary
        if self._awaited is None:
            return
        done = ckpt.complete_checkpoints(self.shared, self.functions)
        newest = [c for c in done if self.base is None or c > self.base]
        if newest:
            self._checkpoint_done(newest[-1])
        if self.base is not None and self.base.step >= self._awaited:
            self._awaited = None

    def _checkpoint_done(self, c: ckpt.Checkpoint) -> None:
        """``c`` is complete: note its cost, make it the rollback point, drop older ones."""
        slowest = 0.0
        for s, r in self.functions:
            try:
                manifest = json.loads(
                    self.shared.get(ckpt.manifest_key(c.step, c.generation, s, r))
                )
                slowest = max(slowest, float(manifest.get("written_s", 0.0)))
            except (KeyNotFound, ValueError):
                continue
        self.checkpoint_s = max(self.checkpoint_s, slowest)
        self.checkpoint_writes.append((c.step, slowest))
        self.base = c
        ckpt.prune_checkpoints(self.shared, c)
        if self.on_checkpoint is not None:
            self.on_checkpoint(c)

    def _recover(self, lost: Lost, t: int) -> int:
        detected, detected_wall = time.monotonic(), time.time()
        gen = self.gen
        assert gen is not None
        self.cancel(gen)
        self.failures.append(lost)
        if not lost.recoverable:
            raise lost.error or FunctionFailed(lost.message, reason=lost.reason)
        if self.restarts >= self.max_restarts:
            hint = ""
            if lost.reason == "timeout":
                hint = (
                    f"\nfix: a function must get through its start-up and at least 4 steps "
                    f"within function_timeout_s={self.function_timeout_s:g} s to hand over to the "
                    "next; raise function_timeout_s, or shorten each step (more replicas, "
                    "smaller batches)"
                )
            if len(self.failures) == 1:
                message = f"{lost.message}{hint}"
            else:
                listed = "\n".join(f"  {i + 1}. {f.message}" for i, f in enumerate(self.failures))
                message = (
                    f"the job failed {len(self.failures)} times, more than max_restarts="
                    f"{self.max_restarts} allows; the failures:\n{listed}{hint}"
                )
            raise FunctionFailed(
                message, function=str(lost.worker) if lost.worker else None, reason=lost.reason
            ) from None
        self.restarts += 1
        # Roll back to the latest complete checkpoint, or the state the job started from.
        done = [c for c in ckpt.complete_checkpoints(self.shared, self.functions)
                if self.base is None or c >= self.base]  # fmt: skip
        if done and done[-1] != self.base:
            self._checkpoint_done(done[-1])
        target = self.base
        step = target.step if target is not None else self.generations[0].first_step
        # The current generation started at a checkpoint no newer than the rollback's.
        since = self._boundary_at.get(step, gen.launched_mono)
        self._collect_lifetimes(gen)
        self.shared.delete_prefix(keys.generation_prefix(gen.number))
        if self._pending is not None:  # a relaunch that never got to its first report
            unfinished, t0 = self._pending
            self.recoveries.append(Recovery(**unfinished, recover_s=detected - t0))
            self._pending = None
        self.launch(step, target)
        event: dict[str, Any] = {
            "kind": "failure",
            "function": str(lost.worker) if lost.worker else None,
            "reason": lost.reason,
            "message": lost.message,
            "generation": gen.number + 1,
            "resumed_from": step,
            "noticed_at_step": t,
            "detect_s": lost.detect_s,
            "detected_at": detected_wall,
            "relaunch_s": self.gen.launched_mono - detected,  # type: ignore[union-attr]
            "redone_steps": max(0, t - step),
            "lost_s": max(0.0, detected - since),
        }
        self._pending = (event, detected)
        return step
