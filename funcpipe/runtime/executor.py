"""Run one function's action list for one training step.

The main thread walks the list (see :mod:`funcpipe.runtime.schedule` for the contract): transfers
go to a FIFO upload thread or a FIFO download thread, compute runs inline once what it needs has
arrived. So while micro-batch b is computed, b-1's output is uploading and b+1's input is
downloading, each on its own link direction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import torch

from funcpipe import codec
from funcpipe.errors import StorageTimeout
from funcpipe.platforms.base import set_activity
from funcpipe.runtime import keys
from funcpipe.runtime.collectives import all_reduce
from funcpipe.runtime.schedule import Action, Lane, Op, WorkerId, channel, local_deps
from funcpipe.runtime.seeds import forward_seed
from funcpipe.runtime.stage import StageRunner
from funcpipe.storage.base import Storage

log = logging.getLogger(__name__)

#: Metadata flag on a gradient whose micro-batch had a non-finite loss downstream.
NONFINITE = "nonfinite"


@dataclass
class StepTrace:
    """What one function did in one step: wall-clock spans per action, for monitoring and models."""

    step: int
    start: float = 0.0
    end: float = 0.0
    loss: float = 0.0
    correct: int = 0  # validation only: correct and counted predictions
    counted: int = 0
    skipped: bool = False  # the update was dropped: a loss of this step was not finite
    nonfinite: list[int] = field(default_factory=list)  # last stage: those micro-batches
    spans: list[tuple[str, str, float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, action: Action, t0: float, t1: float) -> None:
        with self._lock:
            self.spans.append((str(action), action.lane.value, t0, t1))


class Executor:
    """Executes a function's schedule, step after step, against its (throttled) storage."""

    def __init__(
        self,
        worker: WorkerId,
        actions: list[Action],
        runner: StageRunner,
        storage: Storage,
        *,
        replicas: int,
        timeout_s: float,
        sync_algorithm: str = "pipelined",
        overlap: bool = True,
        eval_actions: list[Action] | None = None,
        seed: int | None = None,
        loader: Callable[[int, Action], tuple[Any, dict[str, str]]] | None = None,
        data_storage: Storage | None = None,
    ) -> None:
        self.worker = worker
        # Reads this function's own inputs/targets of a training step from a data set in
        # storage; None: the client feeds them.
        self.loader = loader
        self.seed = seed  # None: leave the random state alone (single-process tests)
        self.actions = actions
        self.eval_actions = eval_actions or []
        # What each compute action waits for: the schedule's one dependency rule.
        self.deps = {
            walk: {a: local_deps(a, acts) for a in acts if a.lane is Lane.COMPUTE}
            for walk, acts in (("train", self.actions), ("eval", self.eval_actions))
        }
        # Validation inputs and targets are stored once per job, outside any one generation.
        self.data_storage = data_storage or storage
        self.runner = runner
        self.storage = storage
        self.replicas = replicas
        self.timeout_s = timeout_s
        self.sync_algorithm = sync_algorithm
        # overlap=False waits for every transfer where it is listed: the same schedule without
        # communication/compute overlap, the baseline that shows what the lanes buy.
        self.overlap = overlap
        self._lanes = {
            Lane.UPLOAD: ThreadPoolExecutor(1, thread_name_prefix="upload"),
            Lane.DOWNLOAD: ThreadPoolExecutor(1, thread_name_prefix="download"),
        }
        # Deletes of consumed transfers: off the download lane, and each only a request latency.
        self._deleter = ThreadPoolExecutor(2, thread_name_prefix="delete")
        self._deletes: list[Future[None]] = []

    def close(self, *, wait: bool = True) -> None:
        """Stop the lane threads; ``wait=False`` after a failure, when a lane may be blocked.

        On a clean close every pending delete finishes first, so a function leaves nothing of
        what it consumed; after a failure the client's clean-up of the job's keys covers them.
        """
        for pool in self._lanes.values():
            pool.shutdown(wait=wait, cancel_futures=True)
        self._deleter.shutdown(wait=wait, cancel_futures=not wait)
        if wait:
            self._reap_deletes(block=True)

    def _delete_later(self, store: Storage, key: str) -> None:
        self._reap_deletes(block=False)
        self._deletes.append(self._deleter.submit(store.delete, key))

    def _reap_deletes(self, *, block: bool) -> None:
        """Drop finished deletes; a failed one only leaves a key the job's clean-up removes."""
        pending = []
        for fut in self._deletes:
            if not block and not fut.done():
                pending.append(fut)
                continue
            exc = fut.exception()
            if exc is not None:
                log.warning("%s: could not delete a consumed transfer: %s", self.worker, exc)
        self._deletes = pending

    def run_step(self, step: int, *, evaluate: bool = False) -> StepTrace:
        """Run training step ``step``; with ``evaluate``, the validation pass after ``step`` steps.

        A validation pass walks ``eval_actions`` by the same rules; its trace's ``loss`` is the
        weighted validation loss of this function's micro-batches (last stage only).
        """
        trace = StepTrace(step, start=time.time())
        actions = self.eval_actions if evaluate else self.actions
        if evaluate:
            self.runner.layers.eval()
        try:
            self._walk(step, actions, evaluate, trace)
        finally:
            if evaluate:
                self.runner.layers.train()
        trace.end = time.time()
        return trace

    def _walk(self, step: int, actions: list[Action], evaluate: bool, trace: StepTrace) -> None:
        downloads: dict[Action, Future[tuple[Any, dict[str, str]]]] = {}
        uploads: list[Future[None]] = []
        produced: dict[Action, Any] = {}  # compute results waiting to be uploaded

        deps = self.deps["eval" if evaluate else "train"]

        def arrived(a: Action) -> dict[Op, tuple[Any, dict[str, str]]]:
            """The downloaded values ``a`` depends on, by op, once they are all here."""
            return {
                d.op: self._await(downloads.pop(d), d) for d in deps[a] if d.lane is Lane.DOWNLOAD
            }

        for a in actions:
            if a.lane is Lane.DOWNLOAD:
                downloads[a] = self._lanes[Lane.DOWNLOAD].submit(
                    self._download, step, a, trace, evaluate
                )
                if not self.overlap:
                    self._await(downloads[a], a)
            elif a.lane is Lane.UPLOAD:
                value = produced.pop(a)
                # The flag is read here, not in the lane: step() resets it before uploads end.
                flagged = a.op is Op.SEND_GRAD and a.micro_batch in self.runner.nonfinite
                meta = {NONFINITE: "1"} if flagged else None
                uploads.append(
                    self._lanes[Lane.UPLOAD].submit(
                        self._upload, step, a, value, meta, trace, evaluate
                    )
                )
                if not self.overlap:
                    self._await(uploads[-1], a)
            else:
                self._compute(step, a, arrived, produced, trace)
        for fut, a in zip(uploads, [a for a in actions if a.lane is Lane.UPLOAD], strict=True):
            self._await(fut, a)

    def _await(self, fut: Future[Any], action: Action) -> Any:
        """Result of a lane's transfer. Each storage wait has its own timeout; a lane may hold
        every transfer of the step ahead of this one, hence the bound."""
        bound = self.timeout_s * (len(self.actions) + 1) + 30
        t0 = time.monotonic()
        try:
            return fut.result(timeout=bound)
        except FutureTimeout:
            # On Python >= 3.11 this class is the builtin TimeoutError, which a storage wait's
            # own StorageTimeout also is: that one already names its key and its true wait.
            if fut.done():
                raise
            raise StorageTimeout(
                f"{self.worker}: {action} did not finish within "
                f"{time.monotonic() - t0:.0f} s (its lane was still busy)"
            ) from None

    def _compute(
        self,
        step: int,
        a: Action,
        arrived: Callable[[Action], dict[Op, tuple[Any, dict[str, str]]]],
        produced: dict[Action, Any],
        trace: StepTrace,
    ) -> None:
        s, b, runner = a.stage, a.micro_batch, self.runner
        inputs = arrived(a)
        if a.op is Op.FORWARD:
            value, _ = inputs[Op.LOAD_INPUT if runner.is_first else Op.RECV_ACT]
            set_activity(f"forward mb {b}, step {step}")
            if self.seed is not None:
                # The CPU generator only: torch.manual_seed also queues a seed for every
                # uninitialised accelerator backend, formatting a stack trace for each (~1 ms).
                torch.default_generator.manual_seed(forward_seed(self.seed, step, s, b))
            t0 = time.time()
            out = runner.forward(b, value)
            produced[Action(Op.SEND_ACT, s, b)] = out
        elif a.op is Op.BACKWARD:
            if runner.is_last:
                targets, meta = inputs[Op.LOAD_TARGET]
                set_activity(f"backward mb {b}, step {step}")
                t0 = time.time()
                grads = runner.backward(b, targets=targets, weight=float(meta["weight"]))
            else:
                g, meta = inputs[Op.RECV_GRAD]
                if meta.get(NONFINITE):
                    runner.nonfinite.add(b)
                set_activity(f"backward mb {b}, step {step}")
                t0 = time.time()
                grads = runner.backward(b, grads=g if isinstance(g, tuple) else (g,))
            if grads is not None:
                produced[Action(Op.SEND_GRAD, s, b)] = grads
        elif a.op is Op.SYNC:
            set_activity(f"gradient sync, step {step}")
            t0 = time.time()
            if runner.params:  # every replica holds the same layers, so all skip together
                self._sync(step)
        elif a.op is Op.EVAL_FORWARD:
            value, _ = inputs[Op.LOAD_INPUT if runner.is_first else Op.RECV_ACT]
            set_activity(f"validation mb {b}, after step {step}")
            t0 = time.time()
            out = runner.eval_forward(value)
            if runner.is_last:
                targets, meta = inputs[Op.LOAD_TARGET]
                loss, correct, counted = runner.score(out, targets, float(meta["weight"]))
                trace.loss += loss
                trace.correct += correct
                trace.counted += counted
            else:
                produced[Action(Op.SEND_ACT, s, b)] = out
        elif a.op is Op.STEP:
            set_activity(f"optimizer step, step {step}")
            t0 = time.time()
            trace.skipped = runner.skips_step
            trace.nonfinite = sorted(runner.nonfinite) if runner.is_last else []
            trace.loss = runner.step()
        else:  # pragma: no cover - the schedule only holds the ops above
            raise ValueError(f"{self.worker} cannot run {a}")
        trace.record(a, t0, time.time())

    def _sync(self, step: int) -> None:
        """Sum the stage's gradients over its replicas through storage."""
        runner = self.runner
        flat = all_reduce(
            self.storage,
            runner.flat_grads(),
            rank=self.worker.replica,
            world=self.replicas,
            key_prefix=keys.sync_prefix(step, self.worker.stage),
            algorithm=self.sync_algorithm,
            op="sum",
            timeout=self.timeout_s,
        )
        runner.set_flat_grads(flat)

    def _download(
        self, step: int, a: Action, trace: StepTrace, evaluate: bool = False
    ) -> tuple[Any, dict[str, str]]:
        t0 = time.time()
        if self.loader is not None and not evaluate and a.op in (Op.LOAD_INPUT, Op.LOAD_TARGET):
            value, meta = self.loader(step, a)
            trace.record(a, t0, time.time())
            return value, meta
        ch = channel(a)
        if evaluate:  # validation data stays for the next pass; activations are read once
            key, once = keys.eval_transfer(step, ch), ch.kind not in ("input", "target")
        else:
            key, once = keys.transfer(step, ch), True
        store = self.storage if once else self.data_storage
        data = store.wait(key, self.timeout_s)
        value, meta = codec.decode(data)
        trace.record(a, t0, time.time())
        if once:
            self._delete_later(store, key)
        return value, meta

    def _upload(
        self,
        step: int,
        a: Action,
        value: Any,
        meta: dict[str, str] | None,
        trace: StepTrace,
        evaluate: bool = False,
    ) -> None:
        t0 = time.time()
        key = (keys.eval_transfer if evaluate else keys.transfer)(step, channel(a))
        self.storage.put(key, codec.encode(value, meta))
        trace.record(a, t0, time.time())
