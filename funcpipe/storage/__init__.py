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
from urllib.parse import parse_qsl, urlencode, urlparse

from funcpipe.errors import ConfigError
from funcpipe.storage.base import Storage, redact_url, validate_key, validate_prefix
from funcpipe.storage.faults import FaultInjector, faults_from_env, parse_rate
from funcpipe.storage.local_dir import LocalDirStorage
from funcpipe.storage.memory import MemoryStorage
from funcpipe.storage.prefixed import PrefixedStorage
from funcpipe.storage.retry import DEFAULT_DEADLINE_S, RetryPolicy
from funcpipe.storage.throttle import LinkConfig, LinkStats, ThrottledStorage, default_link

__all__ = [
    "DEFAULT_DEADLINE_S",
    "FaultInjector",
    "LinkConfig",
    "LinkStats",
    "RetryPolicy",
    "LocalDirStorage",
    "MemoryStorage",
    "PrefixedStorage",
    "Storage",
    "ThrottledStorage",
    "default_link",
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
    """FUNCPIPE_STORAGE_DIR, else a folder in the user's cache directory (on disk).

    Not /dev/shm: the kernel charges what a function writes to RAM-backed files to the writer's
    memory cap, so storage would count as the function's memory (a Lambda's storage never does).
    Page cache of an on-disk file is reclaimable and never ends a function.
    """
    env = os.environ.get("FUNCPIPE_STORAGE_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if os.path.isdir(os.path.dirname(cache)) or os.path.isdir(cache):
        return Path(cache) / "funcpipe" / "storage"
    return Path(tempfile.gettempdir()) / f"funcpipe-storage-{os.getuid()}"


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


#: Options every backend takes, in the query string or as keywords (see open_storage).
_COMMON = ("deadline_s", "faults", "faults_seed")


def _split_common(url: str, options: dict[str, object]) -> tuple[str, dict[str, object]]:
    """Take the common options out of ``url``'s query and ``options`` (keywords win)."""
    common: dict[str, object] = {}
    base, sep, query = url.partition("?")
    if sep:
        rest = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in _COMMON:
                common[name] = value
            else:
                rest.append((name, value))
        url = f"{base}?{urlencode(rest, safe=':/')}" if rest else base
    for name in _COMMON:
        if name in options:
            common[name] = options.pop(name)
    return url, common


def _request_settings(
    common: dict[str, object], store: Storage
) -> tuple[RetryPolicy | None, FaultInjector | None]:
    retry = None
    if common.get("deadline_s") is not None:
        try:
            deadline = float(str(common["deadline_s"]))
        except ValueError:
            deadline = -1.0
        if not deadline > 0:
            raise ConfigError(
                f"storage option deadline_s={common['deadline_s']!r} must be a positive number "
                "of seconds (how long one request may keep retrying)"
            )
        retry = RetryPolicy(deadline_s=deadline, max_attempts=store.retry.max_attempts)
    faults = faults_from_env()
    if common.get("faults") is not None:
        rate = parse_rate(common["faults"], "storage option faults")
        seed = common.get("faults_seed")
        faults = FaultInjector(rate, seed=int(str(seed)) if seed is not None else None)
    return retry, faults


def open_storage(url: str = "local", **options: object) -> Storage:
    """Open the backend named by ``url``: 'local', 'local:///abs/dir', '/abs/dir',
    'memory://' (this process only), 'redis://host:port/db' or
    's3://bucket/prefix?endpoint_url=...'.

    Options of every backend, in the URL's query or as keywords:
    ``deadline_s`` bounds each request, retries included (default
    :data:`~funcpipe.storage.retry.DEFAULT_DEADLINE_S`; pass the job's ``timeout_s``);
    ``faults`` (a fraction) and ``faults_seed`` inject failures for tests, as does the
    environment variable FUNCPIPE_FAULTS (see :mod:`funcpipe.storage.faults`).
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"storage URL must be a non-empty string, got {url!r}")
    url, common = _split_common(url, options)
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
    store = _FACTORIES[scheme](url, **options)
    retry, faults = _request_settings(common, store)
    if retry is not None or faults is not None:
        store.configure_requests(retry, faults)
    return store
