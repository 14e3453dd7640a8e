"""Serverless platforms: where a job's functions run (an interface and a local implementation)."""

from funcpipe.platforms.base import (
    FunctionSpec,
    Invocation,
    InvocationState,
    Platform,
    PlatformLimits,
    Status,
    set_activity,
)
from funcpipe.platforms.local import LAMBDA_CPU_PER_GB, LocalPlatform

__all__ = [
    "LAMBDA_CPU_PER_GB",
    "FunctionSpec",
    "Invocation",
    "InvocationState",
    "LocalPlatform",
    "Platform",
    "PlatformLimits",
    "Status",
    "set_activity",
]
