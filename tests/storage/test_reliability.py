"""Retries, deadlines and injected faults, against real servers (redis-server, moto S3).

A hung server is a real one stopped with SIGSTOP: it accepts connections (the kernel does) and
never answers, the hardest case for a client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import start_moto, start_redis, stop

from funcpipe.errors import (
    ConfigError,
    KeyExists,
    KeyNotFound,
    StorageError,
    StorageUnavailable,
)
from funcpipe.storage import LocalDirStorage, RetryPolicy, ThrottledStorage, open_storage
from funcpipe.storage.faults import FaultInjector
from funcpipe.storage.retry import Transient, call_with_retries

# -- the retry loop ------------------------------------------------------------------------


def test_transient_failures_are_retried_until_success() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Transient("connection reset")
        return "ok"

    assert call_with_retries(RetryPolicy(first_backoff_s=0.001), "GET of 'k'", flaky) == "ok"
    assert len(calls) == 3


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyNotFound("k")

    with pytest.raises(KeyNotFound):
        call_with_retries(RetryPolicy(), "GET of 'k'", broken)
    assert len(calls) == 1


def test_attempts_are_bounded_and_the_error_says_what_failed() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise Transient("503 SlowDown")

    policy = RetryPolicy(max_attempts=4, first_backoff_s=0.001)
    with pytest.raises(StorageUnavailable, match=r"GET of 'k' failed 4 time.*503 SlowDown"):
        call_with_retries(policy, "GET of 'k'", down)
    assert len(calls) == 4


def test_the_deadline_bounds_retries() -> None:
    policy = RetryPolicy(deadline_s=0.5, max_attempts=10_000, first_backoff_s=0.01)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="deadline 0.5 s"):
        call_with_retries(policy, "PUT", lambda: (_ for _ in ()).throw(Transient("reset")))
    assert time.monotonic() - start < policy.bound_s()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deadline_s=.*positive"):
        open_storage(f"{tmp_path}?deadline_s=-1")
    with pytest.raises(ConfigError, match="faults=.*fraction"):
        open_storage(f"{tmp_path}?faults=lots")
    with pytest.raises(ConfigError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# -- the fault injector ----------------------------------------------------------------------


def test_injector_fails_about_the_asked_fraction_before_and_after() -> None:
    injector = FaultInjector(0.2, seed=1, hang_s=0.0)
    ran = failed = 0
    for _ in range(2000):

        def op() -> None:
            nonlocal ran
            ran += 1

        try:
            injector.around(op)
        except Transient:
            failed += 1
    assert 300 < failed < 500  # 20 % of 2000
    # Half the faults strike after the store acted: the operation ran for those too.
    assert 2000 - failed < ran < 2000 - failed / 4
    assert set(injector.injected) == {"timeout", "error", "reset"}
    assert all(n > 0 for n in injector.injected.values())


def test_faults_come_from_the_url_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_storage(f"local://{tmp_path}?faults=0.25&faults_seed=3")
    assert isinstance(store, LocalDirStorage) and store.root == tmp_path
    assert store.faults is not None and store.faults.rate == 0.25
    assert open_storage(str(tmp_path)).faults is None
    monkeypatch.setenv("FUNCPIPE_FAULTS", "0.5")
    assert open_storage(str(tmp_path)).faults.rate == 0.5


def test_faulty_local_store_still_keeps_its_contract(tmp_path: Path, monkeypatch) -> None:
    # The seed is mixed with the process id (so that functions sharing a seed do not fail in
    # lockstep): fix the id, so that this test sees the same faults on every run. With a fresh
    # id each run, one request in ~15,000 runs out of its 8 attempts (0.3 ** 8), about one run
    # in a hundred of this test.
    from funcpipe.storage import faults

    monkeypatch.setattr(faults.os, "getpid", lambda: 4242)
    store = open_storage(f"{tmp_path}?faults=0.3&faults_seed=7")
    for i in range(40):
        store.put(f"k/{i}", bytes([i]) * 100)
    assert store.list("k/") == sorted(f"k/{i}" for i in range(40))
    for i in range(40):
        assert store.wait(f"k/{i}", 1.0, delete=True) == bytes([i]) * 100
    assert store.list("") == []
    assert sum(store.faults.injected.values()) > 10


# -- counting every request of a wait ----------------------------------------------------------


def _record_s3_ops(store: Any) -> list[str]:
    ops: list[str] = []
    store._client.meta.events.register("before-call.s3", lambda model, **_: ops.append(model.name))
    return ops


def test_every_poll_of_a_wait_is_counted_as_the_server_saw_it(s3_server: Any) -> None:
    inner = open_storage(s3_server.new_bucket())
    ops = _record_s3_ops(inner)
    link = ThrottledStorage(inner)
    timer = threading.Timer(0.5, inner.put, args=("flag", b"go"))
    timer.start()
    assert link.wait("flag", timeout=10.0, delete=True) == b"go"
    timer.join()
    stats = link.stats.snapshot()
    assert stats.gets == ops.count("GetObject") >= 3  # misses included
    assert stats.deletes == ops.count("DeleteObject") == 1
    assert link.exists("flag") is False
    assert link.stats.heads == 1 and ops.count("HeadObject") == 1
    assert link.stats.get_class() == stats.gets + 1
    inner.close()


def test_waits_back_off_to_the_backend_cap(s3_server: Any) -> None:
    """A 1 s wait on S3 polls quickly at first, then every poll_max_s (0.05 s): ~25 GETs,
    where the old fixed 10 ms pace sent ~100."""
    inner = open_storage(s3_server.new_bucket())
    link = ThrottledStorage(inner)
    with pytest.raises(StorageError, match="timed out"):
        link.wait("never", timeout=1.0)
    polls = link.stats.gets
    assert 8 <= polls <= 1.0 / inner.poll_max_s + 10
    # Waiting in slices (as the all-reduce does, to check for aborts) keeps the slow pace.
    before = link.stats.gets
    for _ in range(4):
        with pytest.raises(StorageError):
            link.wait("never", timeout=0.25)
    assert link.stats.gets - before <= 1.0 / inner.poll_max_s + 6
    inner.close()


# -- S3 without s3:ListBucket ------------------------------------------------------------------


def test_s3_403_for_a_missing_key_is_not_found(s3_server: Any) -> None:
    """Without s3:ListBucket, S3 answers GET/HEAD of a missing key with 403 AccessDenied.
    moto does not enforce IAM, so botocore's Stubber plays that answer on the real client."""
    from botocore.stub import Stubber

    store = open_storage(s3_server.new_bucket())
    with Stubber(store._client) as stub:
        for _ in range(2):
            stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403)
        stub.add_client_error("head_object", "403", "Forbidden", 403)
        with pytest.raises(KeyNotFound, match="s3:ListBucket"):
            store.get("a/b")
        with pytest.raises(StorageError, match="timed out"):
            store.wait("a/b", timeout=0.0)
        assert store.exists("a/b") is False
    assert store.saw_denied


