"""Serverless platforms: where a job's functions run (an interface and one file per platform)."""

from __future__ import annotations

import importlib
from typing import Any

from funcpipe.platforms.base import (
    FunctionSpec,
    Invocation,
    InvocationState,
    Platform,
    PlatformLimits,
    Status,
    set_activity,
)

_LAZY = {
    "LAMBDA_CPU_PER_GB": "funcpipe.platforms.local",
    "LocalPlatform": "funcpipe.platforms.local",
}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "local":
        return importlib.import_module("funcpipe.platforms.local")
    raise AttributeError(f"module 'funcpipe.platforms' has no attribute {name!r}")
