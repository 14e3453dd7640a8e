"""The S3 backend's object operations: one key is one object under ``prefix/`` in one bucket.

Every request goes through :meth:`S3Storage._call`, which retries it (see
:mod:`funcpipe.storage.s3.errors`) and names what failed. The client and the part threads are
made per process on first use, so a copy in a forked child never shares the parent's sockets.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from funcpipe.errors import KeyNotFound, StorageError
from funcpipe.storage.base import BytesLike, Storage, validate_key, validate_prefix
from funcpipe.storage.faults import FaultInjector
from funcpipe.storage.retry import RetryPolicy
from funcpipe.storage.s3.config import S3Options, make_client
from funcpipe.storage.s3.errors import (
    DENIED,
    MISSING_KEY,
    BucketMissing,
    Changed,
    code_of,
    failure,
    no_bucket_error,
    no_credentials_error,
    not_found,
    one_attempt,
)
from funcpipe.storage.s3.parts import get_parts, put_parts, read_body, upload_part_size

__all__ = ["DELETE_BATCH", "LIST_PAGE", "S3Storage"]

#: DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000
#: ListObjectsV2 returns at most this many keys per page.
LIST_PAGE = 1000


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
                    self._client_obj = make_client(self.options, self.retry.attempt_timeout_s)
                    self._pid = pid
        return self._client_obj

    def _pool(self) -> ThreadPoolExecutor:
        """This process's part threads (made after a fork, like the client)."""
        pid = os.getpid()
        with self._client_lock:
            if self._pool_obj is None or self._pool_pid != pid:
                self._pool_obj = ThreadPoolExecutor(self.options.threads, "funcpipe-s3-part")
                self._pool_pid = pid
        return self._pool_obj

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

        def send() -> Any:
            return getattr(self._client, fn_name)(**kwargs)

        def exists() -> Exception:
            return self._exists_error(key, f"on {self.description}")

        def attempt() -> Any:
            return one_attempt(send, then, exists if create is not None else None)

        where = f"S3 {what} of {key!r} on {self.description}"
        try:
            if create is None:
                return self._request(where, attempt)
            self._create(where, key, create, attempt)
            return None
        except ClientError as exc:
            code = code_of(exc)
            if code == "NoSuchBucket":
                raise self._no_bucket_error() from exc
            if code == "PreconditionFailed":
                raise Changed(key) from exc
            if code in MISSING_KEY:
                raise KeyNotFound(not_found(key, self.description, self.saw_denied)) from exc
            if code in DENIED and fn_name in ("get_object", "head_object"):
                self.saw_denied = True
                raise KeyNotFound(not_found(key, self.description, self.saw_denied)) from exc
            raise failure(what, key, self.description, exc) from exc
        except NoCredentialsError as exc:
            raise no_credentials_error(self.description) from exc
        except BotoCoreError as exc:
            raise failure(what, key, self.description, exc) from exc

    def _no_bucket_error(self) -> BucketMissing:
        return no_bucket_error(self.options.bucket, self.options.endpoint_url, self.description)

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
            if isinstance(cause, ClientError) and code_of(cause) in DENIED:
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
            code = code_of(cause) if isinstance(cause, ClientError) else ""
            if code != "BucketAlreadyOwnedByYou":  # another process won the race: fine
                raise StorageError(
                    f"cannot create S3 bucket {o.bucket!r} on {self.description}: {exc}"
                ) from exc

    # -- Storage --------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self._root + validate_key(key)

    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        view = memoryview(data).cast("B")
        if self.options.threads > 1 and view.nbytes > 2 * upload_part_size(self.options):
            put_parts(self, key, view, overwrite)
            return
        body = data if isinstance(data, bytes) else view.tobytes()
        where: dict[str, Any] = {"Bucket": self.options.bucket, "Key": self._key(key), "Body": body}
        if overwrite:
            self._call("PUT", key, "put_object", **where)
        else:
            self._call("PUT", key, "put_object", create=body, IfNoneMatch="*", **where)

    def get(self, key: str) -> bytes:
        if self.options.threads > 1:
            return get_parts(self, key)
        return self._call(
            "GET", key, "get_object", then=read_body, Bucket=self.options.bucket,
            Key=self._key(key),
        )  # fmt: skip

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
