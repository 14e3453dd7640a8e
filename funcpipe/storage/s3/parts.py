"""Large objects in parts on parallel threads: S3 serves each connection at a limited rate, so
parts in parallel add up.

A multipart upload shows nothing until its completion, which makes the whole object appear at
once (and is the conditional write of a create-only put). A read's ranged GETs all require the
version the first one saw, so a rewrite in between restarts the read instead of mixing two.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from funcpipe.errors import StorageError
from funcpipe.storage.s3.config import S3Options
from funcpipe.storage.s3.errors import Changed

if TYPE_CHECKING:
    from funcpipe.storage.s3.store import S3Storage

__all__ = ["get_parts", "part_size", "put_parts", "read_body", "upload_part_size"]


def part_size(options: S3Options) -> int:
    """Bytes per ranged GET (at least 1 MiB)."""
    return max(1 << 20, int(options.part_mb * (1 << 20)))


def upload_part_size(options: S3Options) -> int:
    """Bytes per uploaded part: S3 refuses parts under 5 MiB (but the last)."""
    return max(5 << 20, part_size(options))


def read_body(resp: dict[str, Any]) -> bytes:
    with resp["Body"] as body:
        return body.read()


def _read_ranged(resp: dict[str, Any]) -> tuple[bytes, int, str]:
    """Body, total object size (from Content-Range) and ETag of a ranged GET."""
    data = read_body(resp)
    total = int(str(resp.get("ContentRange", "")).rpartition("/")[2] or len(data))
    return data, total, resp["ETag"]


def put_parts(store: S3Storage, key: str, view: memoryview, overwrite: bool = True) -> None:
    """Multipart upload, parts in parallel; the object appears whole at the completion
    (which is the conditional write of a create-only put)."""
    where: dict[str, Any] = {"Bucket": store.options.bucket, "Key": store._key(key)}
    upload = store._call("PUT", key, "create_multipart_upload", **where)["UploadId"]
    part = upload_part_size(store.options)

    def send(i: int) -> dict[str, Any]:
        body = view[i * part : (i + 1) * part].tobytes()
        resp = store._call(
            "PUT", key, "upload_part", UploadId=upload, PartNumber=i + 1, Body=body, **where
        )
        return {"PartNumber": i + 1, "ETag": resp["ETag"]}

    count = -(-view.nbytes // part)
    store._extra_requests("puts", count + 1)  # create, parts, complete: one put is billed
    complete: dict[str, Any] = {} if overwrite else {"create": view, "IfNoneMatch": "*"}
    try:
        parts = list(store._pool().map(send, range(count)))
        store._call(
            "PUT", key, "complete_multipart_upload", UploadId=upload,
            MultipartUpload={"Parts": parts}, **complete, **where,
        )  # fmt: skip
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: a lifecycle rule catches the rest
            store._client.abort_multipart_upload(UploadId=upload, **where)
        raise


def get_parts(store: S3Storage, key: str) -> bytes:
    """Ranged GETs in parallel: the first tells the size and version (ETag), the rest
    require that same version (If-Match), so a rewrite in between restarts the read instead
    of mixing two versions. An object rewritten under every try is read in one GET."""
    where: dict[str, Any] = {"Bucket": store.options.bucket, "Key": store._key(key)}
    part = part_size(store.options)
    for _ in range(2):
        try:
            head, total, etag = store._call(
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
        store._extra_requests("gets", len(range(len(head), total, part)))
        fetch = functools.partial(_fetch_range, store, key, where, etag, buf, part)
        try:
            list(store._pool().map(fetch, range(len(head), total, part)))
        except Changed:
            continue  # rewritten while we read: read the new version
        return bytes(buf)
    return store._call("GET", key, "get_object", then=read_body, **where)


def _fetch_range(
    store: S3Storage,
    key: str,
    where: dict[str, Any],
    etag: str,
    buf: bytearray,
    part: int,
    offset: int,
) -> None:
    end = min(len(buf), offset + part) - 1
    chunk = store._call(
        "GET", key, "get_object", then=read_body, Range=f"bytes={offset}-{end}",
        IfMatch=etag, **where,
    )  # fmt: skip
    buf[offset : offset + len(chunk)] = chunk
