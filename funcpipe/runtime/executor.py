"""Run one function's lowered action list for one training step.

The walk itself is :func:`funcpipe.schedule.walk`, driven by
:func:`~funcpipe.runtime.lanes.drive` with real threads and storage: transfers go to a FIFO
upload thread, a FIFO download thread or the all-reduce's sync lanes, compute runs inline once
what it needs has arrived. So while micro-batch b is computed, b-1's output is uploading and
b+1's input is downloading, each on its own link direction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from funcpipe import codec
from funcpipe.errors import ScheduleError, StorageTimeout
from funcpipe.runtime import keys
from funcpipe.runtime.activity import set_activity
from funcpipe.runtime.collectives import SyncExchange
from funcpipe.runtime.lanes import Job, Lanes, drive
from funcpipe.runtime.seeds import forward_seed
from funcpipe.runtime.stage import StageRunner, sync_size
from funcpipe.schedule.actions import GETS, PUTS, Action, Op, WorkerId
from funcpipe.schedule.channels import channel
from funcpipe.schedule.lower import lane_widths, lower_sync, stage_layouts, sync_layout
from funcpipe.schedule.rules import dependencies
from funcpipe.storage.base import Storage

log = logging.getLogger(__name__)

#: Metadata flag on a gradient whose micro-batch had a non-finite loss downstream.
NONFINITE = "nonfinite"

#: Ops whose storage objects are read once and deleted by their reader.
_READ_ONCE = frozenset({Op.LOAD_INPUT, Op.LOAD_TARGET, Op.RECV_ACT, Op.RECV_GRAD})
_SYNC_PIECES = frozenset(
    {Op.SR_SEND, Op.SR_RECV, Op.AG_SEND, Op.AG_RECV, Op.DONE_SEND, Op.DONE_RECV, Op.REDUCE,
     Op.GATHER, Op.SYNC_CLEAR}
)  # fmt: skip

Downloaded = tuple[Any, dict[str, str]]


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
    """Executes a function's schedule, step after step, against its (throttled) storage.

    ``actions`` is the function's lowered list, as the client checked it. ``run_step``'s
    ``report`` receives each step's trace when the list's REPORT is reached, everything the step
    wrote being across.
    """

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
        loader: Callable[[int, Action], Downloaded] | None = None,
        data_storage: Storage | None = None,
    ) -> None:
        self.worker = worker
        # Reads this function's own inputs/targets of a training step from a data set in
        # storage; None: the client feeds them.
        self.loader = loader
        self.seed = seed  # None: leave the random state alone (single-process tests)
        self.replicas = replicas
        self.sync_algorithm = sync_algorithm
        self.runner = runner
        self.actions = self._checked(actions)
        self.eval_actions = eval_actions or []
        # What each action waits for: the schedule's one dependency rule.
        self.deps = {
            walk: dependencies(acts)
            for walk, acts in (("train", self.actions), ("eval", self.eval_actions))
        }
        # Validation inputs and targets are stored once per job, outside any one generation.
        self.data_storage = data_storage or storage
        self.storage = storage
        self.timeout_s = timeout_s
        # overlap=False waits for every transfer where it is listed: the same schedule without
        # communication/compute overlap, the baseline that shows what the lanes buy.
        self.overlap = overlap
        self._lanes = Lanes(lane_widths(sync_algorithm))
        # Deletes of consumed transfers: off the download lane, and each only a request latency.
        self._deleter = ThreadPoolExecutor(2, thread_name_prefix="delete")
        self._deletes: list[Future[None]] = []

    def _checked(self, actions: list[Action]) -> list[Action]:
        """The list as given, or, for a caller that hands over a compute-level list (a SYNC
        still whole), that list lowered by the same pass the client uses, from the stage's
        own gradients."""
        if not any(a.op is Op.SYNC for a in actions):
            return actions
        numel, itemsize = sync_size(self.runner.params)
        world = [1] * self.worker.stage + [self.replicas]
        sizes = [0] * self.worker.stage + [numel]
        layouts = stage_layouts(world, sizes, itemsize, sync_algorithm=self.sync_algorithm)
        return lower_sync({self.worker: actions}, layouts, self.sync_algorithm)[self.worker]

    def close(self, *, wait: bool = True) -> None:
        """Stop the lane threads; ``wait=False`` after a failure, when a lane may be blocked.

        On a clean close every pending delete finishes first, so a function leaves nothing of
        what it consumed; after a failure the client's clean-up of the job's keys covers them.
        """
        self._lanes.close(wait=wait)
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

    def run_step(
        self,
        step: int,
        *,
        evaluate: bool = False,
        report: Callable[[StepTrace], None] | None = None,
    ) -> StepTrace:
        """Run training step ``step``; with ``evaluate``, the validation pass after ``step`` steps.

        A validation pass walks ``eval_actions`` by the same rules; its trace's ``loss`` is the
        weighted validation loss of this function's micro-batches (last stage only).
        """
        trace = StepTrace(step, start=time.time())
        actions = self.eval_actions if evaluate else self.actions
        walk = _Walk(self, step, evaluate, trace, report)
        if evaluate:
            self.runner.layers.eval()
        try:
            drive(actions, self._lanes, walk, overlap=self.overlap,
                  deps=self.deps["eval" if evaluate else "train"])  # fmt: skip
        except BaseException:
            if walk.exchange is not None:
                walk.exchange.abort.set()  # pending sync waits give up promptly
            raise
        finally:
            if evaluate:
                self.runner.layers.train()
        if not trace.end:
            trace.end = time.time()
        return trace

    def _await(self, fut: Future[Any], action: Action) -> Any:
        """Result of a lane's transfer. Each storage wait has its own timeout; a lane may hold
        every transfer of the step ahead of this one, hence the bound."""
        bound = self.timeout_s * (len(self.actions) + 1) + 30
        t0 = time.monotonic()
        lanes: Lanes | None = getattr(self, "_lanes", None)
        try:
            return lanes.result(fut, bound) if lanes is not None else fut.result(timeout=bound)
        except FutureTimeout:
            # On Python >= 3.11 this class is the builtin TimeoutError, which a storage wait's
            # own StorageTimeout also is: that one already names its key and its true wait.
            if fut.done():
                raise
            raise StorageTimeout(
                f"{self.worker}: {action} did not finish within "
                f"{time.monotonic() - t0:.0f} s (its lane was still busy)"
            ) from None


class _Walk:
    """One step's walk: the executor's handler for each instruction of the walker."""

    def __init__(self, ex: Executor, step: int, evaluate: bool, trace: StepTrace,
                 report: Callable[[StepTrace], None] | None) -> None:  # fmt: skip
        self.ex, self.step, self.evaluate, self.trace, self.report = (
            ex, step, evaluate, trace, report,
        )  # fmt: skip
        self.produced: dict[Action, Any] = {}  # compute results waiting to be uploaded
        self.exchange: SyncExchange | None = None
        self.sync_from = 0.0

    def await_(self, fut: Future[Any], action: Action) -> Any:
        return self.ex._await(fut, action)

    def prepare(self, a: Action) -> Job:
        """Take what ``a`` moves now, on the walking thread; the job runs on its lane."""
        trace = self.trace
        if a.op in _SYNC_PIECES:
            job = self._exchange(a).prepare(a)

            def timed() -> Any:
                t0 = time.time()
                out = job()
                trace.record(a, t0, time.time())
                return out

            return timed
        if a.op is Op.REPORT:
            return self._report
        if a.op in GETS:
            return lambda: self._download(a)
        if a.op not in PUTS:
            raise ScheduleError(f"{self.ex.worker} cannot transfer {a}")
        value = self.produced.pop(a)
        # The flag is read here, not in the lane: step() resets it before uploads end.
        flagged = a.op is Op.SEND_GRAD and a.micro_batch in self.ex.runner.nonfinite
        meta = {NONFINITE: "1"} if flagged else None
        return lambda: self._upload(a, value, meta)

    def _exchange(self, a: Action) -> SyncExchange:
        if self.exchange is None:
            raise ScheduleError(f"{self.ex.worker}: {a} comes before its sync_begin")
        return self.exchange

    def _report(self) -> None:
        self.trace.end = time.time()
        if self.report is not None:
            self.report(self.trace)

    def _download(self, a: Action) -> Downloaded:
        ex, step, t0 = self.ex, self.step, time.time()
        if ex.loader is not None and not self.evaluate and a.op in (Op.LOAD_INPUT, Op.LOAD_TARGET):
            value, meta = ex.loader(step, a)
            self.trace.record(a, t0, time.time())
            return value, meta
        ch = channel(a)
        if self.evaluate:  # validation data stays for the next pass; activations are read once
            key, once = keys.eval_transfer(step, ch), ch.kind not in ("input", "target")
        else:
            key, once = keys.transfer(step, ch), a.op in _READ_ONCE
        store = ex.storage if once else ex.data_storage
        data = store.wait(key, ex.timeout_s)
        value, meta = codec.decode(data)
        self.trace.record(a, t0, time.time())
        if once:
            ex._delete_later(store, key)
        return value, meta

    def _upload(self, a: Action, value: Any, meta: dict[str, str] | None) -> None:
        t0 = time.time()
        key = (keys.eval_transfer if self.evaluate else keys.transfer)(self.step, channel(a))
        self.ex.storage.put(key, codec.encode(value, meta))
        self.trace.record(a, t0, time.time())

    def compute(self, a: Action, values: dict[Action, Any]) -> None:
        ex, step, trace = self.ex, self.step, self.trace
        s, b, runner = a.stage, cast(int, a.micro_batch), ex.runner  # int where it is used
        if a.op in _SYNC_PIECES:  # the all-reduce's arithmetic takes its pieces itself
            t0 = time.time()
            self._exchange(a).compute(a, values)
            trace.record(a, t0, time.time())
            return
        inputs = {d.op: values.pop(d) for d in ex.deps["eval" if self.evaluate else "train"][a]
                  if d.op in GETS and d in values}  # fmt: skip
        t0 = time.time()
        if a.op is Op.FORWARD:
            value, _ = inputs[Op.LOAD_INPUT if runner.is_first else Op.RECV_ACT]
            set_activity(f"forward mb {b}, step {step}")
            if ex.seed is not None:
                # The CPU generator only: torch.manual_seed also queues a seed for every
                # uninitialised accelerator backend, formatting a stack trace for each (~1 ms).
                torch.default_generator.manual_seed(forward_seed(ex.seed, step, s, b))
            t0 = time.time()
            self.produced[Action(Op.SEND_ACT, s, b)] = runner.forward(b, value)
        elif a.op is Op.BACKWARD:
            set_activity(f"backward mb {b}, step {step}")
            if runner.is_last:
                targets, meta = inputs[Op.LOAD_TARGET]
                t0 = time.time()
                grads = runner.backward(b, targets=targets, weight=float(meta["weight"]))
            else:
                g, meta = inputs[Op.RECV_GRAD]
                if meta.get(NONFINITE):
                    runner.nonfinite.add(b)
                t0 = time.time()
                grads = runner.backward(b, grads=g if isinstance(g, tuple) else (g,))
            if grads is not None:
                self.produced[Action(Op.SEND_GRAD, s, b)] = grads
        elif a.op is Op.SYNC_BEGIN:
            set_activity(f"gradient sync, step {step}")
            self.exchange = self._begin_sync(a, runner.flat_grads())
            self.sync_from = t0
        elif a.op is Op.SYNC_END:
            runner.set_flat_grads(self._exchange(a).result)
            self.exchange = None
            # one span for the whole all-reduce too, as the trace has always shown it
            trace.record(Action(Op.SYNC, s), self.sync_from, time.time())
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
                self.produced[Action(Op.SEND_ACT, s, b)] = out
        elif a.op is Op.STEP:
            set_activity(f"optimizer step, step {step}")
            t0 = time.time()
            trace.skipped = runner.skips_step
            trace.nonfinite = sorted(runner.nonfinite) if runner.is_last else []
            trace.loss = runner.step()
        else:
            raise ScheduleError(f"{ex.worker} cannot run {a}")
        trace.record(a, t0, time.time())

    def _begin_sync(self, a: Action, flat: torch.Tensor) -> SyncExchange:
        """The exchange of this step's all-reduce, laid out as the lowered list cuts it."""
        ex = self.ex
        pieces = 1 + max(int(x.piece or 0) for x in ex.actions if x.op is Op.SR_SEND)
        layout = sync_layout(flat.numel(), ex.replicas, flat.element_size(), pieces)
        if layout.pieces != pieces:
            raise ScheduleError(
                f"{ex.worker}: the schedule cuts stage {a.stage}'s gradients into {pieces} "
                f"pieces, but its {flat.numel()} values allow {layout.pieces}: the schedule was "
                "lowered for another model"
            )
        return SyncExchange(ex.storage, flat, ex.worker.replica, layout,
                            keys.sync_prefix(self.step, a.stage), "sum", ex.timeout_s)  # fmt: skip
