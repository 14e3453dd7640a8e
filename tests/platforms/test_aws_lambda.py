"""The AWS Lambda control plane against moto: deploy, asynchronous invocation, status records.

moto's Lambda (use_docker=False) accepts an asynchronous invocation with 202 and runs nothing,
so these tests play the function's side by writing its control records themselves; the handler
really running a job is in test_lambda_jobs.py.
"""

from __future__ import annotations

import json
import time

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws

from funcpipe.client.cli import cli
from funcpipe.errors import ConfigError
from funcpipe.platforms import control
from funcpipe.platforms.aws_lambda import AwsLambdaPlatform, deploy_functions, iam_policy
from funcpipe.platforms.base import FunctionSpec, Status
from funcpipe.storage import open_storage

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/funcpipe:1"


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        iam = boto3.client("iam")
        trust = {"Version": "2012-10-17", "Statement": []}
        role = iam.create_role(RoleName="funcpipe", AssumeRolePolicyDocument=json.dumps(trust))
        yield boto3.client("lambda"), role["Role"]["Arn"]


def test_deploy_creates_one_image_function_per_memory_size_then_updates(aws) -> None:
    lam, role = aws
    done = deploy_functions(
        lam, base="fp", image_uri=IMAGE, role_arn=role, memory_sizes=[2048, 1024, 2048]
    )
    assert done == [("fp-1024mb", "created"), ("fp-2048mb", "created")]
    for mb in (1024, 2048):
        conf = lam.get_function_configuration(FunctionName=f"fp-{mb}mb")
        assert (conf["PackageType"], conf["MemorySize"], conf["Timeout"]) == ("Image", mb, 900)
        retries = lam.get_function_event_invoke_config(FunctionName=f"fp-{mb}mb")
        assert retries["MaximumRetryAttempts"] == 0
    again = deploy_functions(
        lam, base="fp", image_uri=IMAGE[:-1] + "2", role_arn=role, memory_sizes=[1024],
        timeout_s=600,
    )  # fmt: skip
    assert again == [("fp-1024mb", "updated")]
    assert lam.get_function(FunctionName="fp-1024mb")["Code"]["ImageUri"].endswith(":2")
    assert lam.get_function_configuration(FunctionName="fp-1024mb")["Timeout"] == 600


def test_deploy_refuses_sizes_lambda_does_not_offer(aws) -> None:
    lam, role = aws
    with pytest.raises(ConfigError, match="memory_mb=20000"):
        deploy_functions(lam, base="fp", image_uri=IMAGE, role_arn=role, memory_sizes=[20000])


def test_cli_deploy_from_a_plan_prints_the_policy(aws, tmp_path) -> None:
    _, role = aws
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"stages": [
        {"start": 0, "end": 3, "memory_mb": 1536},
        {"start": 3, "end": 6, "replicas": 2, "memory_mb": 3008},
    ], "micro_batches": 4}))  # fmt: skip
    out = CliRunner().invoke(cli, [
        "deploy", "--storage", "s3://my-bucket/runs", "--image-uri", IMAGE, "--role-arn", role,
        "--name", "demo", "--plan", str(plan), "--timeout", "600",
    ])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "created  demo-1536mb" in out.output and "created  demo-3008mb" in out.output
    policy = json.loads(out.output.split("execution role:\n", 1)[1])
    assert policy == iam_policy("my-bucket", "runs", "demo")
    lam = boto3.client("lambda")
    assert lam.get_function_configuration(FunctionName="demo-3008mb")["Timeout"] == 600


def test_cli_deploy_policy_only_touches_nothing() -> None:
    out = CliRunner().invoke(cli, ["deploy", "--storage", "s3://b", "--policy-only"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.split("execution role:\n", 1)[1]) == iam_policy("b", "")


def test_iam_policy_is_scoped_to_the_jobs_of_one_prefix() -> None:
    statements = {s["Sid"]: s for s in iam_policy("bkt", "team/a/", "fp")["Statement"]}
    objects = statements["FuncPipeJobObjects"]
    assert sorted(objects["Action"]) == [
        "s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject",
    ]  # fmt: skip
    assert objects["Resource"] == "arn:aws:s3:::bkt/team/a/jobs/*"
    data = statements["FuncPipeDataSets"]
    assert data["Action"] == "s3:GetObject"
    assert data["Resource"] == "arn:aws:s3:::bkt/team/a/datasets/*"
    listing = statements["FuncPipeJobListing"]
    assert listing["Action"] == "s3:ListBucket" and listing["Resource"] == "arn:aws:s3:::bkt"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["team/a/jobs/*"]}}
    assert statements["FuncPipeLogs"]["Resource"].endswith("log-group:/aws/lambda/fp-*")
    assert not any(s.get("Resource") == "*" for s in statements.values())


