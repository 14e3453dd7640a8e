"""Bounded retries of storage requests: a flaky link costs a little time, a dead one fails fast.

Object stores fail transiently (S3 answers 500/503 SlowDown, connections reset, a request times
out); a retry of the same request almost always succeeds. Every backend request goes through
:func:`call_with_retries`, which retries only errors the backend marked :class:`Transient`,
with jittered exponential backoff, a bounded number of attempts and a deadline. Once the deadline
has passed, no new attempt starts, so an operation against a storage that stopped answering
fails within ``deadline_s`` plus one attempt's own timeout (see :meth:`RetryPolicy.bound_s`).

Every request FuncPipe sends is idempotent, so retrying is safe: a PUT replaces the whole object
(a retried PUT writes the same bytes again; no backend ever shows half an object), GET, HEAD and
LIST read, DELETE of a missing key is not an error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from funcpipe.errors import ConfigError, StorageUnavailable

__all__ = ["DEFAULT_DEADLINE_S", "RetryPolicy", "Transient", "call_with_retries"]

T = TypeVar("T")

#: Deadline of one request, retries included, when the caller gives none.
DEFAULT_DEADLINE_S = 60.0


class Transient(Exception):
    """A request failed in a way that another attempt may not: timeout, 5xx, reset, refused.

    Backends raise it from inside the function they pass to :func:`call_with_retries`; it never
    escapes that function (the last one becomes a StorageUnavailable).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """How long one storage request may take, retries included.

    ``attempt_timeout_s`` caps each attempt's socket timeouts (backends apply it to their
    clients); with it, a request never outlives :meth:`bound_s`.
    """

    deadline_s: float = DEFAULT_DEADLINE_S
    max_attempts: int = 8
    first_backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.deadline_s > 0:
            raise ConfigError(f"storage deadline_s must be > 0 seconds, got {self.deadline_s!r}")
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            raise ConfigError(f"storage max_attempts must be >= 1, got {self.max_attempts!r}")

    @property
    def attempt_timeout_s(self) -> float:
        """Longest silence one attempt waits for: a third of the deadline, 1 to 60 s."""
        return min(60.0, max(1.0, self.deadline_s / 3))

    def bound_s(self) -> float:
        """Upper bound on one request's duration against a storage that never answers."""
        return self.deadline_s + self.attempt_timeout_s

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Pause after failed attempt number ``attempt`` (1-based): exponential, half jittered."""
        ceiling = min(self.max_backoff_s, self.first_backoff_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * rng.random())


_RNG = random.Random()


def call_with_retries(policy: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried on :class:`Transient` within ``policy``; else StorageUnavailable.

    ``what`` names the request and the store for the final error, e.g. "S3 GET of 'a/b' on ...".
    """
    start = time.monotonic()
    deadline = start + policy.deadline_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Transient as exc:
            last = exc
        pause = policy.backoff_s(attempt, _RNG)
        now = time.monotonic()
        if attempt >= policy.max_attempts or now + pause >= deadline:
            raise StorageUnavailable(
                f"{what} failed {attempt} time(s) over {now - start:.1f} s (deadline "
                f"{policy.deadline_s:g} s); last error: {last.reason}. Is the storage server up "
                "and reachable? Raise the job's timeout_s to ride out longer outages"
            ) from last
        time.sleep(pause)
