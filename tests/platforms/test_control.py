"""Control records in storage: create-only claims, the function's guard and abort watch."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from funcpipe.platforms import control
from funcpipe.storage import MemoryStorage, open_storage


@pytest.fixture(params=["local", "memory", "redis", "s3"])
def root(request, tmp_path):
    if request.param == "memory":
        store = MemoryStorage()
    elif request.param == "local":
        store = open_storage(f"local://{tmp_path}/store")
    elif request.param == "redis":
        store = open_storage(request.getfixturevalue("redis_url"))
    else:
        store = open_storage(request.getfixturevalue("s3_server").new_bucket("pre/fix"))
    yield store
    store.close()


def test_claim_is_create_only_on_every_backend(root) -> None:
    key = f"jobs/t-{uuid.uuid4().hex[:8]}/control/g0/s0r0/claim"
    assert control.claim(root, key, b"first")
    assert not control.claim(root, key, b"second")
    assert root.get(key) == b"first"
    root.delete(key)


def test_concurrent_claims_have_exactly_one_winner(root) -> None:
    key = f"jobs/t-{uuid.uuid4().hex[:8]}/control/g1/s2r3/claim"
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        if control.claim(root, key, str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert root.get(key) == str(wins[0]).encode()
    root.delete(key)


def test_guard_writes_heartbeats_then_done(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    keys = control.ControlKeys(0, 0, 1)
    guard = control.FunctionGuard(
        shared, keys, attempt="a1", started_at=time.time(), heartbeat_s=0.05, abort_poll_s=0.02
    )
    guard.start()
    first = json.loads(shared.get(keys.status))
    assert first["state"] == "started" and first["attempt"] == "a1"
    time.sleep(0.3)
    beat = json.loads(shared.get(keys.status))
    assert beat["state"] == "running" and beat["heartbeat_at"] > first["heartbeat_at"]
    guard.finish(None)
    done = json.loads(shared.get(keys.status))
    assert done["state"] == "done" and done["billed_ms"] >= 300
    time.sleep(0.2)  # the watcher has stopped: nothing overwrites the final record
    assert json.loads(shared.get(keys.status)) == done


def test_guard_records_the_traceback_of_a_failure(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    keys = control.ControlKeys(0, 2, 0)
    guard = control.FunctionGuard(shared, keys, attempt="a", started_at=time.time())
    guard.start()
    try:
        raise ValueError("bad layer shapes")
    except ValueError as exc:
        guard.finish(exc)
    rec = json.loads(shared.get(keys.status))
    assert rec["state"] == "failed" and rec["reason"] == "error"
    assert "Traceback" in rec["error"] and "ValueError: bad layer shapes" in rec["error"]
    assert rec["transient"] is False


def test_guard_records_whether_a_relaunch_may_cure_the_error(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    keys = control.ControlKeys(0, 1, 0)
    guard = control.FunctionGuard(shared, keys, attempt="a", started_at=time.time())
    guard.start()
    try:
        try:
            raise ConnectionResetError("peer reset")
        except OSError as exc:
            raise RuntimeError("could not send the activations") from exc
    except RuntimeError as exc:
        guard.finish(exc)
    assert json.loads(shared.get(keys.status))["transient"] is True


@pytest.mark.parametrize("why", ["abort", "job deleted", "deadline"])
def test_guard_stops_the_function(tmp_path, why) -> None:
    shared = open_storage(f"local://{tmp_path}")
    shared.put(control.MANIFEST_KEY, b"{}")  # the client's manifest of the job
    keys = control.ControlKeys(0, 0, 0)
    stopped = threading.Event()
    reasons: list[str] = []
    end = time.monotonic() + (0.3 if why == "deadline" else 30)
    guard = control.FunctionGuard(
        shared,
        keys,
        attempt="a",
        started_at=time.time(),
        remaining_s=lambda: end - time.monotonic(),
        stop=lambda reason: (reasons.append(reason), stopped.set()),
        abort_poll_s=0.02,
    )
    guard.start()
    time.sleep(0.1)  # the guard has seen the manifest
    if why == "abort":
        shared.put(keys.abort, b"{}")
    elif why == "job deleted":  # the abort key went with the job's keys before it was seen
        shared.delete_prefix("")
    assert stopped.wait(5)
    guard.finish(RuntimeError("interrupted"))  # what the stopped function raises: ignored
    if why == "deadline":
        rec = json.loads(shared.get(keys.status))
        assert reasons == ["timeout"] and (rec["state"], rec["reason"]) == ("failed", "timeout")
    else:
        assert reasons == ["cancelled" if why == "abort" else "job deleted"]
        # No record after an abort: the client knows, and the job's keys may be gone.
        assert why == "abort" or shared.list("") == []


def test_abort_watch_of_a_lithops_call(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    stopped: list[str] = []
    done = control.watch_abort(shared, "control/g0/s0r0/abort", poll_s=0.02, stop=stopped.append)
    time.sleep(0.1)
    assert stopped == []
    shared.put("control/g0/s0r0/abort", b"{}")
    time.sleep(0.2)
    assert stopped == ["cancelled"]
    done.set()
