"""FuncPipe: pipelined, data-parallel training of PyTorch models on serverless functions.

Names are imported on first use, so a function's interpreter that needs only a small part of
FuncPipe (the platform's sandbox, the storage client) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "LinkConfig": "funcpipe.storage.throttle",
    "Prediction": "funcpipe.planning.simulate",
    "Profile": "funcpipe.planning.profile",
    "load_into": "funcpipe.client.save",
    "optimize": "funcpipe.planning.optimize",
    "predict": "funcpipe.planning.simulate",
    "profile": "funcpipe.planning.profiler",
    "Plan": "funcpipe.plan",
    "Stage": "funcpipe.plan",
    "StepStats": "funcpipe.client.train",
    "TrainResult": "funcpipe.client.train",
    "train": "funcpipe.client.train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'funcpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