# --- the platform -------------------------------------------------------------------------------


def _payload(tmp_path, stage=0, replica=0, generation=0, **extra) -> bytes:
    pkg = {
        "job_id": "job1",
        "storage_url": f"local://{tmp_path}/store",
        "plan": {"stages": [{"start": 0, "end": 2, "replicas": 2}]},
        "stage": stage,
        "replica": replica,
        "generation": generation,
        "code": {"layers": {"pickle": "UA=="}},
        **extra,
    }
    return json.dumps(pkg).encode()


def _shared(tmp_path):
    return open_storage(f"local://{tmp_path}/store/jobs/job1")


def _deployed(aws, memory=1024, timeout=900) -> None:
    lam, role = aws
    deploy_functions(
        lam, base="fp", image_uri=IMAGE, role_arn=role, memory_sizes=[memory], timeout_s=timeout
    )


def _record(tmp_path, state, stage=0, replica=0, **fields) -> None:
    now = time.time()
    rec = {"state": state, "attempt": "a", "started_at": now, "heartbeat_at": now, **fields}
    key = control.ControlKeys(0, stage, replica).status
    _shared(tmp_path).put(key, json.dumps(rec).encode())


def test_start_needs_the_function_of_that_memory_size(aws, tmp_path) -> None:
    _deployed(aws, memory=1024, timeout=300)
    plat = AwsLambdaPlatform("fp", local_storage_ok=True, poll_s=0)
    with pytest.raises(ConfigError, match="'fp-2048mb', which does not exist; run `funcpipe dep"):
        plat.start(FunctionSpec("stage0-replica0", 2048, 60), _payload(tmp_path))
    with pytest.raises(ConfigError, match="times out after 300 s"):
        plat.start(FunctionSpec("stage0-replica0", 1024, 600), _payload(tmp_path))


def test_every_function_is_one_asynchronous_invocation(aws, tmp_path) -> None:
    _deployed(aws)
    calls = []
    lam = boto3.client("lambda")
    lam.meta.events.register(
        "provide-client-params.lambda.Invoke", lambda params, **_: calls.append(dict(params))
    )
    plat = AwsLambdaPlatform("fp", client=lam, local_storage_ok=True, poll_s=0)
    inv = plat.start(FunctionSpec("stage0-replica1", 1024, 60), _payload(tmp_path, replica=1))
    assert [(c["FunctionName"], c["InvocationType"]) for c in calls] == [("fp-1024mb", "Event")]
    event = json.loads(calls[0]["Payload"])
    assert event["package"]["replica"] == 1 and event["control"]["heartbeat_s"] == 10.0
    assert plat.state(inv).status is Status.RUNNING  # no record yet
    _record(tmp_path, "started", replica=1, peak_mb=300.0)
    assert plat.state(inv).status is Status.RUNNING
    _record(tmp_path, "done", replica=1, billed_ms=1234)
    state = plat.state(inv)
    assert state.status is Status.SUCCEEDED and plat.billed_ms(inv) == 1234
    plat.close()


def test_failures_come_from_the_records(aws, tmp_path) -> None:
    _deployed(aws)
    plat = AwsLambdaPlatform(
        "fp", local_storage_ok=True, poll_s=0, heartbeat_s=0.1, heartbeat_timeout_s=0.5
    )
    spec = FunctionSpec("stage0-replica0", 1024, 60)

    inv = plat.start(spec, _payload(tmp_path, generation=0))
    _record(tmp_path, "failed", reason="error", error="Traceback ...\nValueError: shapes")
    st = plat.state(inv)
    assert (st.status, st.reason) == (Status.FAILED, "error")
    assert "'stage0-replica0' raised" in st.message and "ValueError: shapes" in st.message
    assert not st.transient

    inv = plat.start(FunctionSpec("stage0-replica2", 1024, 60), _payload(tmp_path, replica=2))
    _record(tmp_path, "failed", replica=2, reason="error", error="...", transient=True)
    assert plat.state(inv).transient  # as the function's guard judged its exception

    inv = plat.start(FunctionSpec("stage0-replica1", 1024, 60), _payload(tmp_path, replica=1))
    _record(tmp_path, "running", replica=1, heartbeat_at=time.time() - 5, peak_mb=200.0)
    st = plat.state(inv)
    assert (st.status, st.reason) == (Status.FAILED, "crash")
    assert "no heartbeat" in st.message and "/aws/lambda/fp-1024mb" in st.message


