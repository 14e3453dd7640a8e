"""The function manager: run a job's steps on generations of functions, to the end.

It launches a generation (:mod:`funcpipe.client.generations`), reads each step's reports while
feeding data two steps ahead, watches the functions' health (:mod:`funcpipe.client.health`), and
hands over to a new generation before the time limit or after a failure
(:mod:`funcpipe.client.handover`); a stream of batches is replayed after a rollback
(:mod:`funcpipe.client.replay`). This module keeps the names it always exported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from funcpipe.client.generations import Generation, Generations, PackageMaker, control_key
from funcpipe.client.handover import Checkpoints, Handover, Recovery
from funcpipe.client.health import POLL_S, Health, Lost
from funcpipe.client.replay import Replay
from funcpipe.errors import KeyNotFound
from funcpipe.planning.plan import Plan
from funcpipe.platforms.base import Platform
from funcpipe.runtime import checkpoint as ckpt
from funcpipe.runtime import keys
from funcpipe.schedule import Action, Op
from funcpipe.storage.base import Storage

__all__ = ["FunctionManager", "Lost", "Recovery", "Replay", "control_key"]


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
        client: Sequence[Action] = (),
    ) -> None:
        self.platform, self.plan, self.shared = platform, plan, shared
        self.total_steps, self.timeout_s = total_steps, timeout_s
        self.startup_deadline_s = startup_deadline_s
        every_function = {
            **(settings or {}),
            "total_steps": total_steps,
            "function_timeout_s": function_timeout_s,
            "checkpoint_every": checkpoint_every,
            "heartbeat_s": heartbeat_s,
        }
        self.gens = Generations(platform=platform, plan=plan, shared=shared,
                                make_payload=make_payload, feed=feed, total_steps=total_steps,
                                function_timeout_s=function_timeout_s, settings=every_function,
                                first_generation=first_generation)  # fmt: skip
        self.functions = self.gens.functions
        # whose report each step waits for: the client's list's READ_REPORTs (every function)
        reads = [(a.stage, a.src or 0) for a in client if a.op is Op.READ_REPORT]
        self.reports_from = reads or list(self.functions)
        self.health = Health(platform=platform, plan=plan, heartbeat_s=heartbeat_s,
                             heartbeat_deadline_s=heartbeat_deadline_s,
                             startup_deadline_s=startup_deadline_s)  # fmt: skip
        self.checkpoints = Checkpoints(shared, self.functions, checkpoint_every, total_steps)
        self.handover = Handover(generations=self.gens, checkpoints=self.checkpoints,
                                 launch=self.launch, check=self.check, timeout_s=timeout_s,
                                 function_timeout_s=function_timeout_s,
                                 max_restarts=max_restarts, total_steps=total_steps)  # fmt: skip
        self.step_times: list[float] = []  # client-observed seconds between step reports
        self._last_report_at: float | None = None
        self._boundary_at: dict[int, float] = {}  # step boundary -> when this generation got there

    # --- what the job's client reads afterwards ------------------------------------------

    @property
    def gen(self) -> Generation | None:
        """The current generation."""
        return self.gens.current

    @property
    def generations(self) -> list[Generation]:
        return self.gens.all

    @property
    def recoveries(self) -> list[Recovery]:
        return self.handover.recoveries

    @property
    def failures(self) -> list[Lost]:
        return self.handover.failures

    @property
    def checkpoint_writes(self) -> list[tuple[int, float]]:
        """Each complete checkpoint: (its step, seconds its slowest piece took to write)."""
        return self.checkpoints.writes

    # --- generations ---------------------------------------------------------------------

    def storage(self, gen: Generation | None = None) -> Storage:
        return self.gens.storage(gen)

    def launch(self, first_step: int, resume: ckpt.Checkpoint | None) -> Generation:
        """Start a new generation at ``first_step`` (from ``resume``, or the initial weights)."""
        gen = self.gens.launch(first_step, resume)
        self._last_report_at = None
        self._boundary_at = {first_step: gen.launched_mono}
        self.checkpoints.awaited = None
        return gen

    def cancel(self, gen: Generation) -> None:
        self.gens.cancel(gen)

    def cancel_all(self) -> None:
        self.gens.cancel_all()

    # --- watching ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise Lost for the first function of the current generation that failed or hangs."""
        gen = self.gens.current
        assert gen is not None
        self.health.check(gen, self.gens.storage(gen))

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
        self.checkpoints.base = resume
        self.checkpoints.on_complete = on_checkpoint
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
                    [keys.report(t, s, r) for s, r in self.reports_from], f"step {t}"
                )
                self._note_step(t, reports)
                on_reports(t, reports)
                self.handover.first_report(reports)
                self.handover.plan_stop(t, self._step_estimate())
                self._feed_ahead(t)
                if on_eval is not None and eval_due(t + 1):
                    last = self.plan.num_stages - 1
                    wanted = [keys.eval_report(t + 1, last, r) for s, r in self.functions
                              if s == last]  # fmt: skip
                    on_eval(t, self.wait_keys(wanted, f"validation after step {t}"))
                self.checkpoints.track(t + 1)
                gen = self.gens.current
                assert gen is not None
                if gen.stop_at is not None and t + 1 == gen.stop_at:
                    self.handover.relaunch(gen.stop_at)
                t += 1
            except Lost as lost:
                t = self.handover.recover(lost, t, self._boundary_at)

    def _note_step(self, t: int, reports: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        if self.gens.current is not None:
            # Every function has finished a step, so the heartbeat deadline applies from now on,
            # not the start-up one, even if steps are so short that no beat has carried one yet.
            for watch in self.gens.current.watch.values():
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

    def _feed_ahead(self, t: int) -> None:
        gen = self.gens.current
        assert gen is not None
        u = t + 2
        if u < self.total_steps and (gen.stop_at is None or u < gen.stop_at):
            self.gens.feed(self.storage(gen), u)
