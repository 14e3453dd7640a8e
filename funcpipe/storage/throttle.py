"""Give a Storage the network link of one serverless function: bandwidth, latency, counters.

A Lambda reaches S3 at roughly 70 MB/s each way with ~10 ms per request; local runs should feel
the same so schedules, overlap and the cost report behave as they would in the cloud.
Each direction is a token bucket with a small burst; bytes move in slices so concurrent
requests in one direction share its rate, while uploads and downloads never slow each other.
Per-request latency is slept outside any lock, so concurrent requests overlap it like HTTP.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from funcpipe.errors import ConfigError
from funcpipe.storage.base import Storage

__all__ = ["LinkConfig", "LinkStats", "ThrottledStorage", "TokenBucket"]

MB = 1e6


@dataclass(frozen=True)
class LinkConfig:
    """One function's link to storage; MB = 1e6 bytes."""

    up_mb_s: float = 70.0
    down_mb_s: float = 70.0
    latency_s: float = 0.01
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("up_mb_s", "down_mb_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"LinkConfig.{name} must be > 0 MB/s, got {getattr(self, name)}")
        if not self.latency_s >= 0:
            raise ConfigError(f"LinkConfig.latency_s must be >= 0 s, got {self.latency_s}")


class TokenBucket:
    """Rate limiter in bytes/s; callers may overdraw, later callers wait off the debt.

    Overdrawing keeps the long-run rate exact whatever the slice sizes, and serves concurrent
    callers in arrival order, slice by slice, so they share the rate.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, amount: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            delay = -self._tokens / self.rate
        if delay > 0:
            time.sleep(delay)


@dataclass
class LinkStats:
    """Requests, bytes and seconds per direction; read a consistent copy with snapshot()."""

    puts: int = 0
    gets: int = 0
    deletes: int = 0
    lists: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    up_seconds: float = 0.0
    down_seconds: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, value in deltas.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> LinkStats:
        with self._lock:
            return LinkStats(**self.as_dict())

    def as_dict(self) -> dict[str, float]:
        return {
            name: getattr(self, name)
            for name in (
                "puts", "gets", "deletes", "lists",
                "bytes_up", "bytes_down", "up_seconds", "down_seconds",
            )
        }  # fmt: skip


class ThrottledStorage(Storage):
    """Wraps ``inner`` as seen through one function's link (uploads = put, downloads = get/wait).

    An upload becomes visible once its bytes have crossed the link and returns after the
    request latency; a download pays latency (overlapping the local read), then transfer time.
    Deletes and listings pay latency only. ``put`` accepts any bytes-like object.
    A ``wait`` counts as one GET however often the inner store polls. Does not own ``inner``.
    """

    def __init__(self, inner: Storage, link: LinkConfig | None = None) -> None:
        self.inner = inner
        self.link = link or LinkConfig()
        self.stats = LinkStats()
        # Burst of ~2 ms of traffic (at least 16 KiB) keeps the measured rate within ~1 %.
        self._up = TokenBucket(self.link.up_mb_s * MB, max(16384, self.link.up_mb_s * MB * 0.002))
        self._down = TokenBucket(
            self.link.down_mb_s * MB, max(16384, self.link.down_mb_s * MB * 0.002)
        )

    def __repr__(self) -> str:
        return f"ThrottledStorage({self.inner!r}, {self.link!r})"

    def _stream(self, bucket: TokenBucket, size: int) -> None:
        """Move ``size`` bytes through ``bucket`` in slices, so concurrent requests share it."""
        if not self.link.enabled:
            return
        piece = max(65536, int(bucket.rate * 0.004))
        remaining = size
        while remaining > 0:
            bucket.take(min(piece, remaining))
            remaining -= piece

    def _latency(self, since: float) -> None:
        """Sleep out one request's latency counted from ``since``; local I/O hides inside it."""
        if self.link.enabled and self.link.latency_s:
            left = since + self.link.latency_s - time.monotonic()
            if left > 0:
                time.sleep(left)

    def put(self, key: str, data: bytes) -> None:
        start = time.monotonic()
        size = memoryview(data).nbytes
        self._stream(self._up, size)
        written = time.monotonic()
        self.inner.put(key, data)  # visible once the bytes are across, acknowledged after latency
        self._latency(written)
        self.stats.add(puts=1, bytes_up=size, up_seconds=time.monotonic() - start)

    def _download(self, start: float, data: bytes) -> bytes:
        self._latency(start)
        self._stream(self._down, len(data))
        self.stats.add(gets=1, bytes_down=len(data), down_seconds=time.monotonic() - start)
        return data

    def get(self, key: str) -> bytes:
        start = time.monotonic()
        return self._download(start, self.inner.get(key))

    def wait(self, key: str, timeout: float, *, delete: bool = False) -> bytes:
        data = self.inner.wait(key, timeout, delete=delete)
        if delete:
            self.stats.add(deletes=1)
        return self._download(time.monotonic(), data)

    def exists(self, key: str) -> bool:
        start = time.monotonic()
        found = self.inner.exists(key)
        self._latency(start)
        self.stats.add(gets=1, down_seconds=time.monotonic() - start)
        return found

    def delete(self, key: str) -> None:
        start = time.monotonic()
        self.inner.delete(key)
        self._latency(start)
        self.stats.add(deletes=1)

    def list(self, prefix: str) -> list[str]:
        start = time.monotonic()
        keys = self.inner.list(prefix)
        self._latency(start)
        self.stats.add(lists=1)
        return keys

    def delete_prefix(self, prefix: str) -> int:
        start = time.monotonic()
        count = self.inner.delete_prefix(prefix)
        self._latency(start)
        self.stats.add(lists=1, deletes=count)
        return count
