"""Injected storage faults: prove that training survives a flaky store, on every backend.

A :class:`FaultInjector` sits inside a backend's request path, under its retries, so an injected
fault is handled exactly like a real one. On a fraction ``rate`` of requests it raises one of
three faults, as a real link would:

- ``timeout``: the request hangs a little, then times out;
- ``error``: the server answers 503 (S3's SlowDown, a Redis LOADING);
- ``reset``: the connection is reset.

Half of the faults strike *before* the request reaches the store, half *after* the store acted
but before the answer arrived (a PUT that landed, a DELETE that deleted), which is what makes
retries need idempotent requests.

Turn it on for every process of a job with the storage URL option ``faults=0.05`` (e.g.
``redis://127.0.0.1:6379/0?faults=0.05``) or the environment variable ``FUNCPIPE_FAULTS=0.05``;
``faults_seed`` / ``FUNCPIPE_FAULTS_SEED`` make the sequence of faults repeatable.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from funcpipe.errors import ConfigError
from funcpipe.storage.retry import Transient

__all__ = ["FAULT_KINDS", "FaultInjector", "faults_from_env"]

T = TypeVar("T")

FAULT_KINDS = ("timeout", "error", "reset")
_REASONS = {
    "timeout": "read timed out (injected fault)",
    "error": "503 Service Unavailable: SlowDown (injected fault)",
    "reset": "[Errno 104] Connection reset by peer (injected fault)",
}


class FaultInjector:
    """Fails a fraction ``rate`` of requests with a timeout, a 503 or a connection reset."""

    def __init__(self, rate: float, *, seed: int | None = None, hang_s: float = 0.02) -> None:
        if not (isinstance(rate, int | float) and 0 <= rate <= 1):
            raise ConfigError(f"storage faults must be a fraction in [0, 1], got {rate!r}")
        self.rate = float(rate)
        self.hang_s = hang_s
        # Seeded per process too, so functions sharing a seed do not fail in lockstep.
        self._rng = random.Random(None if seed is None else (seed, os.getpid()).__hash__())
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {kind: 0 for kind in FAULT_KINDS}

    def __repr__(self) -> str:
        return f"FaultInjector(rate={self.rate:g})"

    def _draw(self) -> tuple[float, str]:
        with self._lock:
            return self._rng.random(), self._rng.choice(FAULT_KINDS)

    def _fail(self, kind: str) -> Transient:
        with self._lock:
            self.injected[kind] += 1
        if kind == "timeout":
            time.sleep(self.hang_s)
        return Transient(_REASONS[kind])

    def around(self, fn: Callable[[], T]) -> T:
        """Run one attempt of a request, maybe failing it before or after it reaches the store."""
        draw, kind = self._draw()
        if draw < self.rate / 2:
            raise self._fail(kind)
        result = fn()
        if draw < self.rate:
            raise self._fail(kind)
        return result


def parse_rate(value: object, where: str) -> float:
    try:
        rate = float(str(value))
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1:
        raise ConfigError(
            f"{where}={value!r} must be the fraction of storage requests to fail, e.g. 0.05"
        )
    return rate


def faults_from_env() -> FaultInjector | None:
    """The injector FUNCPIPE_FAULTS (and FUNCPIPE_FAULTS_SEED) ask for, or None."""
    value = os.environ.get("FUNCPIPE_FAULTS")
    if not value:
        return None
    rate = parse_rate(value, "FUNCPIPE_FAULTS")
    seed = os.environ.get("FUNCPIPE_FAULTS_SEED")
    return FaultInjector(rate, seed=int(seed) if seed else None) if rate > 0 else None
