"""Fault injection for the reliability tests: kill or freeze a function at a named point.

Armed only through the ``FUNCPIPE_FAILPOINTS`` environment variable, a JSON list such as
``[{"function": "stage1-replica0", "at": "gradient sync, step 3", "signal": "KILL",
"once": "/tmp/x/f1"}]``. When the function's activity label (what it reports it is doing, e.g.
"forward mb 2, step 3", "checkpoint manifest, step 4") equals ``at``, it sends itself
``signal`` - but only if it can create the ``once`` file first, so a relaunched function does
not fail again at the same point. The file holds the wall-clock time of the fault, so a benchmark
can time its detection. Without the variable nothing is installed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from funcpipe.runtime import activity as platform_base

ENV = "FUNCPIPE_FAILPOINTS"


def arm(function: str) -> None:
    """Install the failpoints of ``function`` (e.g. "stage0-replica1") from the environment."""
    raw = os.environ.get(ENV)
    if not raw:
        return
    points = [p for p in json.loads(raw) if p.get("function") == function]
    if not points:
        return
    previous = platform_base._activity_sink

    def sink(label: str) -> None:
        for point in points:
            if label == point["at"] and _first_time(point):
                os.kill(os.getpid(), getattr(signal, f"SIG{point.get('signal', 'KILL')}"))
        if previous is not None:
            previous(label)

    platform_base._install_activity_sink(sink)


def _first_time(point: dict[str, Any]) -> bool:
    try:
        fd = os.open(point["once"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        os.write(fd, repr(time.time()).encode())
    finally:
        os.close(fd)
    return True
