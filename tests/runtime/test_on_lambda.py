"""Whole jobs on the aws-lambda platform: moto's control plane, the real handler, real S3 server.

Each invocation is accepted by moto (202) and then run by the real handler on the real event,
in a thread of this process or in a fresh interpreter; the job's storage is the S3-protocol
server, so every function talks to it by URL, as a Lambda would.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import torch
from lambda_local import LocalLambda, mocked_lambda
from test_equivalence import OPTIMIZERS, assert_trains_like_pytorch, make_batches, make_model
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.errors import FunctionFailed
from funcpipe.platforms import control
from funcpipe.storage import open_storage

MEMORY = 1024
TWO_BY_TWO = Plan(
    stages=[Stage(start=0, end=4, replicas=2, memory_mb=MEMORY),
            Stage(start=4, end=7, replicas=2, memory_mb=MEMORY)],
    micro_batches=4,
)  # fmt: skip
TWO_BY_ONE = Plan(
    stages=[Stage(start=0, end=4, memory_mb=MEMORY), Stage(start=4, end=7, memory_mb=MEMORY)],
    micro_batches=3,
)


@pytest.fixture
def lambda_client(s3_server):
    with mocked_lambda([MEMORY]) as client:
        yield client


def _no_job_keys(url: str, job_id: str) -> bool:
    store = open_storage(url)
    try:
        return store.list(f"jobs/{job_id}/") == []
    finally:
        store.close()


# Fresh interpreters start slowly on a busy machine: the subprocess run uses fewer functions.
RUNS = {"thread": (TWO_BY_TWO, 3), "subprocess": (TWO_BY_ONE, 2)}


@pytest.mark.parametrize("mode", list(RUNS))
def test_training_on_lambda_equals_single_process(s3_server, lambda_client, mode) -> None:
    url = s3_server.new_bucket("funcpipe")
    plat = LocalLambda(lambda_client, mode)
    job_id = f"lambda-{mode}-{uuid.uuid4().hex[:6]}"
    plan, steps = RUNS[mode]
    try:
        assert_trains_like_pytorch(
            make_model(), make_batches(steps), plan, optimizer=OPTIMIZERS["adam"],
            platform=plat, storage=url, job_id=job_id,
        )  # fmt: skip
        invocations = plat.invocations()
        assert len(invocations) == plan.num_functions
        billed = [plat.billed_ms(inv) for inv in invocations]
        assert all(isinstance(ms, int) and ms > 0 for ms in billed), billed
    finally:
        plat.close()
    assert _no_job_keys(url, job_id)
    if mode == "subprocess":
        assert [p.returncode for p in plat.processes] == [0] * plan.num_functions


def test_retried_invocations_touch_nothing(s3_server, lambda_client) -> None:
    """Every event runs three times at once; only the claim's winner trains, results unchanged."""
    url = s3_server.new_bucket("funcpipe")
    plat = LocalLambda(lambda_client, "thread", retries=2)
    try:
        plan = Plan(stages=[Stage(start=0, end=4, memory_mb=MEMORY),
                            Stage(start=4, end=7, replicas=2, memory_mb=MEMORY)],
                    micro_batches=2)  # fmt: skip
        assert_trains_like_pytorch(make_model(), make_batches(2), plan, platform=plat, storage=url)
    finally:
        plat.close()
    states = sorted(r["state"] if r else "raised" for r in plat.results)
    assert states == ["done"] * 3 + ["duplicate"] * 6, plat.results


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("shapes do not line up in Boom")


def test_a_failing_function_reports_its_traceback(s3_server, lambda_client) -> None:
    url = s3_server.new_bucket("funcpipe")
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 8), Boom(), nn.Linear(8, 5))
    plan = Plan(stages=[Stage(start=0, end=2, memory_mb=MEMORY),
                        Stage(start=2, end=4, memory_mb=MEMORY)], micro_batches=2)  # fmt: skip
    plat = LocalLambda(lambda_client, "subprocess")
    with pytest.raises(FunctionFailed) as err:
        train(model, nn.CrossEntropyLoss(), optimizer=OPTIMIZERS["sgd-momentum"],
              batches=make_batches(2), plan=plan, platform=plat, storage=url, progress=False,
              timeout_s=60)  # fmt: skip
    plat.close()
    assert "stage1-replica0" in str(err.value)
    assert "ValueError: shapes do not line up in Boom" in str(err.value)


