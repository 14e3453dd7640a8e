"""What the running function is doing now, for the platform to report when it fails.

The runtime labels each action it starts (``set_activity("forward mb 2")``); a platform installs a
sink inside each function before running it (the local emulator writes the label to shared memory
its parent reads, the heartbeat forwards it to the client), so a memory or timeout error says
where it happened. The sink lives here, in the runtime that writes the labels, so the runtime
needs nothing from the platforms above it. Outside a function the sink is None and
``set_activity`` costs one global lookup.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["set_activity"]

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
    """Used by platforms inside a freshly started function (and by wrappers of the sink)."""
    global _activity_sink
    _activity_sink = sink
