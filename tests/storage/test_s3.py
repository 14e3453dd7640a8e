"""What only the S3 backend has: URL options, buckets, credentials, batching, fork safety.

``s3_server`` (tests/conftest.py) is a moto S3 server in a subprocess with dummy credentials.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from funcpipe.errors import ConfigError, KeyExists, StorageError
from funcpipe.storage import open_storage
from funcpipe.storage.s3 import S3Storage
from funcpipe.storage.s3 import store as s3_store


@pytest.fixture
def url(s3_server: Any) -> str:
    """A fresh, empty bucket on the local server."""
    return s3_server.new_bucket()


@pytest.fixture
def store(url: str) -> Iterator[S3Storage]:
    s = open_storage(url)
    assert isinstance(s, S3Storage)
    yield s
    s.close()


def record_operations(store: S3Storage) -> list[str]:
    """S3 operation names (PutObject, ListObjectsV2, ...) this process's client sends from now."""
    ops: list[str] = []
    store._client.meta.events.register("before-call.s3", lambda model, **_: ops.append(model.name))
    return ops


def test_repr_shows_bucket_prefix_and_endpoint_only(s3_server: Any) -> None:
    url = s3_server.new_bucket("team/run1")
    store = open_storage(url)
    bucket = url.split("/")[2]
    assert repr(store) == f"S3Storage('s3://{bucket}/team/run1 at {s3_server.endpoint}')"
    for secret in (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in repr(store)
    store.close()


def test_credentials_in_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="must not carry credentials") as info:
        open_storage("s3://AKIAXX:s3cretvalue@bucket/p?endpoint_url=http://127.0.0.1:1")
    assert "s3cretvalue" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown S3 storage option.*aws_secret_access_key"):
        open_storage("s3://bucket?aws_secret_access_key=x")


def test_missing_bucket_says_how_to_create_it(s3_server: Any) -> None:
    url = s3_server.url("fp-never-created")
    with pytest.raises(ConfigError, match=r"'fp-never-created' does not exist.*aws s3 mb") as info:
        open_storage(url)
    assert "create_bucket=true" in str(info.value)


def test_create_bucket_option_creates_once_and_reopens(s3_server: Any) -> None:
    bucket = f"fp-{uuid.uuid4().hex[:12]}"
    with open_storage(s3_server.url(bucket, create_bucket="true")) as first:
        first.put("k", b"v")
    with open_storage(s3_server.url(bucket, create_bucket="true")) as again:
        assert again.get("k") == b"v"  # already there: not an error, not emptied
    with open_storage(s3_server.url(bucket)) as plain:
        assert plain.list("") == ["k"]


def test_url_prefix_namespaces_keys_in_the_bucket(url: str) -> None:
    base, query = url.split("?")
    a = open_storage(f"{base}/team-a/runs?{query}")
    b = open_storage(f"{base}/team-b?{query}")
    whole = open_storage(url)
    a.put("x/1", b"a")
    b.put("x/1", b"b")
    assert (a.get("x/1"), b.get("x/1")) == (b"a", b"b")
    assert a.list("") == ["x/1"] and b.list("x/") == ["x/1"]
    assert whole.list("") == ["team-a/runs/x/1", "team-b/x/1"]
    assert a.delete_prefix("") == 1
    assert whole.list("") == ["team-b/x/1"]


