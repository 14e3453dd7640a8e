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
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

from funcpipe.errors import ConfigError, KeyExists, KeyNotFound, StorageTimeout
from funcpipe.storage.retry import RetryPolicy, call_with_retries

if TYPE_CHECKING:
    from funcpipe.storage.faults import FaultInjector

__all__ = ["POLL_MAX_S", "BytesLike", "Storage", "validate_key", "validate_prefix"]

T = TypeVar("T")

#: What ``put`` accepts: bytes, or a view of bytes (a tensor's memory, part of a buffer).
BytesLike = bytes | bytearray | memoryview

#: Longest pause between two polls of one key in :meth:`Storage.wait`, for stores where a poll
#: is free and fast (local, Redis); S3 overrides it (every poll is a billed GET).
POLL_MAX_S = 0.01
_POLL_MIN_S = 0.0005
#: How many timed-out waits' poll paces a store remembers (see Storage.wait).
_PACES_KEPT = 4096

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


#: Request verbs (as backends name them in their messages) -> the class they are billed in.
_BILLED = {
    "GET": "gets", "HEAD": "heads", "EXISTS": "heads", "HEAD-BUCKET": "heads",
    "PUT": "puts", "SET": "puts", "CREATE-BUCKET": "puts",
    "LIST": "lists", "SCAN": "lists", "DELETE-MANY": "bulk_deletes",
    "DELETE": "deletes", "DEL": "deletes",
}  # fmt: skip


def billed_class(what: str) -> str:
    """The billed class of a request described as "<backend> <VERB> of ...": GET -> "gets"."""
    words = what.split()
    return _BILLED.get(words[1] if len(words) > 1 else "", "gets")


class Storage(abc.ABC):
    """Byte objects under '/'-separated keys. Implementations must make ``put`` atomic."""

    #: True when other processes opening the same URL see the same objects; functions run in
    #: their own processes, so training needs such a store.
    shared_across_processes: bool = True
    #: Longest pause between two polls of a wait (see :meth:`wait`).
    poll_max_s: float = POLL_MAX_S
    #: Deadline and attempts of each request; set with :meth:`configure_requests`.
    retry: RetryPolicy = RetryPolicy()
    #: Injected faults (tests); None in normal operation.
    faults: FaultInjector | None = None
    #: Told of every request sent beyond one per operation (a retried attempt, the parts of a
    #: multipart transfer) with its billed class ("puts", "gets", ...), so that a counting
    #: wrapper (ThrottledStorage) bills what really went over the wire.
    on_extra_request: Callable[[str, int], None] | None = None

    @abc.abstractmethod
    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        """Store ``data`` under ``key``, replacing any old value; readers see all or nothing.

        ``data`` may be any bytes-like object (bytes, bytearray, a byte memoryview).

        ``overwrite=False`` makes the write create-only: it raises KeyExists naming the key when
        the key already holds an object, and leaves that object alone. It is atomic: of several
        writers racing to create one key (other threads, other processes), exactly one
        succeeds. A create retried after its reply was lost, that finds the very bytes it sent,
        counts as created (:meth:`_created_before`); writers that must know which of them won
        therefore write distinct data, e.g. with a unique attempt id in it.
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
        read by one reader (the runtime's transfers), never for keys that are rewritten. The
        delete is retried on its own (deletes are idempotent), never the get: once the bytes are
        here they are returned, even when the delete could not be confirmed.

        Polls that one key (never a listing) with a backoff: quick first polls, then a pause
        that doubles up to :attr:`poll_max_s`. Every poll is a request of its own (a GET, billed
        on S3, counted by ThrottledStorage). A wait that timed out leaves its pace behind, so a
        caller that waits in slices (to check for an abort in between) resumes where it left
        off instead of starting over with quick polls. Raises StorageTimeout naming the key
        once ``timeout`` seconds have passed.
        """
        validate_key(key)
        if timeout < 0:
            raise ConfigError(f"wait timeout must be >= 0 seconds, got {timeout}")
        deadline = time.monotonic() + timeout
        paces = self._poll_paces()
        pause = paces.pop(key, _POLL_MIN_S)
        while True:
            try:
                data = self.get(key)
            except KeyNotFound:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if len(paces) < _PACES_KEPT:
                        paces[key] = pause
                    raise StorageTimeout(
                        f"timed out after {timeout:g} s waiting for storage key {key!r}"
                    ) from None
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, self.poll_max_s)
                continue
            if delete:
                self.delete(key)
            return data

    def _create(self, what: str, key: str, data: BytesLike, attempt: Callable[[], object]) -> None:
        """A create-only write as one request: ``attempt`` raises KeyExists if the key exists.

        Retried like any request; a retry that finds the bytes an earlier try sent counts as
        created (see :meth:`put`).
        """
        tries = 0

        def counted() -> None:
            nonlocal tries
            tries += 1
            attempt()

        try:
            self._request(what, counted)
        except KeyExists:
            if not self._created_before(key, data, tries):
                raise

    def _created_before(self, key: str, data: BytesLike, tries: int) -> bool:
        """After a create-only write of ``key`` raised KeyExists on its try number ``tries``:
        whether an earlier try created it (it landed, then its reply was lost or failed).

        Only a retried create can have landed before; then the key holds exactly ``data``.
        """
        if tries < 2:
            return False
        try:
            return self.get(key) == bytes(data)
        except KeyNotFound:
            return False

    @staticmethod
    def _exists_error(key: str, where: str) -> KeyExists:
        return KeyExists(
            f"storage key {key!r} already exists {where}; a create-only put (overwrite=False) "
            "never replaces an object: delete it first, or write with overwrite=True"
        )

    def _poll_paces(self) -> dict[str, float]:
        try:
            return self.__dict__["_paces"]
        except KeyError:
            return self.__dict__.setdefault("_paces", {})

    def _request(self, what: str, fn: Callable[[], T]) -> T:
        """One backend request: ``fn`` raises Transient on a failure worth retrying.

        Retried under :attr:`retry`; faults from :attr:`faults` are injected under the retries.
        """
        faults = self.faults
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self._extra_requests(billed_class(what), 1)
            return fn() if faults is None else faults.around(fn)

        return call_with_retries(self.retry, what, attempt)

    def _extra_requests(self, billed: str, count: int) -> None:
        hook = self.on_extra_request
        if hook is not None and count > 0:
            hook(billed, count)

    def configure_requests(
        self, retry: RetryPolicy | None = None, faults: FaultInjector | None = None
    ) -> None:
        """Set the retry policy (its deadline bounds every request) and injected faults."""
        if retry is not None:
            self.retry = retry
        self.faults = faults

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections or clients; the object must not be used afterwards."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
