"""Backends under the storage contract suite; a new backend is one more entry in BACKENDS."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from funcpipe.storage import (
    LinkConfig,
    LocalDirStorage,
    MemoryStorage,
    PrefixedStorage,
    Storage,
    ThrottledStorage,
)

FAST_LINK = LinkConfig(up_mb_s=2000.0, down_mb_s=2000.0, latency_s=0.0005)


def _local(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    yield LocalDirStorage(tmp_path / "store")


def _memory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    yield MemoryStorage()


def _prefixed(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    inner = LocalDirStorage(tmp_path / "store")
    inner.put("outside/key", b"must survive")
    yield PrefixedStorage(inner, "job-1")
    assert inner.get("outside/key") == b"must survive"


def _throttled(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    yield ThrottledStorage(LocalDirStorage(tmp_path / "store"), FAST_LINK)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free local port, for the whole test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; install it (Debian/Ubuntu: "
            "apt-get install -y redis-server) to run the Redis storage contract tests"
        )
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    from funcpipe.storage import open_storage

    yield open_storage(request.getfixturevalue("redis_url"))


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Iterator[Storage]]] = {
    "local": _local,
    "memory": _memory,
    "prefixed": _prefixed,
    "throttled": _throttled,
    "redis": _redis,
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh, empty store of each backend, seen through a unique prefix."""
    gen = BACKENDS[request.param](tmp_path, request)
    backend = next(gen)
    # Shared servers (redis, s3) outlive a test: give each test its own namespace.
    view = PrefixedStorage(backend, f"t-{uuid.uuid4().hex[:12]}")
    try:
        yield view
    finally:
        view.delete_prefix("")
        backend.close()
        next(gen, None)
