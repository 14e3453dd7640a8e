"""Storage on a Redis server: low-latency objects for functions that can reach one.

Keys map one to one onto Redis string keys; SET is atomic, so readers see all or nothing, and
``SET NX`` makes a create-only put atomic too.
Listing uses SCAN (never KEYS, which blocks the server) and is for cleanup only.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.storage.base import BytesLike, Storage, redact_url, validate_key, validate_prefix
from funcpipe.storage.faults import FaultInjector
from funcpipe.storage.retry import RetryPolicy, Transient

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # open_storage turns this into an install hint
    raise ImportError("the 'redis' package is required for redis:// storage") from exc

__all__ = ["RedisStorage", "from_url"]


class RedisStorage(Storage):
    """Objects as Redis strings on one database of one server."""

    def __init__(
        self, client: redis.Redis, description: str = "redis", *, ttl_s: int | None = None
    ) -> None:
        self.client = client
        self.description = description
        # Every put (re)sets the key's expiry, so a job killed without cleaning up leaves keys
        # that Redis drops by itself; a running job rewrites its keys long before they expire.
        self.ttl_s = ttl_s or None

    def __repr__(self) -> str:
        return f"RedisStorage({self.description!r})"

    def _call(self, what: str, key: str, fn, *args, create: bytes | None = None):
        """One Redis command, retried on timeouts and broken or refused connections.

        ``create``: the command is a create-only write of these bytes (see Storage._create).
        """

        def attempt():
            try:
                return fn(*args)
            except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError):
                raise  # a wrong or missing password does not heal by retrying
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise Transient(f"{type(exc).__name__}: {exc}") from exc

        where = f"redis {what} of {key!r} on {self.description}"
        try:
            if create is None:
                return self._request(where, attempt)
            self._create(where, key, create, attempt)
            return None
        except StorageError as exc:  # retries ran out, or a create found its key taken
            if isinstance(getattr(exc.__cause__, "__cause__", None), redis.ConnectionError):
                exc.args = (
                    f"{exc}; is a Redis server running there and reachable? (e.g. `redis-server`)",
                )
            raise
        except redis.RedisError as exc:
            hint = ""
            if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc):
                hint = (
                    "; set the password in FUNCPIPE_REDIS_PASSWORD (or REDIS_PASSWORD) in the "
                    "environment of the client and the functions"
                )
            raise StorageError(
                f"redis {what} of {key!r} on {self.description} failed: {exc}{hint}"
            ) from exc

    def configure_requests(
        self, retry: RetryPolicy | None = None, faults: FaultInjector | None = None
    ) -> None:
        """As Storage's, and each attempt's socket timeouts stay within the new deadline."""
        super().configure_requests(retry, faults)
        limit = self.retry.attempt_timeout_s
        kwargs = self.client.connection_pool.connection_kwargs
        for name in ("socket_timeout", "socket_connect_timeout"):
            if kwargs.get(name) is None or kwargs[name] > limit:
                kwargs[name] = limit

    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        # Only a job's own keys expire; data sets (datasets/...) serve many jobs and stay.
        ttl = self.ttl_s if key.startswith("jobs/") else None
        value = bytes(data)
        if overwrite:
            self._call("SET", key, self.client.set, validate_key(key), value, ttl)
            return

        def set_nx() -> None:
            if not self.client.set(key, value, ex=ttl, nx=True):
                raise self._exists_error(key, f"on {self.description}")

        validate_key(key)
        self._call("SET NX", key, set_nx, create=value)

    def get(self, key: str) -> bytes:
        value = self._call("GET", key, self.client.get, validate_key(key))
        if value is None:
            raise KeyNotFound(f"storage key {key!r} not found on {self.description}")
        return value

    def exists(self, key: str) -> bool:
        return bool(self._call("EXISTS", key, self.client.exists, validate_key(key)))

    def delete(self, key: str) -> None:
        self._call("DEL", key, self.client.delete, validate_key(key))

    def _scan(self, prefix: str) -> list[str]:
        # Valid keys contain no glob characters, so the prefix needs no escaping.
        pattern = validate_prefix(prefix) + "*"
        keys = self._call("SCAN", prefix, lambda: list(self.client.scan_iter(pattern, 1000)))
        return sorted(k.decode() for k in keys)

    def list(self, prefix: str) -> list[str]:
        return self._scan(prefix)

    def delete_prefix(self, prefix: str) -> int:
        keys = self._scan(prefix)
        for start in range(0, len(keys), 500):
            # DEL's own count is not used: a retry after a lost reply would count 0
            self._call("DEL", prefix, self.client.delete, *keys[start : start + 500])
        return len(keys)

    def close(self) -> None:
        self.client.close()


#: A server that accepts connections but never answers must not hang a function: every
#: request gives up after this long (override with socket_timeout=...).
DEFAULT_SOCKET_TIMEOUT_S = 10.0

#: A job's keys (jobs/...) expire this long after their last write (7 days), so a dead job's
#: leftovers go away even if nobody runs `funcpipe clean`; ttl_s=0 keeps keys forever. Data sets
#: uploaded with `funcpipe data upload` never expire.
DEFAULT_TTL_S = 7 * 24 * 3600


def _pop_ttl(url: str, options: dict[str, object], shown: str) -> tuple[str, int | None]:
    """Take ``ttl_s`` out of the URL's query (redis-py would pass it to the connection)."""
    parsed = urlparse(url)
    query = parse_qsl(parsed.query, keep_blank_values=True)
    raw: object = DEFAULT_TTL_S
    for name, value in query:
        if name == "ttl_s":
            raw = value
    raw = options.pop("ttl_s", raw)
    try:
        ttl = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        ttl = -1
    if ttl < 0 or isinstance(raw, bool | float):
        raise ConfigError(
            f"redis storage {shown!r}: ttl_s must be a whole number of seconds >= 0 "
            f"(0 = never expire), got {raw!r}"
        )
    rest = urlencode([(n, v) for n, v in query if n != "ttl_s"])
    return urlunparse(parsed._replace(query=rest)), ttl or None


