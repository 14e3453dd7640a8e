"""What a function does around its training steps so that a job survives it.

* It beats and watches its client (:mod:`funcpipe.runtime.heartbeat`).
* It resumes from a checkpoint when its package says so.
* At the start of every step it reads, in the background, the client's ``control`` key of its
  generation; when the client has set ``stop_at = T``, the function ends after step ``T - 1``.
  The read of step ``t`` follows the function's own step ``t - 1``, whose data the client fed
  only after any earlier control write, so every function of the generation sees a stop in time
  and they all end at the same step (see :mod:`funcpipe.client.manager`).
* At each step boundary it runs the validation pass when one is due, and writes its part of a
  checkpoint every ``checkpoint_every`` steps and before a planned stop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from torch import nn

from funcpipe.errors import KeyNotFound
from funcpipe.runtime import checkpoint as ckpt
from funcpipe.runtime import failpoints, keys
from funcpipe.runtime.activity import set_activity
from funcpipe.runtime.executor import Executor
from funcpipe.runtime.heartbeat import FunctionHeartbeat
from funcpipe.runtime.stage import StageRunner
from funcpipe.storage.base import Storage

__all__ = ["Lifecycle", "eval_due"]

CONTROL = "control"  # funcpipe.client.manager.control_key()


def eval_due(boundary: int, every: int | None, total: int) -> bool:
    """Whether the validation pass runs after ``boundary`` steps: every k steps and at the end."""
    return bool(every) and (boundary % every == 0 or boundary == total)  # type: ignore[operator]


class Lifecycle:
    """One function's heartbeat, resume, agreed stop, validation and checkpoints."""

    def __init__(self, pkg: Any, shared: Storage, storage: Storage) -> None:
        self.pkg, self.shared, self.storage = pkg, shared, storage
        settings: dict[str, Any] = pkg.settings
        self.total = int(settings.get("total_steps", pkg.end_step))
        self.every = settings.get("checkpoint_every")
        self.eval = settings.get("eval")  # {"every": k, "micro_batches": n} or None
        self.stop_at: int | None = None
        self.reached_end = False
        failpoints.arm(pkg.name)
        self.heartbeat: FunctionHeartbeat | None = None
        beat = settings.get("heartbeat_s")
        if beat:
            self.heartbeat = FunctionHeartbeat(
                storage,
                shared,
                stage=pkg.stage,
                replica=pkg.replica,
                period_s=float(beat),
                client_key=keys.manifest() if settings.get("client_deadline_s") else None,
                client_deadline_s=float(settings.get("client_deadline_s") or 0),
            ).start()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="control")

    def restore(self, layers: nn.Module, runner: StageRunner) -> None:
        resume = self.pkg.settings.get("resume")
        if resume is None:
            return
        set_activity(f"restore checkpoint of step {resume[0]}")
        ckpt.restore(
            self.shared,
            ckpt.Checkpoint(int(resume[0]), int(resume[1])),
            stage=self.pkg.stage,
            replica=self.pkg.replica,
            layers=layers,
            optimizer=runner.optimizer,
        )

    def _read_control(self) -> int | None:
        try:
            data = self.storage.get(CONTROL)
        except KeyNotFound:
            return None
        value = json.loads(data).get("stop_at")
        return int(value) if value is not None else None

    def steps(self, executor: Executor, layers: nn.Module) -> Iterator[int]:
        """Yield each step to run; between steps, do what the boundary calls for."""
        pkg = self.pkg
        for step in range(pkg.first_step, pkg.end_step):
            control: Future[int | None] | None = None
            if self.stop_at is None:
                control = self._pool.submit(self._read_control)
            if self.heartbeat is not None:
                self.heartbeat.step = step
            yield step
            boundary = step + 1
            if control is not None:
                self.stop_at = control.result()
            if self.eval and eval_due(boundary, self.eval.get("every"), self.total):
                self._evaluate(executor, boundary)
            stop = self.stop_at == boundary
            if boundary < self.total and (stop or (self.every and boundary % self.every == 0)):
                self._checkpoint(executor, layers, boundary)
            if stop:
                return
        self.reached_end = pkg.end_step >= self.total

    def _evaluate(self, executor: Executor, boundary: int) -> None:
        trace = executor.run_step(boundary, evaluate=True)
        if not executor.runner.is_last:
            return
        report = {
            "boundary": boundary,
            "replica": self.pkg.replica,
            "loss": trace.loss,
            "correct": trace.correct,
            "counted": trace.counted,
            "start": trace.start,
            "end": trace.end,
        }
        self.storage.put(
            keys.eval_report(boundary, self.pkg.stage, self.pkg.replica),
            json.dumps(report).encode(),
        )

    def _checkpoint(self, executor: Executor, layers: nn.Module, boundary: int) -> None:
        set_activity(f"checkpoint write, step {boundary}")
        ckpt.write_piece(
            self.shared,
            step=boundary,
            generation=self.pkg.generation,
            stage=self.pkg.stage,
            replica=self.pkg.replica,
            layers=layers,
            optimizer=executor.runner.optimizer,
            seed=self.pkg.seed,
            before_manifest=lambda: set_activity(f"checkpoint manifest, step {boundary}"),
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.heartbeat is not None:
            self.heartbeat.close()
