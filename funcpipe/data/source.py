"""Where data files live: a local directory or a prefix in the FuncPipe storage backend.

Loaders read whole files by name through this one interface, so the same loader serves the
client (local path) and a function (storage object, since functions share no file system).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from funcpipe.errors import ConfigError


class DataSource(Protocol):
    def read(self, name: str) -> bytes: ...

    def write(self, name: str, data: bytes) -> None: ...

    def exists(self, name: str) -> bool: ...

    def describe(self, name: str) -> str:
        """Where `name` lives, for error messages."""
        ...


class LocalDir:
    """Files in a directory of the local file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / name)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def describe(self, name: str) -> str:
        return str(self.root / name)


class StorageDir:
    """Objects `prefix/name` in a `funcpipe.storage.Storage` (anything with get/put/exists)."""

    def __init__(self, storage: Any, prefix: str = "") -> None:
        for method in ("get", "put", "exists"):
            if not callable(getattr(storage, method, None)):
                raise ConfigError(
                    f"storage object {type(storage).__name__} has no {method}() method; pass a "
                    "funcpipe.storage.Storage (e.g. funcpipe.storage.open_storage(url))"
                )
        self.storage = storage
        self.prefix = prefix.strip("/")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, name: str) -> bytes:
        return self.storage.get(self.key(name))

    def write(self, name: str, data: bytes) -> None:
        self.storage.put(self.key(name), data)

    def exists(self, name: str) -> bool:
        return bool(self.storage.exists(self.key(name)))

    def describe(self, name: str) -> str:
        return f"storage key {self.key(name)!r}"


def as_source(location: str | Path | DataSource, *, storage: Any = None) -> DataSource:
    """A DataSource for a local path, or for a key prefix when `storage` is given."""
    if storage is not None:
        if not isinstance(location, str):
            raise ConfigError("with storage=..., location must be a key prefix string")
        return StorageDir(storage, location)
    if isinstance(location, str | Path):
        return LocalDir(location)
    if all(callable(getattr(location, m, None)) for m in ("read", "write", "exists", "describe")):
        return location
    raise ConfigError(
        f"data location {location!r} is neither a path nor a DataSource; pass a directory path "
        "or a key prefix together with storage=<funcpipe.storage.Storage>"
    )


def read_file(source: DataSource, name: str, expected: str) -> bytes:
    """Read `name`, turning absence into a ConfigError that names the file and its format."""
    try:
        exists = source.exists(name)
    except Exception as exc:  # a backend failure: say which file we were after
        raise ConfigError(f"cannot check {source.describe(name)}: {exc}") from exc
    if not exists:
        raise ConfigError(f"data file {source.describe(name)} is missing; expected {expected}")
    return source.read(name)
