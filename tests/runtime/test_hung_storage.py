"""A store that stops answering mid-job fails the job within a bound, and leaves no function.

The per-request bound (``RetryPolicy.bound_s``, docs/storage.md) is pinned by
tests/storage/test_reliability.py; here a whole job on a real redis-server or S3-protocol
server is frozen with SIGSTOP part way through, as a user would meet a hung store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from servers import start_moto, start_redis, stop
from test_equivalence import FAST_LINK, OPTIMIZERS, make_batches, make_model

from funcpipe import Plan, Stage, train
from funcpipe.client.jobs import clean
from funcpipe.errors import FuncPipeError
from funcpipe.storage import open_storage
from funcpipe.storage.retry import RetryPolicy

PLAN = Plan(stages=[Stage(start=0, end=4), Stage(start=4, end=7)], micro_batches=2)
TIMEOUT_S = 3.0


def _functions() -> list[int]:
    """Function processes (fresh interpreters) descending from this test process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"funcpipe.platforms.local_child" not in cmdline:
            continue
        pid = int(entry)
        while pid > 1:
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                break
            if pid == os.getpid():
                found.append(int(entry))
                break
    return found


@pytest.mark.parametrize("kind", ["redis", "s3"])
def test_a_store_that_hangs_mid_job_fails_it_within_the_bound(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "redis":
        proc, url = start_redis(tmp_path)
    else:
        request.getfixturevalue("s3_server")  # its credentials for the private server below
        proc, endpoint, _log = start_moto(tmp_path)
        url = f"s3://fp-hung-job?endpoint_url={endpoint}&region=us-east-1&create_bucket=true"

    def release() -> None:  # whatever happens below, the server is continued and stopped
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        stop(proc)

    request.addfinalizer(release)
    watch = open_storage(url)
    outcome: dict[str, object] = {}

    def job() -> None:
        try:
            train(
                make_model(), torch_loss(), optimizer=OPTIMIZERS["adam"],
                batches=make_batches(200), plan=PLAN, steps=200, link=FAST_LINK,
                storage=url, timeout_s=TIMEOUT_S, job_id="hung", progress=False,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc
        outcome["end"] = time.monotonic()

    thread = threading.Thread(target=job)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not any("/step3/" in k for k in watch.list("jobs/hung/")):  # training is under way
            assert thread.is_alive() and time.monotonic() < deadline, outcome
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        thread.join(120)
        assert not thread.is_alive(), "the job did not fail while its store was hung"
        elapsed = float(outcome["end"]) - frozen  # type: ignore[arg-type]
        error = outcome.get("error")
        assert isinstance(error, FuncPipeError), error
        # The client's next request fails within one request bound; its clean-up of the job's
        # keys (one listing, one bulk delete) gets a bound of its own.
        bound = 3 * RetryPolicy(deadline_s=TIMEOUT_S).bound_s()
        assert elapsed <= bound + 5.0, (elapsed, bound, error)  # + slack for a busy machine
        time.sleep(1.0)
        assert _functions() == [], "functions outlived the failed job"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        thread.join(60)
    print(f"{kind}: failed {elapsed:.1f} s after the store hung: {error}")
    # The client could not delete the job's keys while the store was hung (it warns and says
    # how to): on Redis they expire on their own, and once the store answers again the clean-up
    # command removes them.
    leftovers = watch.list("jobs/hung/")
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(url)
        # -2: the key went away since the listing (a late delete once the store woke up)
        ttls = {k: client.ttl(k) for k in leftovers}
        assert all(t > 0 or t == -2 for t in ttls.values()), f"keys that never expire: {ttls}"
        client.close()
    removed = clean(watch, job_ids=["hung"], older_than_s=0, force=True)
    assert [j.job_id for j in removed] == ["hung"] or leftovers == []
    assert watch.list("jobs/hung/") == []
    watch.close()


def torch_loss():
    from torch import nn

    return nn.CrossEntropyLoss()
