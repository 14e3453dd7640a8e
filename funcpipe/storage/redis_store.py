"""Storage on a Redis server: low-latency objects for functions that can reach one.

Keys map one to one onto Redis string keys; SET is atomic, so readers see all or nothing.
Listing uses SCAN (never KEYS, which blocks the server) and is for cleanup only.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.storage.base import Storage, redact_url, validate_key, validate_prefix

try:
    import redis
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

    def _call(self, what: str, key: str, fn, *args):
        try:
            return fn(*args)
        except redis.RedisError as exc:
            hint = ""
            if isinstance(exc, redis.ConnectionError):
                hint = "; is a Redis server running there and reachable? (e.g. `redis-server`)"
            raise StorageError(
                f"redis {what} of {key!r} on {self.description} failed: {exc}{hint}"
            ) from exc

    def put(self, key: str, data: bytes) -> None:
        self._call("SET", key, self.client.set, validate_key(key), bytes(data), self.ttl_s)

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
        count = 0
        for start in range(0, len(keys), 500):
            count += self._call("DEL", prefix, self.client.delete, *keys[start : start + 500])
        return count

    def close(self) -> None:
        self.client.close()


#: A server that accepts connections but never answers must not hang a function: every
#: request gives up after this long (override with socket_timeout=...).
DEFAULT_SOCKET_TIMEOUT_S = 10.0

#: Keys expire this long after their last write (7 days), so a dead job's leftovers go away even
#: if nobody runs `funcpipe clean`; ttl_s=0 keeps keys forever.
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


def from_url(url: str, **options: object) -> RedisStorage:
    """'redis://[:password@]host:port/db[?ttl_s=N]'; other options go to redis.Redis (e.g.
    socket_timeout). ``ttl_s`` is every key's expiry after its last write (default 7 days)."""
    parsed = urlparse(url)
    shown = redact_url(url)  # never echo the password
    url, ttl_s = _pop_ttl(url, options, shown)
    if not parsed.hostname:
        raise ConfigError(
            f"redis storage URL {shown!r} needs a host, e.g. 'redis://127.0.0.1:6379/0'"
        )
    options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT_S)
    options.setdefault("socket_connect_timeout", DEFAULT_SOCKET_TIMEOUT_S)
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
