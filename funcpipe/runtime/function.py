"""The one entry point every platform starts: run a function from its payload.

``run(payload)`` takes the JSON of a :class:`~funcpipe.runtime.package.FunctionPackage` and trains
that function's stage to the end of its steps. Local processes, Lithops and the AWS Lambda handler
all call it; none of them knows what a stage is.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import cloudpickle

from funcpipe.errors import ConfigError

__all__ = ["call_payload", "run"]


def call_payload(fn: Any) -> bytes:
    """A payload that calls ``fn()`` (a test or tool running arbitrary code on a local platform).

    Only platforms that run the client's own processes accept it; a package is what jobs send.
    """
    if not callable(fn):
        raise ConfigError(f"call_payload needs a callable, got {fn!r}")
    return json.dumps({"call": base64.b64encode(cloudpickle.dumps(fn)).decode("ascii")}).encode()


def run(
    payload: bytes | str | dict[str, Any],
    *,
    allow_call: bool = False,
    invoked_at: float | None = None,
) -> dict[str, Any] | None:
    """Run the function described by ``payload``; raise on failure.

    ``invoked_at`` is the wall-clock time the platform started this function (its cold start
    begins there); without it, now.
    """
    invoked_at = time.time() if invoked_at is None else invoked_at
    raw = payload if isinstance(payload, dict) else json.loads(payload)
    if isinstance(raw, dict) and "call" in raw:
        if not allow_call:
            raise ConfigError("this platform runs function packages only, not arbitrary calls")
        cloudpickle.loads(base64.b64decode(raw["call"]))()
        return None
    from funcpipe.runtime.package import FunctionPackage
    from funcpipe.runtime.worker import run_package

    return run_package(FunctionPackage.from_json(raw), invoked_at=invoked_at)