def test_cancel_stops_a_function_in_its_own_process(s3_server, lambda_client) -> None:
    """Stage 0 fails; the client cancels stage 1, blocked waiting for it: its process ends."""
    url = s3_server.new_bucket("funcpipe")
    model = nn.Sequential(nn.Flatten(), Boom(), nn.Linear(192, 8), nn.Linear(8, 5))
    plan = Plan(stages=[Stage(start=0, end=2, memory_mb=MEMORY),
                        Stage(start=2, end=4, memory_mb=MEMORY)], micro_batches=2)  # fmt: skip
    plat = LocalLambda(lambda_client, "subprocess")
    job_id = f"cancel-{uuid.uuid4().hex[:6]}"
    try:
        with pytest.raises(FunctionFailed):
            train(model, nn.CrossEntropyLoss(), optimizer=OPTIMIZERS["sgd-momentum"],
                  batches=make_batches(2), plan=plan, platform=plat, storage=url,
                  progress=False, timeout_s=120, job_id=job_id)  # fmt: skip
        stuck = plat.processes[1]
        started = time.monotonic()
        stuck.wait(30)  # far less than its 120 s wait for stage 0
        assert time.monotonic() - started < 30
        # Ended by itself, not by the test: by its abort key (3), or, when the client's clean-up
        # of the job's keys came first (even before this slow-starting function read its
        # package), by finding its job gone (75).
        assert stuck.returncode in (3, 75), stuck.returncode
    finally:
        plat.close()


def test_handler_refuses_events_that_are_not_funcpipe_packages() -> None:
    from funcpipe.errors import ConfigError
    from funcpipe.platforms.lambda_handler import LocalContext, handler

    with pytest.raises(ConfigError, match="FuncPipe functions only"):
        handler({"Records": []}, LocalContext())


def test_claimed_attempt_exits_without_touching_anything(tmp_path) -> None:
    from funcpipe.platforms.lambda_handler import LocalContext, handle

    url = f"local://{tmp_path}/store"
    pkg = {"job_id": "j1", "storage_url": url, "stage": 0, "replica": 1, "generation": 4}
    shared = open_storage(f"{url}/jobs/j1")
    keys = control.ControlKeys(4, 0, 1)
    shared.put(control.MANIFEST_KEY, b"{}")
    shared.put(keys.claim, b'{"attempt": "first"}')
    result = handle({"funcpipe": 1, "package": pkg}, LocalContext())
    assert result["state"] == "duplicate"
    assert sorted(shared.list("")) == sorted([keys.claim, control.MANIFEST_KEY])
    assert json.loads(shared.get(keys.claim)) == {"attempt": "first"}


def _late_event(tmp_path) -> tuple[dict, object, control.ControlKeys]:
    url = f"local://{tmp_path}/store"
    pkg = {"job_id": "j2", "storage_url": url, "stage": 1, "replica": 0, "generation": 0,
           "layers": {control.OFFLOAD_MARK: "control/payload/abc", "sha256": "0" * 64}}  # fmt: skip
    return (
        {"funcpipe": 1, "package": pkg},
        open_storage(f"{url}/jobs/j2"),
        control.ControlKeys(0, 1, 0),
    )


def test_an_invocation_that_starts_after_its_job_was_deleted_leaves_nothing(tmp_path) -> None:
    """Lambda may start a queued invocation after its client finished and deleted the job."""
    from funcpipe.platforms.lambda_handler import LocalContext, handle

    event, shared, _ = _late_event(tmp_path)
    assert handle(event, LocalContext())["state"] == "gone"
    assert shared.list("") == []


def test_an_invocation_of_a_cancelled_job_does_not_start(tmp_path) -> None:
    from funcpipe.platforms.lambda_handler import LocalContext, handle

    event, shared, keys = _late_event(tmp_path)
    shared.put(control.MANIFEST_KEY, b"{}")
    shared.put(keys.abort, b"")
    assert handle(event, LocalContext())["state"] == "cancelled"
    assert sorted(shared.list("")) == sorted([keys.abort, control.MANIFEST_KEY])


def test_a_job_deleted_while_the_invocation_claims_removes_the_claim(tmp_path, monkeypatch) -> None:
    """The job ends between the check and the claim: the payload is gone, which is no failure."""
    from funcpipe.platforms.lambda_handler import LocalContext, handle

    event, shared, keys = _late_event(tmp_path)
    checks = []
    real = control.job_ended
    monkeypatch.setattr(control, "job_ended", lambda *a: checks.append(1) or (
        None if len(checks) == 1 else real(*a)))  # fmt: skip
    assert handle(event, LocalContext())["state"] == "gone"
    assert len(checks) == 2
    assert shared.list("") == []


def test_a_missing_payload_of_a_live_job_is_a_failure(tmp_path) -> None:
    from funcpipe.errors import KeyNotFound
    from funcpipe.platforms.lambda_handler import LocalContext, handle

    event, shared, keys = _late_event(tmp_path)
    shared.put(control.MANIFEST_KEY, b"{}")
    with pytest.raises(KeyNotFound):
        handle(event, LocalContext())