@pytest.mark.parametrize(
    ("bad_url", "match"),
    [
        ("s3://", "invalid S3 bucket name"),
        ("s3://Upper_Case", "invalid S3 bucket name"),
        ("s3://ab", "invalid S3 bucket name"),
        ("s3://bucket/a//b", "invalid prefix"),
        ("s3://bucket/sp ace", "invalid prefix"),
        ("s3://bucket?endpoint_url=localhost:9000", "endpoint_url must look like"),
        ("s3://bucket?endpoint_url=http://u:p@host:1", "endpoint_url must not carry"),
        ("s3://bucket?create_bucket=maybe", "create_bucket='maybe' must be true or false"),
        ("s3://bucket?max_attempts=0", "max_attempts must be a positive number"),
        ("s3://bucket?read_timeout_s=soon", "read_timeout_s must be a positive number"),
        ("s3://bucket?addressing_style=sideways", "addressing_style must be"),
        ("s3://bucket?bogus=1", r"unknown S3 storage option\(s\) \['bogus'\]"),
    ],
)
def test_bad_urls_are_rejected_before_any_request(bad_url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_storage(bad_url)


def test_keyword_options_match_the_query(s3_server: Any) -> None:
    bucket = f"fp-{uuid.uuid4().hex[:12]}"
    store = open_storage(
        f"s3://{bucket}/p", endpoint_url=s3_server.endpoint, region="us-east-1", create_bucket=True
    )
    store.put("k", b"v")
    assert store.get("k") == b"v"
    with pytest.raises(ConfigError, match="unknown S3 storage option"):
        open_storage(f"s3://{bucket}", endpoint_url=s3_server.endpoint, password="x")


def test_missing_credentials_is_a_config_error(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3_server.new_bucket()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="no AWS credentials found.*AWS_ACCESS_KEY_ID"):
        open_storage(url)


def test_unreachable_endpoint_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot reach S3 bucket 'fp-x'"):
        open_storage("s3://fp-x?endpoint_url=http://127.0.0.1:1&max_attempts=1")


def test_delete_prefix_batches_and_list_pages(
    store: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_store, "DELETE_BATCH", 3)
    monkeypatch.setattr(s3_store, "LIST_PAGE", 2)
    keys = [f"d/{i:02d}" for i in range(7)] + ["keep"]
    for key in keys:
        store.put(key, b"x")
    ops = record_operations(store)
    assert store.list("d/") == keys[:7]
    assert ops.count("ListObjectsV2") == 4  # 7 keys, 2 per page
    ops.clear()
    assert store.delete_prefix("d/") == 7
    assert ops.count("DeleteObjects") == 3  # 3 + 3 + 1
    assert store.list("") == ["keep"]


def test_wait_polls_one_key_never_a_listing(store: S3Storage) -> None:
    ops = record_operations(store)
    timer = threading.Timer(0.2, store.put, args=("flag", b"go"))
    timer.start()
    assert store.wait("flag", timeout=10.0, delete=True) == b"go"
    timer.join()
    assert set(ops) == {"GetObject", "PutObject", "DeleteObject"}
    assert ops.count("GetObject") >= 2  # it did poll before the put landed
    assert not store.exists("flag")


def _child_uses_inherited_store(store: S3Storage) -> None:
    parent_client = store._client_obj
    store.put("from/child", str(os.getpid()).encode())
    fresh = store._client_obj is not None and store._client_obj is not parent_client
    os._exit(0 if fresh and store.get("from/child") == str(os.getpid()).encode() else 3)


def test_forked_child_makes_its_own_client(store: S3Storage) -> None:
    store.put("from/parent", b"p")  # the parent's client now holds open connections
    parent_client = store._client_obj
    proc = multiprocessing.get_context("fork").Process(
        target=_child_uses_inherited_store, args=(store,)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert store._client_obj is parent_client  # the parent keeps its own
    assert store.get("from/child") == str(proc.pid).encode()
    assert store.list("") == ["from/child", "from/parent"]


def test_put_is_one_request_and_large_objects_round_trip(store: S3Storage) -> None:
    ops = record_operations(store)
    data = bytes(range(256)) * 40_000  # 10 MB, above boto3's multipart threshold for uploads
    store.put("big", memoryview(data))
    assert ops == ["PutObject"]
    assert store.get("big") == data


def test_large_objects_move_in_parallel_parts_when_asked(url: str) -> None:
    store = open_storage(f"{url}&part_mb=5&parallel_parts=3")
    ops = record_operations(store)
    data = bytes(range(256)) * 50_000  # 12.8 MB: three upload parts of >= 5 MiB
    store.put("big", memoryview(data))
    assert ops.count("UploadPart") == 3 and ops.count("CompleteMultipartUpload") == 1
    assert "PutObject" not in ops
    ops.clear()
    assert store.get("big") == data
    assert ops == ["GetObject"] * 3  # ranges of 5 MiB: the first says the size
    store.put("empty", b"")
    store.put("small", b"abc")
    assert (store.get("empty"), store.get("small")) == (b"", b"abc")
    store.close()


def test_create_only_puts_are_conditional_writes_whole_or_in_parts(url: str) -> None:
    store = open_storage(f"{url}&part_mb=5&parallel_parts=3")
    ops = record_operations(store)
    store.put("small", b"abc", overwrite=False)
    assert ops == ["PutObject"]
    data = bytes(range(256)) * 50_000  # 12.8 MB: three upload parts, then the conditional end
    store.put("big", data, overwrite=False)
    assert ops.count("CompleteMultipartUpload") == 1
    ops.clear()
    with pytest.raises(KeyExists, match="'big' already exists"):
        store.put("big", bytes(len(data)), overwrite=False)
    assert ops.count("AbortMultipartUpload") == 1  # the refused upload leaves no parts behind
    with pytest.raises(KeyExists, match="'small' already exists"):
        store.put("small", b"xyz", overwrite=False)
    assert (store.get("small"), store.get("big")) == (b"abc", data)
    store.close()


def test_every_request_of_a_multipart_transfer_is_billed(url: str) -> None:
    from funcpipe.storage.throttle import ThrottledStorage

    inner = open_storage(f"{url}&part_mb=5&parallel_parts=3")
    link = ThrottledStorage(inner)
    ops = record_operations(inner)
    data = bytes(range(256)) * 50_000  # 12.8 MB: three parts each way
    link.put("big", memoryview(data))
    assert link.get("big") == data
    stats = link.stats.as_dict()
    sent_puts = sum(op != "GetObject" for op in ops)  # create, 3 parts, complete
    assert (stats["puts"], stats["gets"]) == (sent_puts, ops.count("GetObject")) == (5, 3)
    inner.close()


def test_retried_attempts_are_billed(url: str) -> None:
    from funcpipe.storage.throttle import ThrottledStorage

    inner = open_storage(f"{url}&faults=0.3&faults_seed=3")
    link = ThrottledStorage(inner)
    ops = record_operations(inner)
    for i in range(20):
        link.put(f"k/{i}", b"x")
        assert link.get(f"k/{i}") == b"x"
    stats = link.stats.as_dict()
    # Injected faults fail some attempts before or after they reach the server, so the
    # attempts the bill counts are at least the requests the server saw, and more than 20 each.
    assert stats["puts"] >= ops.count("PutObject") >= 20
    assert stats["gets"] >= ops.count("GetObject") >= 20
    assert stats["puts"] + stats["gets"] > 40  # failed attempts were retried
    inner.close()


def test_on_aws_parts_are_parallel_by_default_elsewhere_single(url: str) -> None:
    from funcpipe.storage.s3 import S3Options

    assert S3Options(bucket="b").threads == 8
    assert S3Options(bucket="b", endpoint_url="http://127.0.0.1:9000").threads == 1
    assert open_storage(url).options.threads == 1
