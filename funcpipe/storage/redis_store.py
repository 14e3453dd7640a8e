"""Storage on a Redis server: low-latency objects for functions that can reach one.

Keys map one to one onto Redis string keys; SET is atomic, so readers see all or nothing.
Listing uses SCAN (never KEYS, which blocks the server) and is for cleanup only.
"""

from __future__ import annotations

from urllib.parse import urlparse

from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.storage.base import Storage, redact_url, validate_key, validate_prefix

try:
    import redis
except ImportError as exc:  # open_storage turns this into an install hint
    raise ImportError("the 'redis' package is required for redis:// storage") from exc

__all__ = ["RedisStorage", "from_url"]


class RedisStorage(Storage):
    """Objects as Redis strings on one database of one server."""

    def __init__(self, client: redis.Redis, description: str = "redis") -> None:
        self.client = client
        self.description = description

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
        self._call("SET", key, self.client.set, validate_key(key), bytes(data))

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


def from_url(url: str, **options: object) -> RedisStorage:
    """'redis://[:password@]host:port/db'; options go to redis.Redis (e.g. socket_timeout)."""
    parsed = urlparse(url)
    shown = redact_url(url)  # never echo the password
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
    return RedisStorage(client, f"redis://{parsed.hostname}:{parsed.port or 6379}{parsed.path}")
