"""Storage on S3 or any S3-protocol server (MinIO, moto, Ceph): what real functions share.

One key is one object; PutObject replaces an object in one step, so readers see all or nothing.
A create-only put is a conditional write (``If-None-Match: *`` on PutObject, or on the completion
of a multipart upload), which S3 applies atomically since 2024; servers that ignore the header
(older MinIO or Ceph releases) would overwrite instead. moto's server (the tests') honours it,
checking and writing within one request, though not under a lock of its own.
``wait`` polls GET on that one key (never a listing: listings are slow, paid per call and may lag
behind writes). Credentials come only from boto3's standard provider chain, never from the URL,
and are never shown. Each process makes its own client on first use, so an instance copied into
a forked child does not share the parent's connections.

The modules: :mod:`~funcpipe.storage.s3.config` (URL options, client construction),
:mod:`~funcpipe.storage.s3.store` (the backend's object operations),
:mod:`~funcpipe.storage.s3.parts` (multipart uploads, parallel ranged reads) and
:mod:`~funcpipe.storage.s3.errors` (what is retried, what each failure means).
"""

from __future__ import annotations

try:  # checked once here, before the modules below import boto3 and botocore
    import boto3  # noqa: F401
except ImportError as exc:  # open_storage turns this into an install hint
    raise ImportError("the 'boto3' package is required for s3:// storage") from exc

from funcpipe.storage.s3.config import S3Options, parse_url
from funcpipe.storage.s3.errors import BucketMissing
from funcpipe.storage.s3.store import S3Storage

__all__ = ["BucketMissing", "S3Options", "S3Storage", "from_url"]


def from_url(url: str, **options: object) -> S3Storage:
    """'s3://bucket[/prefix][?endpoint_url=http://host:port&region=...&create_bucket=true]'.

    Keyword options take the same names as the query (they win over it). Other options:
    addressing_style ('path' or 'virtual'), max_pool_connections, connect_timeout_s,
    read_timeout_s (each attempt's, capped by the request deadline), max_attempts (per request,
    FuncPipe's retries), poll_max_s (longest pause between two polls of a wait), part_mb and
    parallel_parts (objects above two parts move as parallel parts; 1 = never).
    """
    return S3Storage(parse_url(url, **options))
