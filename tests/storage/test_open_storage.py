"""open_storage URL forms and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from funcpipe.errors import ConfigError
from funcpipe.storage import LocalDirStorage, open_storage


def test_local_default_root_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNCPIPE_STORAGE_DIR", str(tmp_path / "env-root"))
    store = open_storage("local")
    assert isinstance(store, LocalDirStorage)
    assert store.root == tmp_path / "env-root"
    assert open_storage().root == store.root


def test_local_default_root_without_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUNCPIPE_STORAGE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = open_storage("local")
    # On disk, never /dev/shm: RAM-backed files would count toward a function's memory cap.
    assert store.root == tmp_path / "cache" / "funcpipe" / "storage"


@pytest.mark.parametrize("form", ["local://{}", "{}"])
def test_local_explicit_paths(tmp_path: Path, form: str) -> None:
    store = open_storage(form.format(tmp_path / "d"))
    assert isinstance(store, LocalDirStorage)
    assert store.root == tmp_path / "d"
    store.put("k", b"v")
    assert (tmp_path / "d").is_dir()


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'ftp'.*'local'.*'redis'.*'s3'"):
        open_storage("ftp://host/x")


@pytest.mark.parametrize("url", ["local://relative/path", "relative/path", ""])
def test_bad_local_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_storage(url)


def test_memory_url() -> None:
    from funcpipe.storage import MemoryStorage

    assert isinstance(open_storage("memory://"), MemoryStorage)
    with pytest.raises(ConfigError, match="memory://"):
        open_storage("memory://x")


def test_redis_url_never_shows_the_password() -> None:
    store = open_storage("redis://:s3cret@127.0.0.1:6390/2")
    assert "s3cret" not in repr(store)
    assert repr(store) == "RedisStorage('redis://127.0.0.1:6390/2')"
    store.close()
