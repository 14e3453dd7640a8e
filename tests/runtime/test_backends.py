"""The sacred equivalence on every storage backend functions can share: local, Redis and S3.

Each function is a forked process that opens the storage URL itself, so these runs also prove
the URL carries everything (endpoint, bucket, database) and that no job key outlives the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from test_equivalence import FAST_LINK, OPTIMIZERS, make_batches, make_model, reference
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.errors import ConfigError
from funcpipe.runtime import keys
from funcpipe.storage import open_storage

PLAN = Plan(stages=[Stage(start=0, end=4, replicas=2), Stage(start=4, end=7)], micro_batches=4)


class Backend:
    """A storage URL plus a way to tell that the run's requests really reached that backend."""

    def __init__(self, url: str, requests: Callable[[str], int]) -> None:
        self.url = url
        self.requests = requests  # job_id -> requests seen so far (or a proxy for them)


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    root = tmp_path / "store"
    # The job's folders come and go inside root, so its modification time moves on.
    return Backend(str(root), lambda job_id: root.stat().st_mtime_ns if root.exists() else 0)


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)

    def sets(job_id: str) -> int:
        stats = client.info("commandstats").get("cmdstat_set", {})
        return int(stats.get("calls", 0))

    return Backend(url, sets)


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    server = request.getfixturevalue("s3_server")
    url = server.new_bucket("funcpipe")

    def puts_of_job(job_id: str) -> int:
        lines = server.log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if '"PUT /' in line and f"/jobs/{job_id}/" in line)

    return Backend(url, puts_of_job)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "local": _local,
    "redis": _redis,
    "s3": _s3,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](request, tmp_path)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_training_equals_single_process_and_leaves_no_keys(backend: Backend, opt_name: str) -> None:
    model, batches = make_model(), make_batches(3)
    loss_fn = nn.CrossEntropyLoss()
    job_id = f"eq-{opt_name}-{uuid.uuid4().hex[:8]}"
    before_keys = open_storage(backend.url).list("")
    before_requests = backend.requests(job_id)
    result = train(
        model,
        loss_fn,
        optimizer=OPTIMIZERS[opt_name],
        batches=batches,
        plan=PLAN,
        steps=3,
        storage=backend.url,
        link=FAST_LINK,
        progress=False,
        timeout_s=60,
        job_id=job_id,
    )
    expected, losses = reference(model, loss_fn, OPTIMIZERS[opt_name], batches)
    got = dict(result.model.named_parameters())
    for name, p in expected.named_parameters():
        torch.testing.assert_close(got[name], p, rtol=0, atol=1e-5, msg=name)
    assert result.losses == pytest.approx(losses, abs=1e-5)

    assert backend.requests(job_id) > before_requests  # the functions really used this backend
    with open_storage(backend.url) as store:
        assert store.list(keys.job_prefix(job_id)) == []
        assert store.list("") == before_keys


def test_train_on_a_missing_bucket_fails_before_any_function_starts(s3_server: Any) -> None:
    model, batches = make_model(), make_batches(1)
    with pytest.raises(ConfigError, match="does not exist.*create_bucket=true"):
        train(
            model,
            nn.CrossEntropyLoss(),
            optimizer=OPTIMIZERS["adam"],
            batches=batches,
            plan=PLAN,
            steps=1,
            storage=s3_server.url("fp-no-such-bucket"),
            progress=False,
        )


def test_training_through_injected_storage_faults_is_still_exact(backend: Backend) -> None:
    """5 % of all storage requests (every function's and the client's) time out, answer 503 or
    reset the connection, half of them after the store acted. Retries must make the run
    exactly equal anyway, with no key left. The faults travel in the storage URL, so every
    function process injects them too; a 3-step run sends several hundred requests, so the
    chance that no fault struck is below 1e-6."""
    model, batches = make_model(), make_batches(3)
    loss_fn = nn.CrossEntropyLoss()
    job_id = f"faults-{uuid.uuid4().hex[:8]}"
    sep = "&" if "?" in backend.url else "?"
    result = train(
        model,
        loss_fn,
        optimizer=OPTIMIZERS["adam"],
        batches=batches,
        plan=PLAN,
        steps=3,
        storage=f"{backend.url}{sep}faults=0.05",
        link=FAST_LINK,
        progress=False,
        timeout_s=60,
        job_id=job_id,
    )
    expected, losses = reference(model, loss_fn, OPTIMIZERS["adam"], batches)
    got = dict(result.model.named_parameters())
    for name, p in expected.named_parameters():
        torch.testing.assert_close(got[name], p, rtol=0, atol=1e-5, msg=name)
    assert result.losses == pytest.approx(losses, abs=1e-5)
    with open_storage(backend.url) as store:
        assert store.list(keys.job_prefix(job_id)) == []
