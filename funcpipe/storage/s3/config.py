"""Where the objects live and how to reach them: the URL's options, checked before any request,
and the client they make.

Nothing here is secret: credentials come only from boto3's standard provider chain
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role), never from the URL,
so no option, description or message can show them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlparse

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config

from funcpipe.errors import ConfigError
from funcpipe.storage.base import validate_key

__all__ = ["S3Options", "make_client", "parse_url"]

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Parsed service descriptions, shared by every client: read-only data, so safe across threads
# and inherited by forked children already warm (a fresh one costs ~0.1 s per client).
_LOADER = botocore.loaders.create_loader()


@dataclass(frozen=True)
class S3Options:
    """Where the objects live and how to reach them; nothing secret, safe to show."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    create_bucket: bool = False
    addressing_style: str | None = None
    max_pool_connections: int = 32
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 8
    poll_max_s: float = 0.05
    #: Objects larger than two parts move as parts of this size on ``parallel_parts`` threads.
    part_mb: float = 8.0
    #: None: 8 on AWS (S3 serves each connection at a limited rate, parts in parallel add up),
    #: 1 (one request per object) on other servers, where it measured slower (docs/benchmarks.md).
    parallel_parts: int | None = None

    @property
    def threads(self) -> int:
        if self.parallel_parts is not None:
            return self.parallel_parts
        return 1 if self.endpoint_url else 8

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where


def make_client(options: S3Options, attempt_timeout_s: float) -> Any:
    """A client for ``options`` whose socket timeouts stay within one attempt's deadline.

    Credentials are boto3's to find (its standard chain); nothing here reads or shows them.
    """
    o = options
    s3_conf = {"addressing_style": o.addressing_style} if o.addressing_style else {}
    config = Config(
        region_name=o.region,
        max_pool_connections=o.max_pool_connections,
        connect_timeout=min(o.connect_timeout_s, attempt_timeout_s),
        read_timeout=min(o.read_timeout_s, attempt_timeout_s),
        # One attempt per call: FuncPipe's own retries (funcpipe.storage.retry) bound the
        # whole request by its deadline and see every attempt.
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3=s3_conf,
    )
    # A session per client: boto3's default session is not safe to share across threads.
    core = botocore.session.Session()
    core.register_component("data_loader", _LOADER)
    session = boto3.session.Session(botocore_session=core)
    return session.client("s3", endpoint_url=o.endpoint_url, config=config)


def _flag(name: str, value: object) -> bool:
    text = str(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"S3 storage option {name}={value!r} must be true or false")


_NUMBERS = {
    "max_pool_connections": int,
    "connect_timeout_s": float,
    "read_timeout_s": float,
    "max_attempts": int,
    "poll_max_s": float,
    "part_mb": float,
    "parallel_parts": int,
}


def parse_url(url: str, **options: object) -> S3Options:
    """The options of an 's3://bucket/prefix?...' URL and keywords (see
    :func:`funcpipe.storage.s3.from_url`); a bad one is a ConfigError that names the fix."""
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise ConfigError(f"S3 storage URL must start with 's3://', got {url!r}")
    if "@" in parsed.netloc:
        raise ConfigError(
            "S3 storage URL must not carry credentials; they come from boto3's standard chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role)"
        )
    bucket = parsed.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"invalid S3 bucket name {bucket!r} in {url.split('?')[0]!r}: use 3-63 lowercase "
            "letters, digits, '.' and '-', e.g. 's3://my-bucket/funcpipe'"
        )
    prefix = parsed.path.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except ConfigError as exc:
            raise ConfigError(f"invalid prefix in S3 storage URL: {exc}") from exc
    given: dict[str, object] = dict(parse_qsl(parsed.query, keep_blank_values=True))
    given.update(options)
    allowed = {"endpoint_url", "region", "create_bucket", "addressing_style", *_NUMBERS}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown S3 storage option(s) {unknown}; known: {sorted(allowed)} "
            "(credentials come from the environment, never the URL)"
        )
    kwargs: dict[str, Any] = {"bucket": bucket, "prefix": prefix}
    endpoint = given.get("endpoint_url")
    if endpoint is not None:
        endpoint = str(endpoint)
        ep = urlparse(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise ConfigError(
                f"S3 endpoint_url must look like 'http://127.0.0.1:9000', got {endpoint!r}"
            )
        if ep.username or ep.password:
            raise ConfigError("S3 endpoint_url must not carry credentials")
        kwargs["endpoint_url"] = endpoint
        # Local servers rarely resolve bucket subdomains: address buckets by path there.
        kwargs["addressing_style"] = "path"
    if "region" in given:
        kwargs["region"] = str(given["region"])
    if "create_bucket" in given:
        kwargs["create_bucket"] = _flag("create_bucket", given["create_bucket"])
    if "addressing_style" in given:
        style = str(given["addressing_style"])
        if style not in ("path", "virtual", "auto"):
            raise ConfigError(
                f"S3 addressing_style must be 'path', 'virtual' or 'auto', got {style!r}"
            )
        kwargs["addressing_style"] = style
    for name, kind in _NUMBERS.items():
        if name in given:
            try:
                value = kind(given[name])
            except (TypeError, ValueError):
                value = 0
            if not value > 0:
                raise ConfigError(
                    f"S3 option {name} must be a positive number, got {given[name]!r}"
                )
            kwargs[name] = value
    return S3Options(**kwargs)
