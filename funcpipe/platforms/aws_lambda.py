"""AWS Lambda: every function of a job is one asynchronous invocation of a deployed image.

`funcpipe deploy` creates one Lambda function per memory size a plan uses
(``NAME-{memory}mb``, from the image in deploy/aws-lambda/Dockerfile), because a Lambda's memory
is part of its configuration, not of an invocation. :class:`AwsLambdaPlatform` then invokes the
function of each FuncPipe function's size with ``InvocationType=Event`` and the package as the
event. An asynchronous invocation returns nothing, so the platform learns how each function is
doing from the control records the handler writes in the job's storage
(:mod:`funcpipe.platforms.control`): started, heartbeats, done, failed with its traceback, or no
heartbeat for too long (killed: out of memory or crashed). Cancel writes the function's abort key.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from funcpipe.errors import ConfigError, FuncPipeError
from funcpipe.platform_profiles import AWS_LAMBDA as AWS_LAMBDA_PROFILE
from funcpipe.platforms import control, failures, offload
from funcpipe.platforms.base import (
    FunctionSpec,
    Invocation,
    InvocationState,
    PlatformLimits,
    Reason,
    Status,
)
from funcpipe.platforms.polled import PolledPlatform, PolledRun

__all__ = [
    "MAX_ASYNC_PAYLOAD_BYTES",
    "AwsLambdaPlatform",
    "deploy_functions",
    "function_name",
    "iam_policy",
]

#: Lambda's limit on the event of an asynchronous invocation.
MAX_ASYNC_PAYLOAD_BYTES = 256 * 1024
#: How long the client waits for a started function's record beyond its timeout before it calls
#: the function timed out (the handler writes the time-out itself when it can).
TIMEOUT_GRACE_S = 30.0


def function_name(base: str, memory_mb: int) -> str:
    """The Lambda function that runs FuncPipe functions of ``memory_mb`` MB."""
    return f"{base}-{int(memory_mb)}mb"


@dataclass
class _Run(PolledRun):
    function: str = ""  # the Lambda function invoked
    record: dict[str, Any] | None = None  # the function's status record, once there is one


class AwsLambdaPlatform(PolledPlatform[_Run]):
    """Runs each function as an asynchronous invocation of ``{function_base}-{memory}mb``.

    ``client`` is a boto3 Lambda client (default: one from the standard provider chain, in
    ``region``). ``poll_s`` bounds how often a function's status record is read; a function that
    has not started after ``start_timeout_s`` or has sent no heartbeat for
    ``heartbeat_timeout_s`` is reported failed. Storage on this machine is refused (a Lambda
    cannot reach it) unless ``local_storage_ok`` (tests running the handler here).
    """

    limits: PlatformLimits = AWS_LAMBDA_PROFILE.limits
    timeout_grace_s = TIMEOUT_GRACE_S

    def __init__(
        self,
        function_base: str = "funcpipe",
        *,
        client: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        max_payload_bytes: int = MAX_ASYNC_PAYLOAD_BYTES,
        poll_s: float = 1.0,
        start_timeout_s: float = 300.0,
        heartbeat_s: float = 10.0,
        heartbeat_timeout_s: float = 60.0,
        abort_poll_s: float = 1.0,
        local_storage_ok: bool = False,
    ) -> None:
        if heartbeat_timeout_s <= heartbeat_s:
            raise ConfigError(
                f"heartbeat_timeout_s={heartbeat_timeout_s} must exceed heartbeat_s={heartbeat_s}"
            )
        super().__init__(poll_s=poll_s)
        self.function_base = function_base
        self.region, self.endpoint_url = region, endpoint_url
        self.max_payload_bytes = max_payload_bytes
        self.start_timeout_s = start_timeout_s
        self.heartbeat_s, self.heartbeat_timeout_s = heartbeat_s, heartbeat_timeout_s
        self.abort_poll_s = abort_poll_s
        self.local_storage_ok = local_storage_ok  # for running the handler on this machine
        self._client_obj = client
        self._checked: set[tuple[str, int, float]] = set()

    @classmethod
    def from_env(cls) -> AwsLambdaPlatform:
        """Functions named ``$FUNCPIPE_LAMBDA_FUNCTION-{memory}mb`` (default ``funcpipe``)."""
        return cls(os.environ.get("FUNCPIPE_LAMBDA_FUNCTION") or "funcpipe")

    # --- AWS --------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client_obj is None:
            import boto3

            self._client_obj = boto3.client(
                "lambda", region_name=self.region, endpoint_url=self.endpoint_url
            )
        return self._client_obj

    def _check_function(self, name: str, spec: FunctionSpec) -> None:
        """Refuse at once when the function is missing or configured for another size."""
        key = (name, spec.memory_mb, spec.timeout_s)
        if key in self._checked:
            return
        fix = (
            f"run `funcpipe deploy --name {self.function_base} --memory-mb {spec.memory_mb} "
            f"--timeout {int(spec.timeout_s + 0.999)} --image-uri ... --role-arn ...`"
        )
        try:
            conf = self.client.get_function_configuration(FunctionName=name)
        except self.client.exceptions.ResourceNotFoundException:
            raise ConfigError(
                f"function {spec.name!r} needs the Lambda function {name!r}, which does not "
                f"exist; {fix}"
            ) from None
        if conf.get("MemorySize") != spec.memory_mb:
            raise ConfigError(
                f"Lambda function {name!r} has {conf.get('MemorySize')} MB but function "
                f"{spec.name!r} needs {spec.memory_mb} MB; {fix}"
            )
        if conf.get("Timeout", 0) < spec.timeout_s:
            raise ConfigError(
                f"Lambda function {name!r} times out after {conf.get('Timeout')} s but function "
                f"{spec.name!r} may run {spec.timeout_s:g} s; {fix}"
            )
        self._checked.add(key)

    def _invoke(self, name: str, event: bytes, spec: FunctionSpec) -> None:
        """One asynchronous invocation (tests hook here to also run the handler locally)."""
        resp = self.client.invoke(FunctionName=name, InvocationType="Event", Payload=event)
        if resp.get("StatusCode") != 202:
            raise FuncPipeError(
                f"Lambda did not accept the asynchronous invocation of {name!r} "
                f"(status {resp.get('StatusCode')}); check the function in the Lambda console"
            )

    # --- Platform API -----------------------------------------------------------------------

    def start(self, spec: FunctionSpec, payload: bytes) -> Invocation:
        self._check_open()
        self.limits.check(spec)
        job = self._read_package(spec, payload)
        if not self.local_storage_ok:
            control.check_reachable(job.storage_url, "AWS Lambda")
        name = function_name(self.function_base, spec.memory_mb)
        self._check_function(name, spec)
        shared = self._storage(job.storage_url, job.job_id)
        keys = job.keys
        if shared.exists(keys.claim):
            raise ConfigError(
                f"function {spec.name!r}: generation {keys.generation} of stage {keys.stage} "
                f"replica {keys.replica} already ran in job {job.job_id!r}; a relaunch needs a "
                "new generation"
            )
        event = offload.fit_payload(
            job.package, shared, self.max_payload_bytes, what=f"function {spec.name!r}"
        )
        event = _with_control(event, self.heartbeat_s, self.abort_poll_s)
        inv = Invocation.new(spec)
        self._add(_Run(inv, shared, keys, time.time(), function=name))
        self._invoke(name, event, spec)
        return inv

    def billed_ms(self, inv: Invocation) -> int | None:
        """The function's billed duration as its handler measured it, once it has ended."""
        with self._lock:
            record = self._run(inv).record
        return None if record is None else record.get("billed_ms")

    # --- polling ----------------------------------------------------------------------------

    def _poll(self, run: _Run) -> None:
        run.record = control.read_status(run.shared, run.keys)

    def _classify(self, run: _Run, now: float) -> InvocationState:
        spec, rec, name = run.inv.spec, run.record, run.inv.name
        logs = f"its logs are in CloudWatch under /aws/lambda/{run.function}"
        if rec is None:
            if now - run.started_at > self.start_timeout_s:
                return InvocationState(
                    Status.FAILED,
                    Reason.CRASH,
                    f"function {name!r} did not start within {self.start_timeout_s:g} s of its "
                    f"invocation of {run.function!r}; {logs}",
                )
            return InvocationState(Status.RUNNING)
        peak = rec.get("peak_mb")
        state = rec.get("state")
        if state == "done":
            return InvocationState(Status.SUCCEEDED, peak_memory_mb=peak)
        if state == "cancelled":
            return failures.cancelled(spec, peak_mb=peak)
        if state == "failed":
            reason = rec.get("reason") or "error"
            error = rec.get("error") or ""
            if reason == Reason.TIMEOUT:
                return failures.timed_out(spec, peak_mb=peak)
            if reason == Reason.MEMORY:
                return failures.out_of_memory(spec, peak_mb=peak, detail=error)
            return failures.raised(spec, error, transient=bool(rec.get("transient")), peak_mb=peak)
        if self._overdue(run, now, since=float(rec.get("started_at", run.started_at))):
            return failures.timed_out(spec, peak_mb=peak, where_logs=logs)
        silent = now - float(rec.get("heartbeat_at", run.started_at))
        if silent > self.heartbeat_timeout_s:
            near_cap = peak is not None and peak >= 0.9 * spec.memory_mb
            if near_cap:
                return InvocationState(
                    Status.FAILED,
                    Reason.MEMORY,
                    f"function {name!r} stopped after reaching {peak} MB of its "
                    f"{spec.memory_mb} MB: it most likely ran out of memory; raise memory_mb; "
                    f"{logs}",
                    peak,
                )
            return InvocationState(
                Status.FAILED,
                Reason.CRASH,
                f"function {name!r} sent no heartbeat for {silent:.0f} s: it was killed or "
                f"crashed; {logs}",
                peak,
            )
        return InvocationState(Status.RUNNING, peak_memory_mb=peak)


