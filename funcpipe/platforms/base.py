"""What the runtime needs from a serverless platform: start a function, watch it, stop it.

A platform runs each function of a job in isolation with a memory cap and a wall-clock limit, the
way AWS Lambda does, and reports how it ended in one small record (`InvocationState`), so the
runtime can tell "the code raised" from "it ran out of memory" from "it ran too long".
"""

from __future__ import annotations

import abc
import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from funcpipe.errors import ConfigError
from funcpipe.planning.platforms import AWS_LAMBDA as _AWS

__all__ = [
    "FunctionSpec",
    "Invocation",
    "InvocationState",
    "Platform",
    "PlatformLimits",
    "Status",
    "set_activity",
]


@dataclass(frozen=True)
class PlatformLimits:
    """Bounds a platform puts on one function; the defaults are AWS Lambda's.

    The figures live in :mod:`funcpipe.planning.platforms` (``profile.limits`` builds one).
    """

    min_memory_mb: int = _AWS.min_memory_mb
    max_memory_mb: int = _AWS.max_memory_mb
    max_timeout_s: float = _AWS.max_timeout_s
    memory_step_mb: int = _AWS.memory_step_mb

    def check(self, spec: FunctionSpec) -> None:
        """Raise ConfigError naming the field of `spec` that this platform cannot run."""
        if not spec.name or not isinstance(spec.name, str):
            raise ConfigError(
                "FunctionSpec.name must be a non-empty string, e.g. 'stage0-replica0'"
            )
        mem = spec.memory_mb
        if not isinstance(mem, int) or isinstance(mem, bool):
            raise ConfigError(
                f"function {spec.name!r}: memory_mb must be an integer number of MB, got {mem!r}"
            )
        if not self.min_memory_mb <= mem <= self.max_memory_mb:
            raise ConfigError(
                f"function {spec.name!r}: memory_mb={mem} is outside this platform's range "
                f"{self.min_memory_mb}..{self.max_memory_mb} MB; pick a size inside it"
            )
        if (mem - self.min_memory_mb) % self.memory_step_mb:
            raise ConfigError(
                f"function {spec.name!r}: memory_mb={mem} is not a multiple of the platform's "
                f"{self.memory_step_mb} MB step above {self.min_memory_mb} MB"
            )
        if not spec.timeout_s > 0 or spec.timeout_s > self.max_timeout_s:
            raise ConfigError(
                f"function {spec.name!r}: timeout_s={spec.timeout_s} must be in "
                f"(0, {self.max_timeout_s}] seconds; split the work into shorter functions"
            )


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


@dataclass(frozen=True)
class InvocationState:
    """How a function is doing or how it ended.

    `reason` (only when not RUNNING/SUCCEEDED) is one of "error", "memory", "timeout", "crash",
    "cancelled"; `message` is for humans and, for "error", holds the function's full traceback.
    """

    status: Status
    reason: str | None = None
    message: str | None = None
    peak_memory_mb: float | None = None
    activity: str | None = None

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
    def start(self, spec: FunctionSpec, target: Callable[[], None]) -> Invocation:
        """Start `target()` as the function `spec`; returns at once."""

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


# --- activity labels -------------------------------------------------------------------------
# A platform installs a sink inside each function before running it; outside a function the sink
# is None and set_activity costs one global lookup.
_activity_sink: Callable[[str], None] | None = None


def set_activity(label: str) -> None:
    """Record what the running function is doing now (e.g. "forward mb 2").

    The platform reports the last label when the function fails, so a memory or timeout error says
    where it happened. Cheap enough to call per action; does nothing outside a function.
    """
    sink = _activity_sink
    if sink is not None:
        sink(label)


def _install_activity_sink(sink: Callable[[str], None] | None) -> None:
    """Used by platforms inside a freshly started function."""
    global _activity_sink
    _activity_sink = sink
