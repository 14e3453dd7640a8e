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
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlparse

from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.storage.base import BytesLike, Storage, validate_key, validate_prefix
from funcpipe.storage.faults import FaultInjector
from funcpipe.storage.retry import RetryPolicy, Transient

try:
    import boto3
    import botocore.loaders
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        NoCredentialsError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from urllib3.exceptions import HTTPError as Urllib3Error
except ImportError as exc:  # open_storage turns this into an install hint
    raise ImportError("the 'boto3' package is required for s3:// storage") from exc

__all__ = ["S3Options", "S3Storage", "from_url"]

#: DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000
#: ListObjectsV2 returns at most this many keys per page.
LIST_PAGE = 1000

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
#: Without s3:ListBucket, S3 answers a GET or HEAD of a missing key with 403, not 404.
_DENIED = {"AccessDenied", "403", "Forbidden"}
#: Error codes S3 documents as worth retrying (besides any HTTP 5xx).
_RETRYABLE_CODES = {
    "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "OperationAborted",
    "ConditionalRequestConflict",  # 409: another conditional write of the key is in flight
}  # fmt: skip
#: Failures of the connection itself (refused, reset, timed out, closed mid-body).
_NETWORK_ERRORS = (BotoConnectionError, HTTPClientError, Urllib3Error, OSError)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Parsed service descriptions, shared by every client: read-only data, so safe across threads
# and inherited by forked children already warm (a fresh one costs ~0.1 s per client).
_LOADER = botocore.loaders.create_loader()


class BucketMissing(ConfigError):
    """The storage URL names a bucket that does not exist."""


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


