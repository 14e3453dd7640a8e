"""Storage as one file per key under a directory: zero setup, and fast on /dev/shm.

Every object file carries the suffix ``#`` (a character keys may not contain), so a key can be
both an object and the prefix of other keys ('a' and 'a/b'), as on S3. ``put`` writes a temp
file in the same directory and renames it over the target, so a reader never sees half an
object (a create-only put hard-links it to the name instead, which fails if the name exists);
temp names never end in ``#`` and are therefore invisible to get/list/exists.

The root is often in a shared place (/dev/shm), so it must belong to the user and not be
world-writable, and no path under it is ever resolved through a symbolic link: every request
walks from a descriptor of the root one directory at a time with ``O_NOFOLLOW``, so a planted
``jobs`` link cannot redirect a write or a delete. Files are created 0600 and folders 0700:
weights and data are readable by their owner only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.storage.base import BytesLike, Storage, validate_key, validate_prefix

__all__ = ["LocalDirStorage"]

_OBJ = "#"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _check_root(root: Path) -> os.stat_result:
    """The root's identity, once it is known to be the user's own private-enough folder."""
    fix = "pass a folder of your own (FUNCPIPE_STORAGE_DIR or storage='local:///path')"
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"storage directory {str(root)!r} is a symbolic link; FuncPipe never follows links "
            f"in its storage (one could redirect writes and deletes): {fix}"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"storage directory {str(root)!r} is not a directory: {fix}")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"storage directory {str(root)!r} belongs to uid {st.st_uid}, not to you (uid "
            f"{os.geteuid()}): its owner could read or replace your jobs' data; {fix}"
        )
    if st.st_mode & stat.S_IWOTH:
        raise ConfigError(
            f"storage directory {str(root)!r} is world-writable (mode {stat.S_IMODE(st.st_mode):o}"
            f"): anyone could plant files or links in it; run `chmod 700 {root}` or {fix}"
        )
    return st


class LocalDirStorage(Storage):
    """Objects as files under ``root``; safe across threads and processes on one machine."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.root, 0o700)
            st = _check_root(self.root)
        except OSError as exc:
            raise ConfigError(
                f"cannot create storage directory {str(self.root)!r}: {exc}; pass a writable "
                "path or set FUNCPIPE_STORAGE_DIR"
            ) from exc
        self._identity = (st.st_dev, st.st_ino)

    def __repr__(self) -> str:
        return f"LocalDirStorage({str(self.root)!r})"

    def _open_root(self) -> int:
        fd = os.open(self.root, _DIR)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._identity:
            os.close(fd)
            raise StorageError(
                f"storage directory {self.root} was replaced after it was opened; refusing to "
                "use the new one"
            )
        return fd

    @contextlib.contextmanager
    def _dirs(self, parts: list[str], *, create: bool) -> Iterator[list[int]]:
        """Descriptors of the root and of each folder in ``parts`` below it, opened one level
        at a time without following links (``create`` makes missing folders, 0700)."""
        fds = [self._open_root()]
        try:
            for part in parts:
                try:
                    fd = os.open(part, _DIR, dir_fd=fds[-1])
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fds[-1])
                    fd = os.open(part, _DIR, dir_fd=fds[-1])
                fds.append(fd)
            yield fds
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                where = "/".join(parts)
                raise StorageError(
                    f"{where!r} under {self.root} is a symbolic link or not a folder; FuncPipe "
                    "never follows links in its storage: remove it"
                ) from exc
            raise
        finally:
            for fd in fds:
                os.close(fd)

    @staticmethod
    def _split(key: str) -> tuple[list[str], str]:
        *parts, name = validate_key(key).split("/")
        return parts, name + _OBJ

    # Local requests never fail transiently; they go through _request for injected faults.
    def put(self, key: str, data: BytesLike, *, overwrite: bool = True) -> None:
        validate_key(key)
        if overwrite:
            self._request(f"local PUT of {key!r}", lambda: self._put(key, data))
        else:
            what = f"local PUT (create-only) of {key!r}"
            self._create(what, key, data, lambda: self._put(key, data, create=True))

    def _put(self, key: str, data: BytesLike, *, create: bool = False) -> None:
        """Write a temp file, then rename it over the key's name or, with ``create``, hard-link
        it to that name, which fails if the name exists: create-only, and atomic."""
        parts, obj = self._split(key)
        tmp = f"{obj[:-1]}#{uuid.uuid4().hex}.tmp"
        for _ in range(50):  # a concurrent delete/prune may remove the directory under us
            try:
                with self._dirs(parts, create=True) as fds:
                    folder = fds[-1]
                    fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=folder)
                    try:
                        with open(fd, "wb") as f:
                            f.write(memoryview(data))
                        if create:
                            os.link(tmp, obj, src_dir_fd=folder, dst_dir_fd=folder,
                                    follow_symlinks=False)  # fmt: skip
                        else:
                            os.replace(tmp, obj, src_dir_fd=folder, dst_dir_fd=folder)
                    except BaseException:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp, dir_fd=folder)
                        raise
                    if create:
                        with contextlib.suppress(OSError):  # the key's own name holds the data
                            os.unlink(tmp, dir_fd=folder)
                    return
            except FileExistsError:  # only the link can raise it: temp names are unique
                raise self._exists_error(key, f"under {self.root}") from None
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(
                    f"cannot write storage key {key!r} under {self.root}: {exc}"
                ) from exc
        raise StorageError(f"cannot write storage key {key!r}: its directory keeps vanishing")

    def get(self, key: str) -> bytes:
        validate_key(key)
        return self._request(f"local GET of {key!r}", lambda: self._get(key))

    def _get(self, key: str) -> bytes:
        parts, obj = self._split(key)
        try:
            with self._dirs(parts, create=False) as fds:
                fd = os.open(obj, _READ, dir_fd=fds[-1])
                with open(fd, "rb") as f:
                    return f.read()
        except FileNotFoundError:
            raise KeyNotFound(f"storage key {key!r} not found under {self.root}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(
                    f"storage key {key!r} under {self.root} is a symbolic link; FuncPipe never "
                    "follows links in its storage: remove it"
                ) from exc
            raise StorageError(f"cannot read storage key {key!r}: {exc}") from exc

    def exists(self, key: str) -> bool:
        validate_key(key)
        return self._request(f"local HEAD of {key!r}", lambda: self._exists(key))

    def _exists(self, key: str) -> bool:
        parts, obj = self._split(key)
        try:
            with self._dirs(parts, create=False) as fds:
                st = os.stat(obj, dir_fd=fds[-1], follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._request(f"local DELETE of {key!r}", lambda: self._delete(key))

    def _delete(self, key: str) -> None:
        parts, obj = self._split(key)
        try:
            with self._dirs(parts, create=False) as fds:
                os.unlink(obj, dir_fd=fds[-1])
                self._prune(parts, fds)
        except FileNotFoundError:
            return

    @staticmethod
    def _prune(parts: list[str], fds: list[int]) -> None:
        """Remove empty folders from the deepest of ``parts`` up to (not including) the root;
        ``fds[i]`` is the folder holding ``parts[i]``."""
        for i in range(len(parts) - 1, -1, -1):
            try:
                os.rmdir(parts[i], dir_fd=fds[i])
            except OSError:  # not empty, already gone, or not a folder (rmdir never follows)
                return

    def _walk(self, prefix: str, *, delete: bool = False) -> list[str]:
        """Keys under ``prefix`` (deleting them and then empty folders, with ``delete``)."""
        base = prefix.rpartition("/")[0]
        parts = base.split("/") if base else []
        keys = []
        try:
            with self._dirs(parts, create=False) as fds:
                # fwalk never descends into a link (follow_symlinks=False) and hands a
                # descriptor of each folder, so nothing is resolved through a path.
                for dirpath, dirnames, files, folder in os.fwalk(
                    ".", dir_fd=fds[-1], topdown=not delete
                ):
                    rel = os.path.normpath(dirpath)
                    for name in files:
                        if not name.endswith(_OBJ):
                            continue
                        st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                        if not stat.S_ISREG(st.st_mode):
                            continue
                        path = name[:-1] if rel == "." else f"{rel}/{name[:-1]}"
                        key = f"{base}/{path}" if base else path
                        if key.startswith(prefix):
                            if delete:
                                try:
                                    os.unlink(name, dir_fd=folder)
                                except FileNotFoundError:  # a concurrent delete won
                                    continue
                            keys.append(key)
                    if delete:
                        for name in dirnames:
                            with contextlib.suppress(OSError):
                                os.rmdir(name, dir_fd=folder)
                if delete:
                    self._prune(parts, fds)
        except FileNotFoundError:
            return []
        return sorted(keys)

    def list(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        return self._request(f"local LIST of {prefix!r}", lambda: self._walk(prefix))

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        # Counted from a listing first: a retried walk after a lost reply would count only what
        # the first attempt left behind (nothing).
        keys = self._request(f"local LIST of {prefix!r}", lambda: self._walk(prefix))
        self._request(f"local DELETE-PREFIX {prefix!r}", lambda: self._walk(prefix, delete=True))
        return len(keys)
