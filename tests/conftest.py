"""Storage servers shared by the whole suite: a private redis-server and an S3-protocol server.

Both run as subprocesses on free local ports, so functions forked by the runtime reach them by
URL like any client would. A server that cannot start fails the tests that need it, never skips.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(proc: subprocess.Popen, port: int, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
                proc.kill()
                pytest.fail(f"{what} did not start on port {port}\n{tail}")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free local port, for the whole test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; install it (Debian/Ubuntu: "
            "apt-get install -y redis-server) to run the Redis storage tests"
        )
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_for_port(proc, port, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@dataclass(frozen=True)
class S3Server:
    """A running S3-protocol server; ``log`` holds one line per HTTP request it served."""

    endpoint: str
    log: Path

    def url(self, bucket: str, prefix: str = "", **query: str) -> str:
        params = "".join(f"&{k}={v}" for k, v in query.items())
        path = f"/{prefix}" if prefix else ""
        return f"s3://{bucket}{path}?endpoint_url={self.endpoint}&region=us-east-1{params}"

    def new_bucket(self, prefix: str = "") -> str:
        """Create a fresh, empty bucket and return its URL (without create_bucket)."""
        from funcpipe.storage import open_storage

        bucket = f"fp-{uuid.uuid4().hex[:16]}"
        open_storage(self.url(bucket, create_bucket="true")).close()
        return self.url(bucket, prefix)


# Dummy credentials for the local server, isolated from any real AWS configuration.
_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "funcpipe-test-key",
    "AWS_SECRET_ACCESS_KEY": "funcpipe-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/funcpipe-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/funcpipe-test-aws-credentials",
}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in a subprocess on a free port, with dummy credentials in the env.

    The credentials are set in os.environ for the session so functions forked by the runtime
    inherit them, exactly as a real deployment passes them to boto3's provider chain.
    """
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"moto's S3 server is not installed ({exc}); run: pip install -e '.[dev]'")
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "requests.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(proc, port, "moto S3 server", log)
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
                mp.delenv(name, raising=False)
            for name, value in _S3_ENV.items():
                mp.setenv(name, value)
            yield S3Server(f"http://127.0.0.1:{port}", log)
    finally:
        _stop(proc)
