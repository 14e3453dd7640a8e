"""Invocation payloads that fit the platform's limit: their largest data parts go to storage.

A Lambda's asynchronous event holds at most 256 KiB. A package over the limit has its largest
data fields (safetensors bytes, JSON) moved to ``control/payload/{sha256}`` in the job's storage
and replaced by a reference with the part's checksum; the function puts them back before it runs.
The payload's pickled code never leaves the payload, because nothing read from storage is ever
unpickled: when it alone is too big, the error says so and how to shrink it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from funcpipe.errors import ConfigError, StorageError
from funcpipe.storage.base import Storage

__all__ = ["OFFLOAD_MARK", "PICKLED_FIELDS", "fit_payload", "restore_payload"]

#: Payload fields that hold cloudpickle bytes: they stay in the payload, whatever its size.
PICKLED_FIELDS = frozenset({"pickle"})
#: Smallest field worth moving to storage (a request costs more than a few bytes of payload).
MIN_OFFLOAD_BYTES = 1024
OFFLOAD_MARK = "$funcpipe-storage"


def _big_fields(node: Any, path: tuple) -> list[tuple[int, tuple]]:
    """(size, path) of every string field that may travel through storage instead."""
    out: list[tuple[int, tuple]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in PICKLED_FIELDS:
                continue
            if isinstance(v, str) and len(v) >= MIN_OFFLOAD_BYTES:
                out.append((len(v), (*path, k)))
            else:
                out.extend(_big_fields(v, (*path, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_big_fields(v, (*path, i)))
    return out


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def fit_payload(package: dict[str, Any], shared: Storage, max_bytes: int, *, what: str) -> bytes:
    """The invocation event for ``package``, at most ``max_bytes``, largest data in storage.

    ``shared`` is the job's storage. Pickled code is never moved: when it alone is too big the
    error says so and how to shrink it.
    """
    event = {"funcpipe": 1, "package": json.loads(json.dumps(package))}
    body = _encode(event)
    if len(body) <= max_bytes:
        return body
    for _size, path in sorted(_big_fields(event["package"], ()), reverse=True):
        parent = event["package"]
        for part in path[:-1]:
            parent = parent[part]
        text = parent[path[-1]].encode()
        digest = hashlib.sha256(text).hexdigest()
        key = f"control/payload/{digest}"
        shared.put(key, text)
        parent[path[-1]] = {OFFLOAD_MARK: key, "sha256": digest}
        body = _encode(event)
        if len(body) <= max_bytes:
            return body
    pickled = sum(len(v) for v in _pickled_values(event["package"]))
    raise ConfigError(
        f"{what}: its invocation payload is {len(body)} bytes, over the platform's limit of "
        f"{max_bytes} bytes, and {pickled} bytes of it are pickled code, which must travel "
        "inside the payload (nothing read from storage is unpickled). Pass the layers, loss and "
        "optimizer as import references instead (funcpipe.runtime.package.code_ref("
        "'package.module:attr'), with the package installed in the function's image), or define "
        "fewer or smaller objects in your script"
    )


def _pickled_values(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [v for k, v in node.items() if k in PICKLED_FIELDS and isinstance(v, str)]
        for k, v in node.items():
            if k not in PICKLED_FIELDS:
                out.extend(_pickled_values(v))
        return out
    if isinstance(node, list):
        return [x for v in node for x in _pickled_values(v)]
    return []


def restore_payload(node: Any, shared: Storage) -> Any:
    """Put the fields :func:`fit_payload` moved to storage back (checked by their SHA-256)."""
    if isinstance(node, dict):
        if set(node) == {OFFLOAD_MARK, "sha256"}:
            data = shared.get(node[OFFLOAD_MARK])
            if hashlib.sha256(data).hexdigest() != node["sha256"]:
                raise StorageError(
                    f"payload part {node[OFFLOAD_MARK]!r} in storage does not match its checksum"
                )
            return data.decode()
        return {k: restore_payload(v, shared) for k, v in node.items()}
    if isinstance(node, list):
        return [restore_payload(v, shared) for v in node]
    return node