class S3Storage(Storage):
    """Objects under ``prefix/`` in one bucket; keys map one to one onto object keys."""

    def __init__(self, options: S3Options, retry: RetryPolicy | None = None) -> None:
        self.options = options
        self.description = options.describe()
        self.poll_max_s = options.poll_max_s
        self.retry = retry or RetryPolicy(max_attempts=options.max_attempts)
        #: Set once S3 answered a GET/HEAD with 403: then a missing key and a key this role may
        #: not read look alike, and "not found" messages say so.
        self.saw_denied = False
        self._root = options.prefix + "/" if options.prefix else ""
        self._pid: int | None = None
        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._pool_obj: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None
        self._check_bucket()

    def configure_requests(
        self, retry: RetryPolicy | None = None, faults: FaultInjector | None = None
    ) -> None:
        """As Storage's, and each attempt's socket timeouts stay within the new deadline."""
        super().configure_requests(retry, faults)
        self._client_obj = None  # the next request makes a client with the new timeouts

    def __repr__(self) -> str:
        return f"S3Storage({self.description!r})"

    # -- client ---------------------------------------------------------------------------
    @property
    def _client(self) -> Any:
        """This process's client; a forked child makes a fresh one instead of sharing sockets."""
        pid = os.getpid()
        if self._client_obj is None or self._pid != pid:
            # A fork copies the lock as it was; a fresh one per process cannot be held already.
            if self._pid != pid:
                self._client_lock = threading.Lock()
            with self._client_lock:  # the lanes' threads may all ask at once after a fork
                if self._client_obj is None or self._pid != pid:
                    self._client_obj = self._make_client()
                    self._pid = pid
        return self._client_obj

    def _make_client(self) -> Any:
        o = self.options
        s3_conf = {"addressing_style": o.addressing_style} if o.addressing_style else {}
        attempt = self.retry.attempt_timeout_s
        config = Config(
            region_name=o.region,
            max_pool_connections=o.max_pool_connections,
            connect_timeout=min(o.connect_timeout_s, attempt),
            read_timeout=min(o.read_timeout_s, attempt),
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

    def _call(
        self,
        what: str,
        key: str,
        fn_name: str,
        *,
        then: Any = None,
        create: BytesLike | None = None,
        **kwargs: Any,
    ) -> Any:
        """One S3 request, retried on throttling, 5xx and network failures.

        ``then(response)`` runs inside the attempt (e.g. reading a body), so a connection that
        breaks mid-body is retried too. ``create``: the request is the conditional write
        (``IfNoneMatch="*"``) of these bytes, a create-only put (see Storage._create).
        """

        def attempt() -> Any:
            try:
                resp = getattr(self._client, fn_name)(**kwargs)
                return then(resp) if then is not None else resp
            except ClientError as exc:
                err = exc.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                if code in _RETRYABLE_CODES or status >= 500:
                    raise Transient(f"{code or status}: {err.get('Message', exc)}") from exc
                if create is not None and code == "PreconditionFailed":
                    raise self._exists_error(key, f"on {self.description}") from None
                raise
            except NoCredentialsError:
                raise
            except _NETWORK_ERRORS as exc:
                raise Transient(f"{type(exc).__name__}: {exc}") from exc

        where = f"S3 {what} of {key!r} on {self.description}"
        try:
            if create is None:
                return self._request(where, attempt)
            self._create(where, key, create, attempt)
            return None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise self._no_bucket_error() from exc
            if code == "PreconditionFailed":
                raise _Changed(key) from exc
            if code in _MISSING_KEY:
                raise KeyNotFound(self._not_found(key)) from exc
            if code in _DENIED and fn_name in ("get_object", "head_object"):
                self.saw_denied = True
                raise KeyNotFound(self._not_found(key)) from exc
            raise StorageError(f"S3 {what} of {key!r} on {self.description} failed: {exc}") from exc
        except NoCredentialsError as exc:
            raise _no_credentials_error(self.description) from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {what} of {key!r} on {self.description} failed: {exc}") from exc

    def _not_found(self, key: str) -> str:
        message = f"storage key {key!r} not found on {self.description}"
        if self.saw_denied:
            message += (
                " (S3 answers 403 AccessDenied for a missing key when the role lacks "
                "s3:ListBucket, and also when it lacks s3:GetObject: check the role's policy if "
                "the key should be there; docs/storage.md lists the actions)"
            )
        return message

    def _no_bucket_error(self) -> BucketMissing:
        o = self.options
        endpoint = f" --endpoint-url {o.endpoint_url}" if o.endpoint_url else ""
        return BucketMissing(
            f"S3 bucket {o.bucket!r} does not exist on {self.description}; create it "
            f"(e.g. 'aws s3 mb s3://{o.bucket}{endpoint}') or, for tests and local servers, "
            "add create_bucket=true to the storage URL"
        )

    def _check_bucket(self) -> None:
        """Fail at open time, not at the first wait: a HEAD on a missing bucket looks like a
        missing key, so a wait would otherwise run into its timeout."""
        o = self.options
        try:
            self._call("HEAD-BUCKET", o.bucket, "head_bucket", Bucket=o.bucket)
            return
        except (BucketMissing, KeyNotFound):
            pass  # the bucket is missing: create it below, or say how to
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _code(cause) in _DENIED:
                # 403: the bucket exists, but a least-privilege role (s3:ListBucket only under
                # its prefix) may not HEAD it; the objects themselves are what it needs.
                return
            raise StorageError(
                f"cannot reach S3 bucket {o.bucket!r} on {self.description}: {exc}"
            ) from exc
        if not o.create_bucket:
            raise self._no_bucket_error()
        kwargs: dict[str, Any] = {"Bucket": o.bucket}
        region = o.region or self._client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._call("CREATE-BUCKET", o.bucket, "create_bucket", **kwargs)
        except StorageError as exc:
            cause = exc.__cause__
            code = ""
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code", ""))
            if code != "BucketAlreadyOwnedByYou":  # another process won the race: fine
                raise StorageError(
                    f"cannot create S3 bucket {o.bucket!r} on {self.description}: {exc}"
                ) from exc

    # -- Storage --------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self._root + validate_key(key)

    @property
    def _part(self) -> int:
        """Bytes per ranged GET (at least 1 MiB)."""
        return max(1 << 20, int(self.options.part_mb * (1 << 20)))

    @property
    def _upload_part(self) -> int:
        """Bytes per uploaded part: S3 refuses parts under 5 MiB (but the last)."""
        return max(5 << 20, self._part)

    def _pool(self) -> ThreadPoolExecutor:
        """This process's part threads (made after a fork, like the client)."""
        pid = os.getpid()
        with self._client_lock:
            if self._pool_obj is None or self._pool_pid != pid:
                self._pool_obj = ThreadPoolExecutor(self.options.threads, "funcpipe-s3-part")
                self._pool_pid = pid
        return self._pool_obj

    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        view = memoryview(data).cast("B")
        if self.options.threads > 1 and view.nbytes > 2 * self._upload_part:
            self._put_parts(key, view, overwrite)
            return
        body = data if isinstance(data, bytes) else view.tobytes()
        where: dict[str, Any] = {"Bucket": self.options.bucket, "Key": self._key(key), "Body": body}
        if overwrite:
            self._call("PUT", key, "put_object", **where)
        else:
            self._call("PUT", key, "put_object", create=body, IfNoneMatch="*", **where)

    def _put_parts(self, key: str, view: memoryview, overwrite: bool = True) -> None:
        """Multipart upload, parts in parallel; the object appears whole at the completion
        (which is the conditional write of a create-only put)."""
        where: dict[str, Any] = {"Bucket": self.options.bucket, "Key": self._key(key)}
        upload = self._call("PUT", key, "create_multipart_upload", **where)["UploadId"]
        part = self._upload_part

        def send(i: int) -> dict[str, Any]:
            body = view[i * part : (i + 1) * part].tobytes()
            resp = self._call(
                "PUT", key, "upload_part", UploadId=upload, PartNumber=i + 1, Body=body, **where
            )
            return {"PartNumber": i + 1, "ETag": resp["ETag"]}

        count = -(-view.nbytes // part)
        self._extra_requests("puts", count + 1)  # create, parts, complete: one put is billed
        complete: dict[str, Any] = {} if overwrite else {"create": view, "IfNoneMatch": "*"}
        try:
            parts = list(self._pool().map(send, range(count)))
            self._call(
                "PUT", key, "complete_multipart_upload", UploadId=upload,
                MultipartUpload={"Parts": parts}, **complete, **where,
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: a lifecycle rule catches the rest
                self._client.abort_multipart_upload(UploadId=upload, **where)
            raise

    def get(self, key: str) -> bytes:
        if self.options.threads > 1:
            return self._get_parts(key)
        return self._call(
            "GET", key, "get_object", then=_read_body, Bucket=self.options.bucket,
            Key=self._key(key),
        )  # fmt: skip

    def _get_parts(self, key: str) -> bytes:
        """Ranged GETs in parallel: the first tells the size and version (ETag), the rest
        require that same version (If-Match), so a rewrite in between restarts the read instead
        of mixing two versions. An object rewritten under every try is read in one GET."""
        where: dict[str, Any] = {"Bucket": self.options.bucket, "Key": self._key(key)}
        part = self._part
        for _ in range(2):
            try:
                head, total, etag = self._call(
                    "GET", key, "get_object", then=_read_ranged, Range=f"bytes=0-{part - 1}",
                    **where,
                )  # fmt: skip
            except StorageError as exc:
                cause = exc.__cause__
                if isinstance(cause, ClientError) and "InvalidRange" in str(cause):
                    break  # an empty object has no byte 0 to range over
                raise
            if total <= len(head):
                return head
            buf = bytearray(total)
            buf[: len(head)] = head
            self._extra_requests("gets", len(range(len(head), total, part)))
            fetch = functools.partial(self._fetch_range, key, where, etag, buf, part)
            try:
                list(self._pool().map(fetch, range(len(head), total, part)))
            except _Changed:
                continue  # rewritten while we read: read the new version
            return bytes(buf)
        return self._call("GET", key, "get_object", then=_read_body, **where)

    def _fetch_range(
        self, key: str, where: dict[str, Any], etag: str, buf: bytearray, part: int, offset: int
    ) -> None:
        end = min(len(buf), offset + part) - 1
        chunk = self._call(
            "GET", key, "get_object", then=_read_body, Range=f"bytes={offset}-{end}",
            IfMatch=etag, **where,
        )  # fmt: skip
        buf[offset : offset + len(chunk)] = chunk

    def exists(self, key: str) -> bool:
        try:
            self._call("HEAD", key, "head_object", Bucket=self.options.bucket, Key=self._key(key))
        except KeyNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("DELETE", key, "delete_object", Bucket=self.options.bucket, Key=self._key(key))

    def _list_full(self, prefix: str) -> list[str]:
        full = self._root + validate_prefix(prefix)
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self.options.bucket,
                "Prefix": full,
                "MaxKeys": LIST_PAGE,
            }
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call("LIST", prefix, "list_objects_v2", **kwargs)
            keys.extend(obj["Key"] for obj in resp.get("Contents", ()))
            if not resp.get("IsTruncated"):
                return sorted(keys)
            token = resp["NextContinuationToken"]

    def list(self, prefix: str) -> list[str]:
        cut = len(self._root)
        return [k[cut:] for k in self._list_full(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        keys = self._list_full(prefix)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            resp = self._call(
                "DELETE-MANY",
                prefix,
                "delete_objects",
                Bucket=self.options.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StorageError(
                    f"S3 could not delete {len(resp['Errors'])} keys under {prefix!r} on "
                    f"{self.description}, e.g. {first.get('Key')!r}: {first.get('Message')}"
                )
        return len(keys)

    def close(self) -> None:
        if self._pool_obj is not None and self._pool_pid == os.getpid():
            self._pool_obj.shutdown(wait=False)
        self._pool_obj = None
        if self._client_obj is not None and self._pid == os.getpid():
            self._client_obj.close()
        self._client_obj = None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _Changed(StorageError):
    """The object was rewritten between two ranged GETs of one read."""


def _read_body(resp: dict[str, Any]) -> bytes:
    with resp["Body"] as body:
        return body.read()


def _read_ranged(resp: dict[str, Any]) -> tuple[bytes, int, str]:
    """Body, total object size (from Content-Range) and ETag of a ranged GET."""
    data = _read_body(resp)
    total = int(str(resp.get("ContentRange", "")).rpartition("/")[2] or len(data))
    return data, total, resp["ETag"]


def _no_credentials_error(where: str) -> ConfigError:
    return ConfigError(
        f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a config file, or run with an instance role "
        "(credentials never go in the storage URL)"
    )


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


def from_url(url: str, **options: object) -> S3Storage:
    """'s3://bucket[/prefix][?endpoint_url=http://host:port&region=...&create_bucket=true]'.

    Keyword options take the same names as the query (they win over it). Other options:
    addressing_style ('path' or 'virtual'), max_pool_connections, connect_timeout_s,
    read_timeout_s (each attempt's, capped by the request deadline), max_attempts (per request,
    FuncPipe's retries), poll_max_s (longest pause between two polls of a wait), part_mb and
    parallel_parts (objects above two parts move as parallel parts; 1 = never).
    """
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
    return S3Storage(S3Options(**kwargs))
