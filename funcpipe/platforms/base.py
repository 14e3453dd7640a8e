"""What the runtime needs from a serverless platform: start a function, watch it, stop it.

A platform runs each function of a job in isolation with a memory cap and a wall-clock limit, the
way AWS Lambda does, and reports how it ended in one small record (`InvocationState`), so the
runtime can tell "the code raised" from "it ran out of memory" from "it ran too long".
"""

from __future__ import annotations

import abc
import enum
import itertools
from dataclasses import dataclass

from funcpipe.platform_profiles import PlatformLimits
from funcpipe.runtime.activity import _install_activity_sink, set_activity  # noqa: F401

__all__ = [
    "FunctionSpec",
    "Invocation",
    "InvocationState",
    "Platform",
    "PlatformLimits",
    "Reason",
    "Status",
    "set_activity",
]


@dataclass(frozen=True)
class FunctionSpec:
    """One function to run: its name (used in every message about it) and its resources."""

    name: str
    memory_mb: int
    timeout_s: float = 900.0


class Status(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Reason(str, enum.Enum):
    """Why a function failed or was cancelled; equal to, and printed as, its plain string."""

    ERROR = "error"  # its own code raised
    MEMORY = "memory"  # it went over its memory cap
    TIMEOUT = "timeout"  # it ran past its time limit
    CRASH = "crash"  # it was killed or vanished without a report
    CANCELLED = "cancelled"  # its client stopped it

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class InvocationState:
    """How a function is doing or how it ended.

    `reason` is set when the function failed or was cancelled. `transient` (with reason ERROR)
    says the error is one a relaunch may cure, storage or network trouble
    (:func:`funcpipe.platforms.failures.is_transient`), decided where the function saw it, from
    the exception itself. `message` is for humans and, for ERROR, holds the full traceback.
    """

    status: Status
    reason: Reason | None = None
    message: str | None = None
    peak_memory_mb: float | None = None
    activity: str | None = None
    transient: bool = False

    @property
    def done(self) -> bool:
        return self.status is not Status.RUNNING


_ids = itertools.count(1)


@dataclass(frozen=True)
class Invocation:
    """Handle of one started function; pass it back to the platform that started it."""

    spec: FunctionSpec
    id: int

    @property
    def name(self) -> str:
        return self.spec.name

    @staticmethod
    def new(spec: FunctionSpec) -> Invocation:
        return Invocation(spec=spec, id=next(_ids))


class Platform(abc.ABC):
    """Runs functions in isolation; every method returns promptly or within its timeout."""

    limits: PlatformLimits = PlatformLimits()

    @abc.abstractmethod
    def start(self, spec: FunctionSpec, payload: bytes) -> Invocation:
        """Start the function `spec` on `payload`; returns at once.

        `payload` is what :func:`funcpipe.runtime.function.run` takes: a function package's
        JSON (:mod:`funcpipe.runtime.package`), or, where the platform runs code of this
        process, :func:`funcpipe.runtime.function.call_payload` bytes.
        """

    @abc.abstractmethod
    def state(self, inv: Invocation) -> InvocationState:
        """Current state, without waiting."""

    @abc.abstractmethod
    def join(self, inv: Invocation, timeout: float) -> InvocationState:
        """Wait at most `timeout` seconds for the function to end; returns its state either way."""

    @abc.abstractmethod
    def cancel(self, inv: Invocation) -> None:
        """Kill the function if it still runs; calling it again does nothing."""

    @abc.abstractmethod
    def close(self) -> None:
        """Cancel everything still running and free the platform's resources."""

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
