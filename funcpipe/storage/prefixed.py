"""A view of a Storage in which every key lives under one prefix (one job's namespace)."""

from __future__ import annotations

from collections.abc import Callable

from funcpipe.storage.base import BytesLike, Storage, validate_key, validate_prefix

__all__ = ["PrefixedStorage"]


class PrefixedStorage(Storage):
    """Keys ``k`` map to ``prefix/k`` in ``inner``; list and delete_prefix stay inside the prefix.

    The view does not own ``inner``: ``close()`` leaves it open for other views.
    """

    def __init__(self, inner: Storage, prefix: str) -> None:
        self.inner = inner
        self.prefix = validate_key(prefix.rstrip("/")) + "/"
        self.poll_max_s = inner.poll_max_s

    def __repr__(self) -> str:
        return f"PrefixedStorage({self.inner!r}, {self.prefix[:-1]!r})"

    @property
    def on_extra_request(self) -> Callable[[str, int], None] | None:
        """The hook lives on the storage that sends the requests."""
        return self.inner.on_extra_request

    @on_extra_request.setter
    def on_extra_request(self, hook: Callable[[str, int], None] | None) -> None:
        self.inner.on_extra_request = hook

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        self.inner.put(self._full(key), data, overwrite=overwrite)

    def get(self, key: str) -> bytes:
        return self.inner.get(self._full(key))

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._full(key))

    def wait(self, key: str, timeout: float, *, delete: bool = False) -> bytes:
        return self.inner.wait(self._full(key), timeout, delete=delete)

    def delete(self, key: str) -> None:
        self.inner.delete(self._full(key))

    def list(self, prefix: str) -> list[str]:
        cut = len(self.prefix)
        return [k[cut:] for k in self.inner.list(self.prefix + validate_prefix(prefix))]

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(self.prefix + validate_prefix(prefix))
