"""Storage in this process's memory: for tests and benchmarks that run every function as a thread.

Objects are immutable bytes in a dict, so a get hands out the stored object without copying,
and ``wait`` sleeps on a condition variable that every put signals instead of polling.
"""

from __future__ import annotations

import threading
import time

from funcpipe.errors import ConfigError, KeyNotFound, StorageTimeout
from funcpipe.storage.base import BytesLike, Storage, validate_key, validate_prefix

__all__ = ["MemoryStorage"]


class MemoryStorage(Storage):
    """A thread-safe dict of bytes; visible only inside this process."""

    shared_across_processes = False

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._changed = threading.Condition()

    def __repr__(self) -> str:
        return f"MemoryStorage({len(self._objects)} objects)"

    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        validate_key(key)
        value = bytes(data)  # no copy for bytes; views are copied so later writes can't leak in
        with self._changed:
            if not overwrite and key in self._objects:
                raise self._exists_error(key, "in memory storage")
            self._objects[key] = value
            self._changed.notify_all()

    def get(self, key: str) -> bytes:
        try:
            return self._objects[validate_key(key)]
        except KeyError:
            raise KeyNotFound(f"storage key {key!r} not found in memory storage") from None

    def exists(self, key: str) -> bool:
        return validate_key(key) in self._objects

    def delete(self, key: str) -> None:
        with self._changed:
            self._objects.pop(validate_key(key), None)

    def list(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        with self._changed:
            return sorted(k for k in self._objects if k.startswith(prefix))

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        with self._changed:
            keys = [k for k in self._objects if k.startswith(prefix)]
            for k in keys:
                del self._objects[k]
        return len(keys)

    def wait(self, key: str, timeout: float, *, delete: bool = False) -> bytes:
        validate_key(key)
        if timeout < 0:
            raise ConfigError(f"wait timeout must be >= 0 seconds, got {timeout}")
        deadline = time.monotonic() + timeout
        with self._changed:
            while key not in self._objects:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageTimeout(
                        f"timed out after {timeout:g} s waiting for storage key {key!r}"
                    )
                self._changed.wait(remaining)
            return self._objects.pop(key) if delete else self._objects[key]
