"""A tiny discrete-event kernel: timed callbacks, one-shot events, and generator processes.

Every event costs one heap push and pop, whatever else is pending. A simulation started inside
:func:`deadline` stops with :class:`OutOfTime` once the wall clock passes it, so a caller that
bounds its own running time (the optimiser's ``time_limit_s``) is not held up by one long
simulation.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

__all__ = ["OutOfTime", "deadline"]

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "funcpipe_simulation_deadline", default=None
)


class OutOfTime(Exception):
    """A simulation passed the wall-clock deadline it was started under."""


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Simulations run inside stop with :class:`OutOfTime` once ``time.perf_counter()`` passes
    ``at`` (None: no deadline)."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _Event:
    __slots__ = ("callbacks", "time")

    def __init__(self) -> None:
        self.time: float | None = None
        self.callbacks: list[Callable[[float], None]] = []

    @property
    def done(self) -> bool:
        return self.time is not None


class _Kernel:
    """Timed callbacks plus generator processes that ``yield`` events or delays."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.deadline = _DEADLINE.get()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), fn))

    def trigger(self, ev: _Event, t: float) -> None:
        def fire() -> None:
            ev.time = self.now
            for cb in ev.callbacks:
                cb(self.now)
            ev.callbacks.clear()

        self.at(t, fire)

    def event_at(self, t: float) -> _Event:
        ev = _Event()
        self.trigger(ev, t)
        return ev

    def process(self, gen: Generator[Any, None, None]) -> _Event:
        finished = _Event()

        def step(_: float = 0.0) -> None:
            try:
                item = next(gen)
            except StopIteration:
                finished.time = self.now
                for cb in finished.callbacks:
                    cb(self.now)
                finished.callbacks.clear()
                return
            ev = item if isinstance(item, _Event) else self.event_at(self.now + float(item))
            if ev.done:
                self.at(self.now, step)
            else:
                ev.callbacks.append(lambda _t: step())

        self.at(self.now, step)
        return finished

    def run(self) -> None:
        heap, until = self._heap, self.deadline
        if until is None:
            while heap:
                t, _, fn = heapq.heappop(heap)
                self.now = t
                fn()
            return
        clock = time.perf_counter
        while heap:
            if clock() > until:  # one look per event: some events submit thousands of requests
                raise OutOfTime(f"simulation stopped at its deadline ({self.now:.3f} s in)")
            t, _, fn = heapq.heappop(heap)
            self.now = t
            fn()


def _all(kernel: _Kernel, events: list[_Event]) -> _Event:
    """An event that fires when every one of ``events`` has."""
    out = _Event()
    pending = [e for e in events if not e.done]
    if not pending:
        kernel.trigger(out, kernel.now)
        return out
    count = [len(pending)]

    def one(_t: float) -> None:
        count[0] -= 1
        if count[0] == 0:
            kernel.trigger(out, kernel.now)

    for e in pending:
        e.callbacks.append(one)
    return out
