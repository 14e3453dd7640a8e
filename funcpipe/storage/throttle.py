"""Give a Storage the network link of one serverless function: bandwidth, latency, counters.

A Lambda reaches S3 at roughly 70 MB/s each way with ~10 ms per request; local runs should feel
the same so schedules, overlap and the cost report behave as they would in the cloud. The
emulation belongs only where it emulates something: :func:`default_link` is the one rule
(the local platform on a local store gets a Lambda-like link; a real cloud link never gets a
second, emulated one on top). Counting is always on: every request, each poll of a wait
included, is counted in its billed class (:class:`LinkStats`).
Each direction is a token bucket with a small burst; bytes move in slices so concurrent
requests in one direction share its rate, while uploads and downloads never slow each other.
Per-request latency is slept outside any lock, so concurrent requests overlap it like HTTP.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

from funcpipe.errors import ConfigError
from funcpipe.storage.base import BytesLike, Storage

__all__ = ["LinkConfig", "LinkStats", "ThrottledStorage", "TokenBucket", "default_link"]

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


def emulates_a_link(platform: str, storage_url: str) -> bool:
    """Whether functions of ``platform`` reach ``storage_url`` over a link worth emulating.

    Only the local platform runs functions on this machine, where storage is as fast as memory;
    on a cloud platform, or towards AWS S3 itself (an s3:// URL without endpoint_url), the link
    is real and already has its own bandwidth and latency.
    """
    if platform != "local":
        return False
    return not (storage_url.startswith("s3://") and "endpoint_url=" not in storage_url)


def default_link(
    platform: str, storage_url: str, link: LinkConfig | None = None
) -> LinkConfig | None:
    """The emulated link each function of a job gets; None means none (count requests only).

    ``link`` (the user's) wins where a link is emulated; on a real link it is refused, since
    throttling a real network on top of its own limits measures nothing.
    """
    if emulates_a_link(platform, storage_url):
        return link or LinkConfig()
    if link is not None and link.enabled:
        raise ConfigError(
            f"an emulated storage link (bandwidth/latency) only applies to the local platform "
            f"on a local store; platform {platform!r} with this storage has a real link. "
            "Drop link= (CLI: --bandwidth/--latency-ms) or use LinkConfig(enabled=False)"
        )
    return None


def burst_bytes(rate_bytes_s: float) -> float:
    """Bytes an idle emulated link lets through at once: ~2 ms of traffic, at least 16 KiB.

    A burst this small keeps the measured rate within ~1 % while slices of concurrent requests
    interleave; the planner's simulator models the same bucket (a request that finds the link
    idle gets this many bytes across without waiting).
    """
    return max(16384.0, rate_bytes_s * 0.002)


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


_FIELDS = (
    "puts", "gets", "heads", "deletes", "lists", "bulk_deletes",
    "bytes_up", "bytes_down", "up_seconds", "down_seconds",
)  # fmt: skip


@dataclass
class LinkStats:
    """Requests by billed class, bytes and seconds per direction; snapshot() reads a copy.

    Request classes as S3 bills them: ``puts`` (PutObject; PUT class), ``gets`` (GetObject,
    also every poll of a wait that found nothing yet; GET class), ``heads`` (HeadObject: GET
    class), ``lists`` (ListObjectsV2 pages: PUT class), ``bulk_deletes`` (DeleteObjects, up to
    1000 keys each: PUT class) and ``deletes`` (DeleteObject, or keys removed by a bulk delete:
    free). :meth:`put_class` and :meth:`get_class` sum them for a price list.
    """

    puts: int = 0
    gets: int = 0
    heads: int = 0
    deletes: int = 0
    lists: int = 0
    bulk_deletes: int = 0
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
            return dataclasses.replace(self)  # a fresh lock of its own (__post_init__)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _FIELDS}

    def put_class(self) -> int:
        """Requests billed at the PUT rate: PUT, LIST, DeleteObjects."""
        return self.puts + self.lists + self.bulk_deletes

    def get_class(self) -> int:
        """Requests billed at the GET rate: GET (hits and misses) and HEAD."""
        return self.gets + self.heads


class ThrottledStorage(Storage):
    """Wraps ``inner`` as seen through one function's link (uploads = put, downloads = get/wait).

    An upload becomes visible once its bytes have crossed the link and returns after the
    request latency; a download pays latency (overlapping the local read), then transfer time.
    Deletes and listings pay latency only. ``put`` accepts any bytes-like object.
    A ``wait`` is the base class's polling loop over this object's ``get``, so every poll pays
    the link's latency and is counted, as it would be on S3. ``link=None`` counts without
    emulating anything. Does not own ``inner``.
    """

    def __init__(self, inner: Storage, link: LinkConfig | None = None) -> None:
        self.inner = inner
        self.link = link or LinkConfig(enabled=False)
        self.stats = LinkStats()
        self.poll_max_s = inner.poll_max_s
        # Retried attempts and multipart requests are requests too: bill them.
        inner.on_extra_request = self._count_extra
        self._up = TokenBucket(self.link.up_mb_s * MB, burst_bytes(self.link.up_mb_s * MB))
        self._down = TokenBucket(self.link.down_mb_s * MB, burst_bytes(self.link.down_mb_s * MB))

    def __repr__(self) -> str:
        return f"ThrottledStorage({self.inner!r}, {self.link!r})"

    def _count_extra(self, billed: str, count: int) -> None:
        self.stats.add(**{billed: count})

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

    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        start = time.monotonic()
        size = memoryview(data).nbytes
        self._stream(self._up, size)
        written = time.monotonic()
        try:  # visible once the bytes are across, acknowledged later; a refused create is billed
            self.inner.put(key, data, overwrite=overwrite)
        finally:
            self._latency(written)
            self.stats.add(puts=1, bytes_up=size, up_seconds=time.monotonic() - start)

    def get(self, key: str) -> bytes:
        start = time.monotonic()
        try:
            data = self.inner.get(key)
        except BaseException:
            self._latency(start)  # a miss is a request too: it pays latency and is billed
            self.stats.add(gets=1, down_seconds=time.monotonic() - start)
            raise
        self._latency(start)
        self._stream(self._down, len(data))
        self.stats.add(gets=1, bytes_down=len(data), down_seconds=time.monotonic() - start)
        return data

    def exists(self, key: str) -> bool:
        start = time.monotonic()
        try:
            return self.inner.exists(key)
        finally:
            self._latency(start)
            self.stats.add(heads=1, down_seconds=time.monotonic() - start)

    def delete(self, key: str) -> None:
        start = time.monotonic()
        try:
            self.inner.delete(key)
        finally:
            self._latency(start)
            self.stats.add(deletes=1)

    def list(self, prefix: str) -> list[str]:
        start = time.monotonic()
        try:
            keys = self.inner.list(prefix)
        finally:
            self._latency(start)
        self.stats.add(lists=_pages(len(keys)))
        return keys

    def delete_prefix(self, prefix: str) -> int:
        start = time.monotonic()
        count = self.inner.delete_prefix(prefix)
        self._latency(start)
        # One listing (a page per 1000 keys) and one bulk delete per 1000 keys, as on S3.
        self.stats.add(lists=_pages(count), bulk_deletes=-(-count // 1000), deletes=count)
        return count


def _pages(count: int, page: int = 1000) -> int:
    """Listing requests needed for ``count`` keys: one, plus one per further full page."""
    return max(1, -(-count // page))
