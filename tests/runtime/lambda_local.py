"""An AWS Lambda platform whose invocations also run the handler here (for tests).

The control plane is moto's (``mock_aws``): it checks the deployed function and answers the
asynchronous invocation with 202 without running anything. Right after, this variant runs what
Lambda would run, the real handler on the real event: in a thread of this process
(``mode="thread"``) or in a fresh interpreter (``mode="subprocess"``,
``python -m funcpipe.platforms.lambda_handler``). ``retries`` runs every event that many more
times at once, as Lambda's automatic retries of an asynchronous invocation would.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import boto3
from moto import mock_aws

from funcpipe.platforms import lambda_handler
from funcpipe.platforms.aws_lambda import AwsLambdaPlatform, deploy_functions
from funcpipe.platforms.base import FunctionSpec

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/funcpipe:test"


@contextlib.contextmanager
def mocked_lambda(memory_sizes: list[int], base: str = "fp") -> Iterator[Any]:
    """moto's Lambda with FuncPipe's functions deployed; yields the Lambda client."""
    with mock_aws(config={"lambda": {"use_docker": False}}):
        iam = boto3.client("iam", region_name="us-east-1")
        trust = {"Version": "2012-10-17", "Statement": []}
        role = iam.create_role(RoleName=base, AssumeRolePolicyDocument=json.dumps(trust))
        client = boto3.client("lambda", region_name="us-east-1")
        deploy_functions(
            client,
            base=base,
            image_uri=IMAGE,
            role_arn=role["Role"]["Arn"],
            memory_sizes=memory_sizes,
            timeout_s=900,
        )
        yield client


def _stop_thread(thread_id: int) -> None:
    """Raise SystemExit in a handler thread: the in-process stand-in for ending the process."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(SystemExit)
    )


class LocalLambda(AwsLambdaPlatform):
    def __init__(self, client: Any, mode: str, *, retries: int = 0, **options: Any) -> None:
        options = {
            "local_storage_ok": True,
            "poll_s": 0.05,
            "heartbeat_s": 0.5,
            "abort_poll_s": 0.1,
            **options,
        }
        super().__init__("fp", client=client, **options)
        self.mode, self.retries = mode, retries
        self.results: list[dict[str, Any] | None] = []
        self.processes: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []

    def _invoke(self, name: str, event: bytes, spec: FunctionSpec) -> None:
        super()._invoke(name, event, spec)  # moto: 202, nothing runs
        for _ in range(1 + self.retries):
            if self.mode == "thread":
                self._in_thread(event, spec)
            else:
                self._in_subprocess(event, spec)

    def _in_thread(self, event: bytes, spec: FunctionSpec) -> None:
        def body() -> None:
            context = lambda_handler.LocalContext(spec.timeout_s, spec.memory_mb)
            ident = threading.get_ident()
            try:
                self.results.append(
                    lambda_handler.handle(
                        json.loads(event), context, stop=lambda _why: _stop_thread(ident)
                    )
                )
            except BaseException:  # recorded by the handler in the function's status
                self.results.append(None)

        thread = threading.Thread(target=body, name=f"lambda-{spec.name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _in_subprocess(self, event: bytes, spec: FunctionSpec) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "funcpipe.platforms.lambda_handler",
             "--timeout-s", str(spec.timeout_s), "--memory-mb", str(spec.memory_mb)],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(event)
        proc.stdin.close()
        self.processes.append(proc)

    def close(self) -> None:
        super().close()  # writes the abort key of anything still running
        for thread in self.threads:
            thread.join(30)
        for proc in self.processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
