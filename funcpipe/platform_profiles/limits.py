"""What one function of a platform may be: its memory range and step, and its time limit.

The defaults are AWS Lambda's, the platform every other default in FuncPipe assumes. Source:
https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html (128..10,240 MB in 1 MB
steps) and gettingstarted-limits.html (900 s). Read 2022; checked 2026-11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from funcpipe.errors import ConfigError

if TYPE_CHECKING:  # a plan is only read here; importing it would load pydantic
    from funcpipe.plan import Plan

__all__ = ["PlatformLimits"]


class _Function(Protocol):
    """What a limit is checked against (a platform's FunctionSpec)."""

    @property
    def name(self) -> str: ...
    @property
    def memory_mb(self) -> int: ...
    @property
    def timeout_s(self) -> float: ...


@dataclass(frozen=True)
class PlatformLimits:
    """Bounds a platform puts on one function; the defaults are AWS Lambda's.

    A platform profile builds its own (``profile.limits``); a running platform carries one
    (``Platform.limits``) and checks every function it starts against it.
    """

    min_memory_mb: int = 128
    max_memory_mb: int = 10_240
    max_timeout_s: float = 900.0
    memory_step_mb: int = 1

    def memory_problem(self, memory_mb: int, whose: str = "this platform's") -> str | None:
        """Why a function of ``memory_mb`` cannot run here (with the fix), or None if it can."""
        if not self.min_memory_mb <= memory_mb <= self.max_memory_mb:
            return (
                f"memory_mb={memory_mb} is outside {whose} range "
                f"{self.min_memory_mb}..{self.max_memory_mb} MB; pick a size inside it"
            )
        if (memory_mb - self.min_memory_mb) % self.memory_step_mb:
            return (
                f"memory_mb={memory_mb} is not a multiple of {whose} "
                f"{self.memory_step_mb} MB step above {self.min_memory_mb} MB"
            )
        return None

    def check(self, spec: _Function) -> None:
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
        problem = self.memory_problem(mem)
        if problem:
            raise ConfigError(f"function {spec.name!r}: {problem}")
        if not spec.timeout_s > 0 or spec.timeout_s > self.max_timeout_s:
            raise ConfigError(
                f"function {spec.name!r}: timeout_s={spec.timeout_s} must be in "
                f"(0, {self.max_timeout_s}] seconds; split the work into shorter functions"
            )

    def check_plan(self, plan: Plan, platform: str = "this platform") -> None:
        """Raise ConfigError naming the first stage whose functions ``platform`` cannot run.

        A plan accepts any positive memory size; this is where it meets a platform's range, so a
        plan made for a platform with larger functions fails here, before anything starts.
        """
        for i, stage in enumerate(plan.stages):
            problem = self.memory_problem(stage.memory_mb, f"{platform}'s")
            if problem:
                raise ConfigError(
                    f"plan stages[{i}].{problem}, or plan for a platform whose functions "
                    "are that large"
                )
