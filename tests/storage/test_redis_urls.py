"""Redis URLs: passwords never reach messages or reprs; requests cannot hang forever."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from funcpipe.errors import ConfigError, StorageError
from funcpipe.runtime.package import FunctionPackage
from funcpipe.storage import RetryPolicy, open_storage, redact_url
from funcpipe.storage.redis_store import from_url

SECRET = "s3cret-pw"


def test_redact_url_hides_user_and_password() -> None:
    assert redact_url(f"redis://user:{SECRET}@h:1/0") == "redis://***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("local:///tmp/x") == "local:///tmp/x"


@pytest.mark.parametrize(
    "url,options",
    [
        (f"redis://:{SECRET}@/0", {}),  # no host
        (f"redis://:{SECRET}@127.0.0.1:99999/0", {}),  # bad port
        (f"nosuch://:{SECRET}@h/0", {}),
    ],
)
def test_bad_redis_urls_never_echo_the_password(url: str, options: dict) -> None:
    with pytest.raises(ConfigError) as err:
        open_storage(url, **options)
    assert SECRET not in str(err.value)


def test_function_package_repr_hides_the_storage_url() -> None:
    pkg = FunctionPackage(
        job_id="j",
        storage_url=f"redis://:{SECRET}@h:1/0",
        plan={},
        stage=0,
        replica=0,
        first_step=0,
        end_step=1,
        seed=0,
        timeout_s=1.0,
        code={},
    )
    assert SECRET not in repr(pkg)


def test_a_server_that_never_answers_fails_the_request(tmp_path) -> None:
    """A silent server must not hang a function: the request gives up within its deadline."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    store = from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    store.configure_requests(RetryPolicy(deadline_s=2.0))
    t0 = time.monotonic()
    try:
        with pytest.raises(StorageError):
            store.get("a/b")
        assert time.monotonic() - t0 < store.retry.bound_s() + 1
    finally:
        store.close()
        server.close()
        for conn in accepted:
            conn.close()


def test_no_server_says_to_start_one() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = from_url(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(StorageError, match="is a Redis server running there"):
        store.exists("a")


def test_password_from_the_environment_never_shown(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from servers import start_redis, stop

    proc, url = start_redis(tmp_path, "--requirepass", SECRET)
    try:
        monkeypatch.delenv("FUNCPIPE_REDIS_PASSWORD", raising=False)
        monkeypatch.delenv("REDIS_PASSWORD", raising=False)
        start = time.monotonic()
        with pytest.raises(StorageError, match="FUNCPIPE_REDIS_PASSWORD") as err:
            open_storage(url).put("k", b"v")
        assert time.monotonic() - start < 2  # not retried for the whole deadline
        assert SECRET not in str(err.value)
        for name in ("REDIS_PASSWORD", "FUNCPIPE_REDIS_PASSWORD"):  # the second one wins
            monkeypatch.setenv(name, SECRET if name.startswith("FUNCPIPE") else "wrong")
        store = open_storage(url)
        store.put("k", b"v")
        assert store.get("k") == b"v"
        assert SECRET not in repr(store) and url in repr(store)
        store.close()
    finally:
        stop(proc)
