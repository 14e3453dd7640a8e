"""Hand-over and recovery: how one generation ends and the next one starts.

* **Hand-over before the time limit.** Every function lives at most ``function_timeout_s``.
  Before the client feeds step ``u`` it checks that the generation can still afford its next
  steps and a checkpoint; when it cannot, it writes ``stop_at`` into the generation's ``control``
  key. Every function reads that key at the start of each step (in the background), so all of
  them agree on the last step: they write a checkpoint and end cleanly, and the next generation
  resumes from it.
* **Recovery.** A function reported :class:`~funcpipe.client.health.Lost` has its generation
  cancelled; the job rolls back to its last complete checkpoint (or its start) and relaunches,
  at most ``max_restarts`` times.

Each relaunch becomes a :class:`Recovery` once the new generation reports its first step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from funcpipe.client.generations import Generation, Generations
from funcpipe.client.health import POLL_S, Lost
from funcpipe.errors import FunctionFailed, KeyNotFound
from funcpipe.runtime import checkpoint as ckpt
from funcpipe.storage.base import Storage

__all__ = ["Checkpoints", "Handover", "Recovery"]


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


class Checkpoints:
    """The job's complete checkpoints as the client sees them: the rollback point and its cost.

    Functions write a checkpoint between two steps, while the client reads reports; a periodic
    one is looked for after each step from its boundary on (one LIST), until it is complete.
    """

    def __init__(
        self,
        shared: Storage,
        functions: list[tuple[int, int]],
        every: int | None,
        total_steps: int,
    ) -> None:
        self.shared, self.functions = shared, functions
        self.every, self.total_steps = every, total_steps
        self.base: ckpt.Checkpoint | None = None  # where a rollback goes: latest complete
        self.slowest_s = 0.0  # the longest checkpoint write seen
        self.writes: list[tuple[int, float]] = []  # (step, slowest piece's seconds)
        self.awaited: int | None = None  # a periodic checkpoint not yet seen complete
        self.on_complete: Callable[[ckpt.Checkpoint], None] | None = None

    def track(self, boundary: int) -> None:
        """After the step ending at ``boundary``: pick up a periodic checkpoint once complete."""
        every = self.every
        if every and boundary % every == 0 and boundary < self.total_steps:
            self.awaited = boundary
        if self.awaited is None:
            return
        done = ckpt.complete_checkpoints(self.shared, self.functions)
        newest = [c for c in done if self.base is None or c > self.base]
        if newest:
            self.completed(newest[-1])
        if self.base is not None and self.base.step >= self.awaited:
            self.awaited = None

    def completed(self, c: ckpt.Checkpoint) -> None:
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
        self.slowest_s = max(self.slowest_s, slowest)
        self.writes.append((c.step, slowest))
        self.base = c
        ckpt.prune_checkpoints(self.shared, c)
        if self.on_complete is not None:
            self.on_complete(c)

    def rollback_point(self) -> ckpt.Checkpoint | None:
        """The latest complete checkpoint (made the base), or None: the job's start."""
        done = [c for c in ckpt.complete_checkpoints(self.shared, self.functions)
                if self.base is None or c >= self.base]  # fmt: skip
        if done and done[-1] != self.base:
            self.completed(done[-1])
        return self.base


