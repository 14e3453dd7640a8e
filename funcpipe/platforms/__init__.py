"""Serverless platforms: where a job's functions run (an interface and a module or folder each).

``base`` is the interface; ``local/`` emulates Lambda on this machine; ``aws_lambda`` and
``lithops`` share ``polled`` (functions that report through the job's storage or a future);
``failures`` words every failed state once; ``control`` and ``offload`` are the records and
payload parts a cloud function and its client exchange through storage.
"""

from __future__ import annotations

import importlib
from typing import Any

from funcpipe.platforms.base import (
    FunctionSpec,
    Invocation,
    InvocationState,
    Platform,
    PlatformLimits,
    Reason,
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
    "Reason",
    "Status",
    "set_activity",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "local":
        return importlib.import_module("funcpipe.platforms.local")
    raise AttributeError(f"module 'funcpipe.platforms' has no attribute {name!r}")
