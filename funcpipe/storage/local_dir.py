"""Storage as one file per key under a directory: zero setup, and fast on /dev/shm.

Every object file carries the suffix ``#`` (a character keys may not contain), so a key can be
both an object and the prefix of other keys ('a' and 'a/b'), as on S3. ``put`` writes a temp
file in the same directory and renames it over the target, so a reader never sees half an
object; temp names never end in ``#`` and are therefore invisible to get/list/exists.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.storage.base import Storage, validate_key, validate_prefix

__all__ = ["LocalDirStorage"]

_OBJ = "#"


class LocalDirStorage(Storage):
    """Objects as files under ``root``; safe across threads and processes on one machine."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create storage directory {str(self.root)!r}: {exc}; pass a writable "
                "path or set FUNCPIPE_STORAGE_DIR"
            ) from exc

    def __repr__(self) -> str:
        return f"LocalDirStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / (validate_key(key) + _OBJ)

    # Local requests never fail transiently; they go through _request for injected faults.
    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._request(f"local PUT of {key!r}", lambda: self._put(key, path, data))

    def _put(self, key: str, path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{path.name[:-1]}#{uuid.uuid4().hex}.tmp")
        for _ in range(50):  # a concurrent delete/prune may remove the directory under us
            try:
                with open(tmp, "wb") as f:  # the folder usually exists: no mkdir per put
                    f.write(memoryview(data))
                os.replace(tmp, path)
                return
            except FileNotFoundError:
                with contextlib.suppress(FileNotFoundError, FileExistsError):
                    path.parent.mkdir(parents=True, exist_ok=True)
                continue
            except FileExistsError:
                continue
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise StorageError(
                    f"cannot write storage key {key!r} under {self.root}: {exc}"
                ) from exc
        raise StorageError(f"cannot write storage key {key!r}: its directory keeps vanishing")

    def get(self, key: str) -> bytes:
        path = self._path(key)
        return self._request(f"local GET of {key!r}", lambda: self._get(key, path))

    def _get(self, key: str, path: Path) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFound(f"storage key {key!r} not found under {self.root}") from None

    def exists(self, key: str) -> bool:
        path = self._path(key)
        return self._request(f"local HEAD of {key!r}", path.is_file)

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._request(f"local DELETE of {key!r}", lambda: self._delete(path))

    def _delete(self, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove empty directories from ``folder`` up to (not including) the root."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                return
            folder = folder.parent

    def _walk(self, prefix: str) -> tuple[Path, list[str]]:
        base = prefix.rpartition("/")[0]
        top = self.root / base if base else self.root
        keys = []
        for dirpath, _dirs, files in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.endswith(_OBJ):
                    key = name[:-1] if rel == "." else f"{rel}/{name[:-1]}"
                    if key.startswith(prefix):
                        keys.append(key.replace(os.sep, "/"))
        return top, sorted(keys)

    def list(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        return self._request(f"local LIST of {prefix!r}", lambda: self._walk(prefix)[1])

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        return self._request(f"local DELETE-PREFIX {prefix!r}", lambda: self._delete_all(prefix))

    def _delete_all(self, prefix: str) -> int:
        top, keys = self._walk(prefix)
        count = 0
        for key in keys:
            try:
                self._path(key).unlink()
                count += 1
            except FileNotFoundError:
                pass
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            folder = Path(dirpath)
            if folder != self.root:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if top != self.root:
            self._prune(top.parent)
        return count
