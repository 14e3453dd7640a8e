"""Object storage, the only channel between functions, behind one small byte interface.

``open_storage(url)`` picks a backend by URL scheme from a small registry; a backend is one
module exposing ``from_url(url, **options) -> Storage``, imported only when used so optional
client libraries stay optional.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from funcpipe.errors import ConfigError
from funcpipe.storage.base import Storage, redact_url, validate_key, validate_prefix
from funcpipe.storage.local_dir import LocalDirStorage
from funcpipe.storage.memory import MemoryStorage
from funcpipe.storage.prefixed import PrefixedStorage
from funcpipe.storage.throttle import LinkConfig, LinkStats, ThrottledStorage

__all__ = [
    "LinkConfig",
    "LinkStats",
    "LocalDirStorage",
    "MemoryStorage",
    "PrefixedStorage",
    "Storage",
    "ThrottledStorage",
    "default_local_root",
    "open_storage",
    "redact_url",
    "register_backend",
    "validate_key",
    "validate_prefix",
]

Factory = Callable[..., Storage]

# scheme -> (module, pip extra that provides its client library)
_LAZY: dict[str, tuple[str, str | None]] = {
    "local": ("funcpipe.storage.local_dir", None),
    "memory": ("funcpipe.storage.memory", None),
    "redis": ("funcpipe.storage.redis_store", "funcpipe[redis]"),
    "s3": ("funcpipe.storage.s3", "funcpipe[s3]"),
}
_FACTORIES: dict[str, Factory] = {}


def register_backend(scheme: str, factory: Factory) -> None:
    """Make ``open_storage("<scheme>://...")`` call ``factory(url, **options)``."""
    _FACTORIES[scheme] = factory


def default_local_root() -> Path:
    """FUNCPIPE_STORAGE_DIR, else a folder in /dev/shm (RAM, fastest), else in the temp dir."""
    env = os.environ.get("FUNCPIPE_STORAGE_DIR")
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / "funcpipe-storage"
    return Path(tempfile.gettempdir()) / "funcpipe-storage"


def _local_from_url(url: str, **options: object) -> Storage:
    if options:
        raise ConfigError(f"local storage takes no options, got {sorted(options)}")
    if url == "local":
        return LocalDirStorage(default_local_root())
    path = url[len("local://") :] if url.startswith("local://") else url
    if not path.startswith("/"):
        raise ConfigError(
            f"local storage URL {url!r} needs an absolute path, e.g. 'local:///tmp/fp' or '/tmp/fp'"
        )
    return LocalDirStorage(path)


def _memory_from_url(url: str, **options: object) -> Storage:
    if url != "memory://" or options:
        raise ConfigError(f"in-process storage is opened as 'memory://', no options; got {url!r}")
    return MemoryStorage()


register_backend("local", _local_from_url)
register_backend("memory", _memory_from_url)


def open_storage(url: str = "local", **options: object) -> Storage:
    """Open the backend named by ``url``: 'local', 'local:///abs/dir', '/abs/dir',
    'memory://' (this process only), 'redis://host:port/db' or
    's3://bucket/prefix?endpoint_url=...'."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"storage URL must be a non-empty string, got {url!r}")
    scheme = "local" if url == "local" or url.startswith("/") else urlparse(url).scheme
    if scheme not in _FACTORIES and scheme in _LAZY:
        module, extra = _LAZY[scheme]
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            hint = f"; install it with: pip install '{extra}'" if extra else ""
            raise ConfigError(f"storage backend {scheme!r} is unavailable ({exc}){hint}") from exc
        _FACTORIES.setdefault(scheme, mod.from_url)
    if scheme not in _FACTORIES:
        known = sorted(set(_FACTORIES) | set(_LAZY))
        raise ConfigError(
            f"unknown storage URL {redact_url(url)!r}: scheme {scheme!r} is not one of {known} "
            "(or an absolute local path)"
        )
    return _FACTORIES[scheme](url, **options)
