"""Every error FuncPipe raises on purpose derives from FuncPipeError, so callers can catch one type.

Messages name the offending field or function and say how to fix it.
"""

from __future__ import annotations


class FuncPipeError(Exception):
    """Base class of all FuncPipe errors."""


class ConfigError(FuncPipeError, ValueError):
    """A plan, option or input is invalid; the message names the field and the fix."""


class PlanInfeasible(ConfigError):
    """No plan satisfies the constraints (memory, limits)."""


class StorageError(FuncPipeError):
    """A storage backend failed or was misused."""


class KeyNotFound(StorageError, KeyError):
    """The key does not exist in storage."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "key not found"


class KeyExists(StorageError):
    """A create-only write (``put(..., overwrite=False)``) found its key holding an object."""


class StorageTimeout(StorageError, TimeoutError):
    """A blocking wait for a key ran past its deadline."""


class StorageUnavailable(StorageError):
    """Storage kept failing (timeouts, 5xx, connection resets) for a request's whole deadline."""


class ScheduleError(FuncPipeError):
    """A schedule is malformed or can deadlock."""


class FunctionFailed(FuncPipeError):
    """A function of the job raised, crashed or was killed; the message names the function."""

    def __init__(self, message: str, *, function: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.function = function
        self.reason = reason


class MemoryExceeded(FunctionFailed):
    """A function went over its memory cap, as a Lambda would."""


class NonFiniteLoss(FuncPipeError, ArithmeticError):
    """A step's loss was NaN or infinite; its update was not applied anywhere."""

    def __init__(self, message: str, *, step: int, micro_batches: tuple[int, ...] = ()):
        super().__init__(message)
        self.step = step
        self.micro_batches = micro_batches