def test_s3_5xx_is_retried(s3_server: Any) -> None:
    from botocore.stub import Stubber

    store = open_storage(s3_server.new_bucket())
    store.configure_requests(RetryPolicy(first_backoff_s=0.001))
    with Stubber(store._client) as stub:
        stub.add_client_error("delete_object", "SlowDown", "Reduce your rate", 503)
        stub.add_client_error("delete_object", "InternalError", "oops", 500)
        stub.add_response("delete_object", {})
        store.delete("k")
        stub.assert_no_pending_responses()


# -- hung servers ------------------------------------------------------------------------------


@pytest.fixture
def stopped_later() -> Iterator[list[subprocess.Popen]]:
    """Processes a test SIGSTOPs; continued and stopped for good afterwards."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        os.kill(proc.pid, signal.SIGCONT)
        stop(proc)


DEADLINE_S = 3.0


def _assert_fails_within_bound(op, policy: RetryPolicy) -> float:
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="failed"):
        op()
    elapsed = time.monotonic() - start
    assert elapsed <= policy.bound_s() + 1.0, elapsed  # + scheduling slack on a busy machine
    return elapsed


def test_a_hung_redis_fails_each_operation_within_the_bound(
    tmp_path: Path, stopped_later: list[subprocess.Popen]
) -> None:
    proc, url = start_redis(tmp_path)
    stopped_later.append(proc)
    store = open_storage(url, deadline_s=DEADLINE_S)
    store.put("k", b"v")
    os.kill(proc.pid, signal.SIGSTOP)
    for op in (lambda: store.get("k"), lambda: store.put("k", b"w"),
               lambda: store.wait("k", 30.0)):  # fmt: skip
        elapsed = _assert_fails_within_bound(op, store.retry)
        assert elapsed >= DEADLINE_S * 0.9  # it did keep trying for the deadline
    os.kill(proc.pid, signal.SIGCONT)
    assert store.get("k") == b"v"  # and recovers once the server is back


def test_a_hung_s3_server_fails_each_operation_within_the_bound(
    tmp_path: Path, s3_server: Any, stopped_later: list[subprocess.Popen]
) -> None:
    proc, endpoint, _log = start_moto(tmp_path)
    stopped_later.append(proc)
    url = f"s3://fp-hung?endpoint_url={endpoint}&region=us-east-1&create_bucket=true"
    store = open_storage(url, deadline_s=DEADLINE_S)
    store.put("k", b"v")
    os.kill(proc.pid, signal.SIGSTOP)
    for op in (lambda: store.get("k"), lambda: store.put("k", b"w" * 1_000_000),
               lambda: store.list("")):  # fmt: skip
        _assert_fails_within_bound(op, store.retry)
    os.kill(proc.pid, signal.SIGCONT)
    assert store.get("k") == b"v"


def test_s3_403_on_head_bucket_means_the_bucket_exists(s3_server: Any) -> None:
    """A role whose s3:ListBucket is limited to its prefix may not HEAD the bucket: opening
    must still work (a missing bucket answers 404, handled separately)."""
    from botocore.stub import Stubber

    store = open_storage(s3_server.new_bucket())
    with Stubber(store._client) as stub:
        stub.add_client_error("head_bucket", "403", "Forbidden", 403)
        store._check_bucket()
        stub.assert_no_pending_responses()


class _LoseReplies(FaultInjector):
    """Every request reaches the store; the reply of each first attempt is lost."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.attempts = 0

    def around(self, fn):  # type: ignore[no-untyped-def]
        self.attempts += 1
        result = fn()
        if self.attempts % 2 == 1:
            raise Transient("reply lost")
        return result


