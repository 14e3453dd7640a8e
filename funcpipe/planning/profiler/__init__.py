"""The measuring harness: :func:`profile` times and sizes a model on this machine.

For every top-level layer of an ``nn.Sequential`` and every micro-batch size a plan may use,
it measures forward and backward time at one or more thread counts (inside whole training
passes, in rounds: :mod:`.timing`), the bytes of the layer's output, what it saves for
backward and its temporaries (:mod:`.memory`), its parameter, gradient and optimizer-state
bytes and optimizer step (:mod:`.measure`), then what a transfer costs a function's CPU
(:mod:`.transfer`) and what its lanes add to the compute they overlap (:mod:`.lanes`). The
result is a plain :class:`~funcpipe.planning.profile.Profile`.
"""

from __future__ import annotations

from funcpipe.planning.profiler.measure import IN_FLIGHT, IN_FLIGHT_BYTES, profile

__all__ = ["IN_FLIGHT", "IN_FLIGHT_BYTES", "profile"]
