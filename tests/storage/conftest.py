"""Backends under the storage contract suite; a new backend is one more entry in BACKENDS.

The servers behind redis and s3 come from the session fixtures in tests/conftest.py.
"""

from __future__ import annotations

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


def _redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    from funcpipe.storage import open_storage

    yield open_storage(request.getfixturevalue("redis_url"))


def _s3(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    from funcpipe.storage import open_storage

    # A prefix in the URL too, so the backend's own key mapping runs under the whole contract.
    yield open_storage(request.getfixturevalue("s3_server").new_bucket("contract"))


#: Injected faults on 10 % of requests (timeouts, 503s, resets; see funcpipe.storage.faults):
#: the retries must make every contract hold anyway.
FAULTS = "faults=0.1&faults_seed=11"


def _local_faults(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    from funcpipe.storage import open_storage

    yield open_storage(f"local://{tmp_path / 'store'}?{FAULTS}")


def _redis_faults(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    from funcpipe.storage import open_storage

    yield open_storage(f"{request.getfixturevalue('redis_url')}?{FAULTS}")


def _s3_faults(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    from funcpipe.storage import open_storage

    yield open_storage(f"{request.getfixturevalue('s3_server').new_bucket('contract')}&{FAULTS}")


def _s3_parts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Storage]:
    """S3 reading objects above 2 MiB as parallel 1 MiB ranges (the 4 MB atomicity test)."""
    from funcpipe.storage import open_storage

    url = request.getfixturevalue("s3_server").new_bucket("contract")
    yield open_storage(f"{url}&part_mb=1&parallel_parts=4")


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Iterator[Storage]]] = {
    "local": _local,
    "memory": _memory,
    "prefixed": _prefixed,
    "throttled": _throttled,
    "redis": _redis,
    "s3": _s3,
    "local+faults": _local_faults,
    "redis+faults": _redis_faults,
    "s3+faults": _s3_faults,
    "s3+parts": _s3_parts,
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