class Handover:
    """Stops a generation before its time limit, and relaunches after a stop or a failure.

    ``launch(step, checkpoint)`` starts the next generation; ``check()`` raises Lost when a
    function of the current one is gone or stuck.
    """

    def __init__(
        self,
        *,
        generations: Generations,
        checkpoints: Checkpoints,
        launch: Callable[[int, ckpt.Checkpoint | None], Generation],
        check: Callable[[], None],
        timeout_s: float,
        function_timeout_s: float,
        max_restarts: int,
        total_steps: int,
    ) -> None:
        self.gens, self.checkpoints = generations, checkpoints
        self.launch, self.check = launch, check
        self.timeout_s, self.function_timeout_s = timeout_s, function_timeout_s
        self.max_restarts, self.total_steps = max_restarts, total_steps
        self.recoveries: list[Recovery] = []
        self.failures: list[Lost] = []
        self.restarts = 0
        self._pending: tuple[dict[str, Any], float] | None = None

    def first_report(self, reports: list[dict[str, Any]]) -> None:
        """A step was reported: a relaunch waiting for its first report becomes a Recovery."""
        if self._pending is None:
            return
        event, t0 = self._pending
        startup = max(r["ready_at"] for r in reports) - min(r["invoked_at"] for r in reports)
        self.recoveries.append(
            Recovery(**event, recover_s=time.monotonic() - t0, startup_s=startup)
        )
        self._pending = None

    def plan_stop(self, t: int, step_s: float) -> None:
        """Before feeding step t+2: stop the generation in time for its lifetime limit.

        Functions read ``control`` at the start of each step, so a stop written now is seen at
        the start of step t+3 at the latest (that read follows the feed of step t+2): the
        earliest agreed stop is after step t+3. Stop there unless the generation can still
        afford one more round, i.e. the steps up to t+4 and a checkpoint, before its limit;
        ``step_s`` is the client's estimate of one step.
        """
        gen = self.gens.current
        assert gen is not None
        if gen.stop_at is not None:
            return
        stop = t + 4
        if stop >= self.total_steps:
            return  # this generation ends the job
        write = max(self.checkpoints.slowest_s, step_s) + 0.5
        margin = max(1.0, 0.05 * self.function_timeout_s)
        deadline = gen.launched_mono + self.function_timeout_s
        # Affordable with one more round: steps t+1 .. t+4, then the checkpoint of t+5.
        if time.monotonic() + (stop + 1 - t) * step_s + write + margin <= deadline:
            return
        self.gens.stop_at(gen, stop)

    def relaunch(self, step: int) -> None:
        """The generation stopped as planned after ``step - 1``: continue from its checkpoint."""
        old = self.gens.current
        assert old is not None
        t0 = time.monotonic()
        target = ckpt.Checkpoint(step, old.number)
        deadline = t0 + self.timeout_s + 30
        while target not in ckpt.complete_checkpoints(self.gens.shared, self.gens.functions):
            self.check()
            if time.monotonic() > deadline:
                raise Lost(None, "stalled", f"the checkpoint of step {step} did not complete")
            time.sleep(POLL_S)
        self.checkpoints.completed(target)
        self.gens.join(old, self.timeout_s)
        self.gens.collect_lifetimes(old)
        self.gens.clear(old)
        new = self.launch(step, target)
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
            "relaunch_s": new.launched_mono - t0,
        }
        self._pending = (event, t0)

    def recover(self, lost: Lost, t: int, boundary_at: Mapping[int, float]) -> int:
        """Roll back after ``lost`` while waiting for step ``t``; return the step to go on from.

        ``boundary_at`` maps each step boundary the current generation reached to when it did.
        Raises the failure when a relaunch cannot cure it or ``max_restarts`` is spent.
        """
        detected, detected_wall = time.monotonic(), time.time()
        gen = self.gens.current
        assert gen is not None
        self.gens.cancel(gen)
        self.failures.append(lost)
        if not lost.recoverable:
            raise lost.error or FunctionFailed(lost.message, reason=lost.reason)
        if self.restarts >= self.max_restarts:
            raise self._give_up(lost) from None
        self.restarts += 1
        # Roll back to the latest complete checkpoint, or the state the job started from.
        target = self.checkpoints.rollback_point()
        step = target.step if target is not None else self.gens.all[0].first_step
        # The current generation started at a checkpoint no newer than the rollback's.
        since = boundary_at.get(step, gen.launched_mono)
        self.gens.collect_lifetimes(gen)
        self.gens.clear(gen)
        if self._pending is not None:  # a relaunch that never got to its first report
            unfinished, t0 = self._pending
            self.recoveries.append(Recovery(**unfinished, recover_s=detected - t0))
            self._pending = None
        new = self.launch(step, target)
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
            "relaunch_s": new.launched_mono - detected,
            "redone_steps": max(0, t - step),
            "lost_s": max(0.0, detected - since),
        }
        self._pending = (event, detected)
        return step

    def _give_up(self, lost: Lost) -> FunctionFailed:
        """The error ending a job that failed more often than ``max_restarts`` allows."""
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
        return FunctionFailed(
            message, function=str(lost.worker) if lost.worker else None, reason=lost.reason
        )
