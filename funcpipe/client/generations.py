"""Generations of a job's functions: launch one, cancel it, read what it left.

A **generation** is one set of functions (one per stage and replica) training a run of steps. Its
keys live under ``g<generation>/`` inside the job's namespace, so nothing a function of an older
generation writes late (a zombie on a platform that cannot be cancelled) is ever read as live.
The client tells a generation where to stop through its ``control`` key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from funcpipe.errors import KeyNotFound
from funcpipe.planning.plan import Plan
from funcpipe.platforms.base import FunctionSpec, Invocation, Platform
from funcpipe.runtime import checkpoint as ckpt
from funcpipe.runtime import keys
from funcpipe.runtime.schedule import WorkerId
from funcpipe.storage.base import Storage
from funcpipe.storage.prefixed import PrefixedStorage

__all__ = ["Generation", "Generations", "PackageMaker", "Watch", "control_key"]

# make_payload(stage, replica, generation, first_step, settings) -> one function's package JSON
PackageMaker = Callable[[int, int, int, int, dict[str, Any]], bytes]


def control_key() -> str:
    """The client's instructions to one generation (inside its namespace): ``{"stop_at": T}``."""
    return "control"


@dataclass
class Watch:
    """What the client knows of one function's heartbeat."""

    seen: bytes | None = None
    changed: float = 0.0  # client monotonic time of the last change
    activity: str | None = None
    started: bool = False  # it has begun its first step


@dataclass
class Generation:
    number: int
    first_step: int
    launched: float  # client wall clock before the first start call
    launched_mono: float
    invocations: dict[WorkerId, Invocation] = field(default_factory=dict)
    watch: dict[WorkerId, Watch] = field(default_factory=dict)
    stop_at: int | None = None
    lifetimes: list[dict[str, Any]] = field(default_factory=list)


class Generations:
    """Starts, stops and clears the generations of one job, in order.

    ``settings`` go to every function of every generation, with the checkpoint each one resumes
    from added; ``feed(storage, step)`` puts one step's data into a generation's storage, and a
    new generation is fed its first two steps before any of its functions starts.
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
        function_timeout_s: float,
        settings: dict[str, Any],
        first_generation: int = 0,
    ) -> None:
        self.platform, self.plan, self.shared = platform, plan, shared
        self.make_payload, self.feed = make_payload, feed
        self.total_steps, self.function_timeout_s = total_steps, function_timeout_s
        self.settings, self.first_generation = settings, first_generation
        self.functions = [(s, r) for s, st in enumerate(plan.stages) for r in range(st.replicas)]
        self.current: Generation | None = None
        self.all: list[Generation] = []

    def storage(self, gen: Generation | None = None) -> Storage:
        """The namespace of ``gen`` (default: the current generation)."""
        g = gen or self.current
        assert g is not None
        return PrefixedStorage(self.shared, keys.generation_prefix(g.number).rstrip("/"))

    def launch(self, first_step: int, resume: ckpt.Checkpoint | None) -> Generation:
        """Start a new generation at ``first_step`` (from ``resume``, or the initial weights)."""
        number = self.first_generation if self.current is None else self.current.number + 1
        gen = Generation(number, first_step, time.time(), time.monotonic())
        self.current = gen
        self.all.append(gen)
        store = self.storage(gen)
        for step in (first_step, first_step + 1):
            if step < self.total_steps:
                self.feed(store, step)
        settings = {
            **self.settings,
            "resume": None if resume is None else [resume.step, resume.generation],
        }
        now = time.monotonic()
        for s, r in self.functions:
            stage = self.plan.stages[s]
            payload = self.make_payload(s, r, number, first_step, settings)
            spec = FunctionSpec(str(WorkerId(s, r)), stage.memory_mb, self.function_timeout_s)
            gen.invocations[WorkerId(s, r)] = self.platform.start(spec, payload)
            gen.watch[WorkerId(s, r)] = Watch(changed=now)
        return gen

    def stop_at(self, gen: Generation, step: int) -> None:
        """Tell every function of ``gen`` to checkpoint and end before ``step``."""
        gen.stop_at = step
        self.storage(gen).put(control_key(), json.dumps({"stop_at": step}).encode())

    def cancel(self, gen: Generation) -> None:
        for inv in gen.invocations.values():
            self.platform.cancel(inv)

    def cancel_all(self) -> None:
        for gen in self.all:
            self.cancel(gen)

    def join(self, gen: Generation, timeout_s: float) -> None:
        """Wait for each function of ``gen`` to end (each for at most ``timeout_s``)."""
        for inv in gen.invocations.values():
            self.platform.join(inv, timeout=timeout_s)

    def collect_lifetimes(self, gen: Generation) -> None:
        """Each function's last record (for its bill), where it wrote one."""
        store = self.storage(gen)
        for s, r in self.functions:
            try:
                gen.lifetimes.append(json.loads(store.get(keys.lifetime(s, r))))
            except (KeyNotFound, ValueError):
                continue

    def clear(self, gen: Generation) -> None:
        """Delete everything under ``gen``'s namespace (it has ended or been cancelled)."""
        self.shared.delete_prefix(keys.generation_prefix(gen.number))
