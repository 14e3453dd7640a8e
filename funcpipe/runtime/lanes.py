"""The runtime's interpreter of the schedule walker: real threads for lanes, real storage.

:func:`drive` walks a lowered list (:func:`funcpipe.schedule.walk`) and hands each instruction to
a :class:`Handler`: a transfer is *prepared* on the walking thread (so what it sends is taken
when the walk reaches it) and then either queued on its lane's thread pool or run inline; a
compute action runs inline with the values of what it depends on. The function executor and the
stand-alone all-reduce both run through here, so they follow the walker's rules alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from funcpipe.schedule.actions import GETS, PUTS, Action, Lane
from funcpipe.schedule.walk import Do, walk

Job = Callable[[], Any]


class Handler(Protocol):
    def prepare(self, action: Action) -> Job:
        """Take what ``action`` transfers now; return the job that moves it."""

    def compute(self, action: Action, values: dict[Action, Any]) -> Any:
        """Run a compute action; ``values`` holds the finished transfers' results."""

    def await_(self, fut: Future[Any], action: Action) -> Any:
        """The result of a queued transfer (the handler's own timeout and errors)."""


class Lanes:
    """A FIFO thread pool per lane of width > 0; a failed upload surfaces at the next wait."""

    def __init__(self, widths: Mapping[Lane, int], name: str = "") -> None:
        self.widths = dict(widths)
        self.pools = {
            lane: ThreadPoolExecutor(n, thread_name_prefix=f"{name}{lane.value}")
            for lane, n in widths.items()
            if n > 0
        }
        self.uploads: list[Future[Any]] = []

    def submit(self, action: Action, job: Job) -> Future[Any]:
        fut = self.pools[action.lane].submit(job)
        if action.op in PUTS:
            self.uploads.append(fut)
        return fut

    def result(self, fut: Future[Any], timeout: float) -> Any:
        """``fut``'s result within ``timeout`` s; an upload that failed meanwhile raises first."""
        while True:
            done, _ = wait([fut, *self.uploads], timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                raise FutureTimeout()
            for f in done:
                exc = f.exception() if f is not fut else None
                if exc is not None:
                    raise exc
            if fut in done:
                return fut.result()
            # drop only what was checked above; anything that finished since is checked next
            self.uploads = [f for f in self.uploads if f not in done]

    def close(self, *, wait: bool = True) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=wait, cancel_futures=True)


def drive(
    actions: list[Action],
    lanes: Lanes,
    handler: Handler,
    *,
    overlap: bool = True,
    deps: Mapping[Action, list[Action]] | None = None,
) -> None:
    """Walk ``actions`` on ``lanes``, doing each instruction through ``handler``."""
    values: dict[Action, Any] = {}
    queued: dict[Action, Future[Any]] = {}
    for do, a in walk(actions, lanes.widths, overlap=overlap, deps=deps):
        if do is Do.SUBMIT:
            queued[a] = lanes.submit(a, handler.prepare(a))
        elif do is Do.AWAIT:
            values[a] = handler.await_(queued.pop(a), a)
        elif a.op in PUTS or a.op in GETS:  # a transfer the walking thread makes itself
            values[a] = handler.prepare(a)()
        else:
            values[a] = handler.compute(a, values)