def test_silence_near_the_cap_is_reported_as_memory(aws, tmp_path) -> None:
    _deployed(aws)
    plat = AwsLambdaPlatform(
        "fp", local_storage_ok=True, poll_s=0, heartbeat_s=0.1, heartbeat_timeout_s=0.5
    )
    inv = plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path))
    _record(tmp_path, "running", heartbeat_at=time.time() - 5, peak_mb=1010.0)
    st = plat.state(inv)
    assert (st.status, st.reason) == (Status.FAILED, "memory")
    assert "1010.0 MB of its 1024 MB" in st.message


def test_timeouts_never_started_and_ran_too_long(aws, tmp_path) -> None:
    _deployed(aws)
    plat = AwsLambdaPlatform("fp", local_storage_ok=True, poll_s=0, start_timeout_s=0.2)
    inv = plat.start(FunctionSpec("stage0-replica0", 1024, 1), _payload(tmp_path))
    assert plat.state(inv).status is Status.RUNNING
    st = plat.join(inv, 5)
    assert (st.status, st.reason) == (Status.FAILED, "crash") and "did not start" in st.message

    plat = AwsLambdaPlatform("fp", local_storage_ok=True, poll_s=0)
    inv = plat.start(FunctionSpec("stage0-replica1", 1024, 1), _payload(tmp_path, replica=1))
    _record(tmp_path, "running", replica=1, started_at=time.time() - 40)
    st = plat.state(inv)
    assert (st.status, st.reason) == (Status.FAILED, "timeout")
    assert "timeout of 1 s" in st.message


def test_cancel_writes_the_abort_key(aws, tmp_path) -> None:
    _deployed(aws)
    plat = AwsLambdaPlatform("fp", local_storage_ok=True, poll_s=0)
    inv = plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path))
    plat.cancel(inv)
    plat.cancel(inv)  # twice: nothing more
    assert _shared(tmp_path).exists(control.ControlKeys(0, 0, 0).abort)
    assert plat.state(inv).status is Status.CANCELLED
    other = plat.start(FunctionSpec("stage0-replica1", 1024, 60), _payload(tmp_path, replica=1))
    plat.close()  # aborts what still runs
    assert _shared(tmp_path).exists(control.ControlKeys(0, 0, 1).abort)
    assert plat.state(other).status is Status.CANCELLED


def test_a_claimed_generation_is_not_invoked_again(aws, tmp_path) -> None:
    _deployed(aws)
    _shared(tmp_path).put(control.ControlKeys(3, 0, 0).claim, b"{}")
    plat = AwsLambdaPlatform("fp", local_storage_ok=True, poll_s=0)
    with pytest.raises(ConfigError, match="already ran in job 'job1'; a relaunch needs a new"):
        plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path, generation=3))


def test_payload_over_the_limit(aws, tmp_path) -> None:
    _deployed(aws)
    plat = AwsLambdaPlatform("fp", local_storage_ok=True, poll_s=0)
    big_data = {"layers": {"pickle": "UA==", "tensors": "A" * 400_000}}
    inv = plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path, code=big_data))
    assert inv.name == "stage0-replica0"  # the tensors went to storage
    assert _shared(tmp_path).list("control/payload/")
    big_code = {"layers": {"pickle": "P" * 300_000}}
    with pytest.raises(ConfigError, match=r"over the platform's limit of 262144 bytes"):
        plat.start(
            FunctionSpec("stage0-replica1", 1024, 60), _payload(tmp_path, replica=1, code=big_code)
        )


def test_storage_on_this_machine_is_refused(aws, tmp_path) -> None:
    _deployed(aws)
    plat = AwsLambdaPlatform("fp", poll_s=0)
    with pytest.raises(ConfigError, match="on this machine, which functions on AWS Lambda cannot"):
        plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path))
