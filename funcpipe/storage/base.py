"""The one storage interface every function talks through: a flat, byte-valued key space.

Functions cannot reach each other directly, so activations, gradients and flags all travel as
objects. The interface is deliberately the subset that S3, Redis and a local directory all
offer cheaply; blocking (:meth:`Storage.wait`) polls a single key, never a listing, because
listings are slow, paid per call and eventually consistent on object stores.
"""

from __future__ import annotations

import abc
import re
import time
from urllib.parse import urlsplit, urlunsplit

from funcpipe.errors import ConfigError, KeyNotFound, StorageTimeout

__all__ = ["POLL_MAX_S", "Storage", "validate_key", "validate_prefix"]

#: Longest pause between two polls of one key in :meth:`Storage.wait`.
POLL_MAX_S = 0.01
_POLL_MIN_S = 0.0005

_PART = re.compile(r"[A-Za-z0-9_.=+-]+")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid storage key, else raise ConfigError saying why."""
    if not isinstance(key, str):
        raise ConfigError(f"storage key must be a str, got {type(key).__name__}")
    problem = None
    if not key:
        problem = "it is empty"
    elif key.startswith("/"):
        problem = "it starts with '/'"
    elif len(key) > 900:
        problem = f"it is {len(key)} characters long (at most 900)"
    else:
        for part in key.split("/"):
            if not part:
                problem = "it has an empty part ('//' or a trailing '/')"
            elif part in (".", ".."):
                problem = f"it has a {part!r} part"
            elif not _PART.fullmatch(part):
                problem = f"part {part!r} has characters outside [A-Za-z0-9_.=+-]"
            if problem:
                break
    if problem:
        raise ConfigError(
            f"invalid storage key {key!r}: {problem}; use '/'-separated parts of "
            "letters, digits and _.=+- such as 'job1/step3/grad/0'"
        )
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is '' (everything) or a key, optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def redact_url(url: str) -> str:
    """``url`` without any user or password, for messages and reprs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class Storage(abc.ABC):
    """Byte objects under '/'-separated keys. Implementations must make ``put`` atomic."""

    #: True when other processes opening the same URL see the same objects; functions run in
    #: their own processes, so training needs such a store.
    shared_across_processes: bool = True

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any old value; readers see all or nothing.

        ``data`` may be any bytes-like object (bytes, bytearray, a byte memoryview).
        """

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise KeyNotFound naming the key if absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` currently holds an object."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error (deletes are idempotent)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Sorted keys starting with ``prefix``; for cleanup and tests, not hot paths."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; return how many were deleted."""
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def wait(self, key: str, timeout: float, *, delete: bool = False) -> bytes:
        """Block until ``key`` exists and return its bytes (deleting it if ``delete``).

        ``delete=True`` is a get followed by a delete, so it is meant for keys written once and
        read by one reader (the runtime's transfers), never for keys that are rewritten.

        Polls that one key with a backoff capped at :data:`POLL_MAX_S`; raises StorageTimeout
        naming the key once ``timeout`` seconds have passed.
        """
        validate_key(key)
        if timeout < 0:
            raise ConfigError(f"wait timeout must be >= 0 seconds, got {timeout}")
        deadline = time.monotonic() + timeout
        pause = _POLL_MIN_S
        while True:
            try:
                data = self.get(key)
            except KeyNotFound:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageTimeout(
                        f"timed out after {timeout:g} s waiting for storage key {key!r}"
                    ) from None
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, POLL_MAX_S)
                continue
            if delete:
                self.delete(key)
            return data

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections or clients; the object must not be used afterwards."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