def test_delete_prefix_counts_what_it_deleted_when_a_reply_is_lost(tmp_path: Path) -> None:
    """A retried DELETE-PREFIX finds nothing left; the count still names the keys it removed."""
    store = LocalDirStorage(tmp_path / "store")
    for key in ("a/1", "a/2", "a/3", "b"):
        store.put(key, b"v")
    store.configure_requests(faults=_LoseReplies())
    assert store.delete_prefix("a/") == 3
    store.configure_requests(faults=None)
    assert store.list("") == ["b"]


@pytest.mark.parametrize("backend", ["local", "redis", "s3"])
def test_a_create_whose_reply_is_lost_still_counts_as_created(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The retry of a create-only put that landed finds its own bytes: created, not KeyExists;
    another writer's create after it is refused."""
    if backend == "local":
        store = open_storage(str(tmp_path / "store"))
    elif backend == "redis":
        store = open_storage(request.getfixturevalue("redis_url"))
    else:
        store = open_storage(request.getfixturevalue("s3_server").new_bucket())
    key = f"jobs/t-{os.getpid()}-{time.monotonic_ns()}/claim"
    faults = _LoseReplies()
    store.configure_requests(faults=faults)
    try:
        store.put(key, b"attempt a", overwrite=False)
        assert faults.attempts > 2  # the create was sent twice, and its bytes read back
        with pytest.raises(KeyExists):
            store.put(key, b"attempt b", overwrite=False)
        store.configure_requests(faults=None)
        assert store.get(key) == b"attempt a"
    finally:
        store.configure_requests(faults=None)
        store.delete(key)
        store.close()
