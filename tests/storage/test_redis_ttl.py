"""Redis keys expire after their last write, so a killed job's leftovers go away by themselves."""

from __future__ import annotations

import time

import pytest

from funcpipe.errors import ConfigError
from funcpipe.storage import open_storage
from funcpipe.storage.redis_store import DEFAULT_TTL_S


def test_every_put_sets_the_default_expiry(redis_url: str) -> None:
    with open_storage(redis_url) as store:
        store.put("jobs/ttl-default/x", b"1")
        ttl = store.client.ttl("jobs/ttl-default/x")
        assert DEFAULT_TTL_S - 60 < ttl <= DEFAULT_TTL_S
        store.delete_prefix("jobs/ttl-default/")


def test_a_short_ttl_expires_the_key(redis_url: str) -> None:
    with open_storage(f"{redis_url}?ttl_s=1") as store:
        store.put("jobs/ttl-short/x", b"1")
        assert store.exists("jobs/ttl-short/x")
        time.sleep(2.2)
        assert not store.exists("jobs/ttl-short/x")


def test_ttl_zero_keeps_keys(redis_url: str) -> None:
    with open_storage(redis_url, ttl_s=0) as store:
        store.put("jobs/ttl-none/x", b"1")
        assert store.client.ttl("jobs/ttl-none/x") == -1  # no expiry
        store.delete_prefix("jobs/ttl-none/")


@pytest.mark.parametrize("bad", ["-1", "soon", "1.5"])
def test_bad_ttl_is_refused(redis_url: str, bad: str) -> None:
    with pytest.raises(ConfigError, match="ttl_s must be a whole number"):
        open_storage(f"{redis_url}?ttl_s={bad}")


def test_data_sets_do_not_expire(redis_url: str) -> None:
    """A data set serves many jobs: only a job's own keys (jobs/...) expire."""
    with open_storage(redis_url) as store:
        store.put("datasets/ttl-keep/index.json", b"{}")
        assert store.client.ttl("datasets/ttl-keep/index.json") == -1
        store.delete_prefix("datasets/ttl-keep/")
