"""Behaviour every Storage backend must have; runs once per backend listed in conftest.py."""

from __future__ import annotations

import threading
import time

import pytest

from funcpipe.errors import ConfigError, KeyExists, KeyNotFound, StorageTimeout
from funcpipe.storage import Storage


def test_put_get_round_trip(store: Storage) -> None:
    store.put("a/b/c", b"\x00payload\xff")
    store.put("empty", b"")
    assert store.get("a/b/c") == b"\x00payload\xff"
    assert store.get("empty") == b""
    assert store.exists("a/b/c") and store.exists("empty")


def test_put_accepts_bytes_like(store: Storage) -> None:
    store.put("mv", memoryview(b"abcdef")[1:4])
    store.put("ba", bytearray(b"xyz"))
    assert (store.get("mv"), store.get("ba")) == (b"bcd", b"xyz")


def test_put_overwrites(store: Storage) -> None:
    store.put("k", b"old value")
    store.put("k", b"new")
    assert store.get("k") == b"new"
    assert store.list("") == ["k"]


def test_create_only_put_creates_a_missing_key(store: Storage) -> None:
    store.put("new/key", b"first", overwrite=False)
    store.put("view", memoryview(b"abcdef")[2:], overwrite=False)
    assert (store.get("new/key"), store.get("view")) == (b"first", b"cdef")
    assert store.list("") == ["new/key", "view"]


def test_create_only_put_never_replaces_an_object(store: Storage) -> None:
    store.put("taken", b"old value")
    with pytest.raises(KeyExists, match="taken' already exists"):
        store.put("taken", b"new", overwrite=False)
    with pytest.raises(KeyExists):
        store.put("taken", b"old value", overwrite=False)  # the same bytes: still refused
    assert store.get("taken") == b"old value"
    assert store.list("") == ["taken"]  # no temp object left behind
    store.delete("taken")
    store.put("taken", b"again", overwrite=False)  # deleted: free to create once more
    assert store.get("taken") == b"again"


def _race_to_create(store: Storage, key: str, writers: int = 8) -> list[int]:
    """Start ``writers`` create-only puts of ``key`` at once; the writers that succeeded."""
    wins: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put(key, f"writer {i}".encode(), overwrite=False)
            wins.append(i)
        except KeyExists:
            pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    return wins


def test_concurrent_creates_have_exactly_one_winner(store: Storage) -> None:
    for round_ in range(3):
        wins = _race_to_create(store, f"claim/{round_}")
        assert len(wins) == 1, wins
        assert store.get(f"claim/{round_}") == f"writer {wins[0]}".encode()


def test_key_can_be_object_and_prefix(store: Storage) -> None:
    store.put("a", b"1")
    store.put("a/b", b"2")
    assert (store.get("a"), store.get("a/b")) == (b"1", b"2")


def test_missing_key_raises_key_not_found_naming_it(store: Storage) -> None:
    with pytest.raises(KeyNotFound, match="no/such/key"):
        store.get("no/such/key")
    assert not store.exists("no/such/key")


def test_delete_is_idempotent(store: Storage) -> None:
    store.put("x/y", b"1")
    store.delete("x/y")
    store.delete("x/y")
    assert not store.exists("x/y")
    assert store.list("") == []


def test_list_is_sorted_and_prefix_filtered(store: Storage) -> None:
    for key in ["b/2", "a/1", "b/10", "a", "c/x/y", "bz"]:
        store.put(key, key.encode())
    assert store.list("") == ["a", "a/1", "b/10", "b/2", "bz", "c/x/y"]
    assert store.list("b/") == ["b/10", "b/2"]
    assert store.list("b") == ["b/10", "b/2", "bz"]
    assert store.list("c/x/") == ["c/x/y"]
    assert store.list("nothing/") == []


def test_delete_prefix_only_touches_that_prefix(store: Storage) -> None:
    for key in ["a/b", "a/b/1", "a/b/2/3", "a/bc", "a/bc/1", "z"]:
        store.put(key, b"v")
    assert store.delete_prefix("a/b/") == 2
    assert store.list("") == ["a/b", "a/bc", "a/bc/1", "z"]
    assert store.delete_prefix("a/b") == 3  # string prefix, as on S3: 'a/bc' matches too
    assert store.list("") == ["z"]
    assert store.delete_prefix("missing/") == 0


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/", "a/../b", "..", "a/./b", "sp ace", "a\nb", "é", "a*b"]
)
def test_invalid_keys_are_rejected(store: Storage, key: str) -> None:
    with pytest.raises(ConfigError, match="invalid storage key"):
        store.put(key, b"x")
    with pytest.raises(ConfigError):
        store.get(key)


def test_wait_returns_once_another_thread_puts(store: Storage) -> None:
    def later() -> None:
        time.sleep(0.15)
        store.put("flag/ready", b"go")

    thread = threading.Thread(target=later)
    start = time.monotonic()
    thread.start()
    assert store.wait("flag/ready", timeout=10.0) == b"go"
    thread.join()
    assert 0.1 < time.monotonic() - start < 5.0
    assert store.exists("flag/ready")


def test_wait_for_existing_key_and_delete(store: Storage) -> None:
    store.put("once", b"data")
    assert store.wait("once", timeout=1.0, delete=True) == b"data"
    assert not store.exists("once")
    assert store.list("") == []


def test_wait_times_out_naming_key_and_timeout(store: Storage) -> None:
    start = time.monotonic()
    with pytest.raises(StorageTimeout, match=r"0\.3 s.*never/comes"):
        store.wait("never/comes", timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 2.0


def test_reader_never_sees_partial_object(store: Storage) -> None:
    """While big objects are rewritten, every read returns one whole version."""
    size = 4_000_000
    versions = [bytes([v]) * size for v in range(1, 5)]
    store.put("big", versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.put("big", versions[i % len(versions)])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 0.6
        reads = 0
        while time.monotonic() < deadline:
            data = store.get("big")
            assert data in versions
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 0
    assert store.list("") == ["big"]  # no temp object visible


def test_concurrent_puts_and_deletes_in_one_folder(store: Storage) -> None:
    """Deleting the last key of a folder must not break a concurrent put into that folder."""
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            for i in range(60):
                key = f"shared/dir/{worker}-{i}"
                store.put(key, b"x")
                assert store.get(key) == b"x"
                store.delete(key)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert store.list("") == []
