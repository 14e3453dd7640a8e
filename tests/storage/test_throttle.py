"""The link model: measured rates match the configuration, directions are independent."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from funcpipe.errors import ConfigError
from funcpipe.storage import LinkConfig, LocalDirStorage, ThrottledStorage

RATE_MB_S = 20.0
SIZE = 6_000_000  # 0.3 s at 20 MB/s
ATTEMPTS = 3


def assert_rate(measure) -> None:
    """``measure()`` returns measured MB/s (one or several); all must be within +-10 %.

    A loaded machine can only make a transfer slower, never faster, so an attempt that comes out
    too slow is retried (up to ATTEMPTS); one too fast fails at once.
    """
    for _ in range(ATTEMPTS):
        rates = measure()
        assert all(r <= RATE_MB_S * 1.10 for r in rates), f"faster than the link: {rates}"
        if all(r == pytest.approx(RATE_MB_S, rel=0.10) for r in rates):
            return
    raise AssertionError(f"{rates} MB/s not within 10 % of {RATE_MB_S} after {ATTEMPTS} tries")


def _store(tmp_path: Path, latency: float = 0.0) -> ThrottledStorage:
    link = LinkConfig(up_mb_s=RATE_MB_S, down_mb_s=RATE_MB_S, latency_s=latency)
    return ThrottledStorage(LocalDirStorage(tmp_path), link)


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def test_upload_and_download_rates_match_link(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = b"\x01" * SIZE

    def measure() -> list[float]:
        start = time.monotonic()
        store.put("blob", data)
        up = _rate(SIZE, time.monotonic() - start)
        start = time.monotonic()
        assert store.get("blob") == data
        return [up, _rate(SIZE, time.monotonic() - start)]

    assert_rate(measure)


def test_upload_and_download_run_at_full_rate_simultaneously(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put("src", b"\x02" * SIZE)
    payload = b"\x03" * SIZE

    def measure() -> list[float]:
        times: dict[str, float] = {}

        def timed(name: str, fn) -> None:
            start = time.monotonic()
            fn()
            times[name] = time.monotonic() - start

        threads = [
            threading.Thread(target=timed, args=("up", lambda: store.put("dst", payload))),
            threading.Thread(target=timed, args=("down", lambda: store.get("src"))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [_rate(SIZE, times["up"]), _rate(SIZE, times["down"])]

    assert_rate(measure)


def test_concurrent_requests_in_one_direction_share_its_rate(tmp_path: Path) -> None:
    store = _store(tmp_path)
    half = SIZE // 2

    def measure() -> list[float]:
        threads = [
            threading.Thread(target=store.put, args=(f"part/{i}", b"\x04" * half)) for i in range(2)
        ]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [_rate(2 * half, time.monotonic() - start)]

    assert_rate(measure)


def test_latency_is_per_request_and_overlaps(tmp_path: Path) -> None:
    store = _store(tmp_path, latency=0.1)
    start = time.monotonic()
    store.put("tiny", b"x")
    assert 0.09 < time.monotonic() - start < 0.5
    threads = [threading.Thread(target=store.get, args=("tiny",)) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start < 0.3  # four requests, latencies overlapped


def test_stats_count_requests_and_bytes(tmp_path: Path) -> None:
    store = ThrottledStorage(LocalDirStorage(tmp_path), LinkConfig(latency_s=0.0, enabled=False))
    store.put("a", b"12345")
    store.put("b", b"123")
    store.get("a")
    store.wait("b", timeout=1.0, delete=True)
    store.delete("a")
    snap = store.stats.snapshot()
    assert (snap.puts, snap.gets, snap.deletes) == (2, 2, 2)
    assert (snap.bytes_up, snap.bytes_down) == (8, 8)
    assert snap.up_seconds >= 0 and snap.down_seconds >= 0
    assert store.stats.as_dict()["bytes_up"] == 8


def test_disabled_link_does_not_throttle(tmp_path: Path) -> None:
    link = LinkConfig(up_mb_s=0.001, down_mb_s=0.001, latency_s=5.0, enabled=False)
    store = ThrottledStorage(LocalDirStorage(tmp_path), link)
    start = time.monotonic()
    store.put("k", b"x" * 100_000)
    store.get("k")
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("field", ["up_mb_s", "down_mb_s", "latency_s"])
def test_bad_link_config_is_rejected(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LinkConfig(**{field: -1.0})
