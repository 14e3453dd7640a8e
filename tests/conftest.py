"""Storage servers shared by the whole suite: a private redis-server and an S3-protocol server.

Both run as subprocesses on free local ports, so functions forked by the runtime reach them by
URL like any client would. A server that cannot start fails the tests that need it, never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import start_moto, start_redis, stop

from funcpipe.platforms.local import START_ENV

# Most tests start jobs whose functions' cold start is not what they test: they fork them from a
# warm server that imported torch once (LocalPlatform(start="forkserver")), which saves a few
# seconds of imports per function. The platform tests (tests/platforms/conftest.py), the
# equivalence test of both modes and every test that measures start-up or the runtime's own
# memory run fresh interpreters, the default for users. FUNCPIPE_LOCAL_START=fresh runs the
# whole suite on fresh interpreters.
os.environ.setdefault(START_ENV, "forkserver")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free local port, for the whole test session."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop(proc)


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
    proc, endpoint, log = start_moto(tmp_path_factory.mktemp("s3"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
                mp.delenv(name, raising=False)
            for name, value in _S3_ENV.items():
                mp.setenv(name, value)
            yield S3Server(endpoint, log)
    finally:
        stop(proc)