def _with_control(event: bytes, heartbeat_s: float, abort_poll_s: float) -> bytes:
    """Tell the handler how often to beat and to look for the abort key."""
    data = json.loads(event)
    data["control"] = {"heartbeat_s": heartbeat_s, "abort_poll_s": abort_poll_s}
    return json.dumps(data, separators=(",", ":")).encode()


# --- deployment ----------------------------------------------------------------------------------


def deploy_functions(
    client: Any,
    *,
    base: str,
    image_uri: str,
    role_arn: str,
    memory_sizes: list[int],
    timeout_s: int = 900,
    architecture: str = "x86_64",
    ephemeral_mb: int = 512,
) -> list[tuple[str, str]]:
    """Create or update one image function per memory size; returns [(name, "created"|...)].

    Asynchronous retries are switched off (a retried FuncPipe function would only find its claim
    taken); the handler's claim makes a retry harmless anyway.
    """
    limits = AwsLambdaPlatform.limits
    if not memory_sizes:
        raise ConfigError("give at least one memory size (--memory-mb) or a plan (--plan)")
    if not 1 <= timeout_s <= limits.max_timeout_s:
        raise ConfigError(f"timeout {timeout_s} s must be in 1..{limits.max_timeout_s:g}")
    done = []
    for mb in sorted(set(memory_sizes)):
        limits.check(FunctionSpec("deploy", mb, timeout_s))
        name = function_name(base, mb)
        config = {
            "FunctionName": name,
            "Role": role_arn,
            "MemorySize": mb,
            "Timeout": timeout_s,
            "EphemeralStorage": {"Size": ephemeral_mb},
        }
        try:
            client.get_function(FunctionName=name)
            exists = True
        except client.exceptions.ResourceNotFoundException:
            exists = False
        if exists:
            client.update_function_code(FunctionName=name, ImageUri=image_uri)
            _wait(client, "function_updated_v2", name)
            client.update_function_configuration(**config)
            _wait(client, "function_updated_v2", name)
            done.append((name, "updated"))
        else:
            client.create_function(
                **config,
                PackageType="Image",
                Code={"ImageUri": image_uri},
                Architectures=[architecture],
                Description="FuncPipe function (pipelined training on serverless functions)",
            )
            _wait(client, "function_active_v2", name)
            done.append((name, "created"))
        client.put_function_event_invoke_config(
            FunctionName=name, MaximumRetryAttempts=0, MaximumEventAgeInSeconds=900
        )
    return done


def _wait(client: Any, waiter: str, name: str) -> None:
    try:
        client.get_waiter(waiter).wait(FunctionName=name)
    except ValueError:  # an older botocore without that waiter
        time.sleep(1)


def iam_policy(bucket: str, prefix: str = "", function_base: str = "funcpipe") -> dict[str, Any]:
    """Least privilege for the functions' execution role: the jobs' keys and their logs only."""
    root = f"{prefix.strip('/')}/jobs/" if prefix.strip("/") else "jobs/"
    data_root = f"{prefix.strip('/')}/datasets/" if prefix.strip("/") else "datasets/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "FuncPipeJobObjects",
                "Effect": "Allow",
                # AbortMultipartUpload: large objects move as parallel parts on AWS.
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                ],  # fmt: skip
                "Resource": f"arn:aws:s3:::{bucket}/{root}*",
            },
            {
                "Sid": "FuncPipeDataSets",  # read-only: `funcpipe data upload` writes them
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/{data_root}*",
            },
            {
                "Sid": "FuncPipeJobListing",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{root}*"]}},
            },
            {
                "Sid": "FuncPipeLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"arn:aws:logs:*:*:log-group:/aws/lambda/{function_base}-*",
            },
        ],
    }