#: Environment variables a Redis password is read from when the URL carries none, so it never
#: has to appear in a URL, a command line or a job package.
PASSWORD_ENV = ("FUNCPIPE_REDIS_PASSWORD", "REDIS_PASSWORD")


def from_url(url: str, **options: object) -> RedisStorage:
    """'redis://[[user]:password@]host:port/db[?ttl_s=N]'; other options go to redis.Redis
    (e.g. socket_timeout). ``ttl_s`` is every key's expiry after its last write (default 7 days).

    Without a password in the URL (the better way), FUNCPIPE_REDIS_PASSWORD or REDIS_PASSWORD
    supplies it; every process of a job inherits it from the client's environment.
    """
    parsed = urlparse(url)
    shown = redact_url(url)  # never echo the password
    url, ttl_s = _pop_ttl(url, options, shown)
    if not parsed.hostname:
        raise ConfigError(
            f"redis storage URL {shown!r} needs a host, e.g. 'redis://127.0.0.1:6379/0'"
        )
    if parsed.password is None and "password" not in options:
        for name in PASSWORD_ENV:
            if os.environ.get(name):
                options["password"] = os.environ[name]
                break
    options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT_S)
    options.setdefault("socket_connect_timeout", DEFAULT_SOCKET_TIMEOUT_S)
    # One attempt per command: FuncPipe's retries bound the whole request by its deadline.
    options.setdefault("retry", Retry(NoBackoff(), 0))
    try:
        client = redis.Redis.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        message = str(exc).replace(url, shown)
        if parsed.password:
            message = message.replace(parsed.password, "***")
        raise ConfigError(f"invalid redis storage URL or option for {shown!r}: {message}") from None
    # Never echo the password: describe the server by host, port and database only.
    described = f"redis://{parsed.hostname}:{parsed.port or 6379}{parsed.path}"
    return RedisStorage(client, described, ttl_s=ttl_s)
