"""Payloads over the platform's limit: data parts go to storage and back, code never does."""

from __future__ import annotations

import json

import pytest

from funcpipe.errors import ConfigError
from funcpipe.platforms import offload
from funcpipe.storage import open_storage


def _package(**code) -> dict:
    return {"job_id": "j", "stage": 1, "replica": 0, "generation": 2, "code": code}


def test_small_payload_travels_as_is(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    pkg = _package(loss={"pickle": "QUJD", "tensors": "x" * 100})
    event = json.loads(offload.fit_payload(pkg, shared, 10_000, what="f"))
    assert event == {"funcpipe": 1, "package": pkg}
    assert shared.list("") == []


def test_big_data_goes_to_storage_and_comes_back(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    blob = "T" * 50_000
    pkg = _package(layers={"pickle": "P" * 3000, "tensors": blob}, loss={"import": "a.b:c"})
    body = offload.fit_payload(pkg, shared, 8_000, what="f")
    assert len(body) <= 8_000
    event = json.loads(body)
    # The pickled code stays inside the payload; only the data moved.
    assert event["package"]["code"]["layers"]["pickle"] == "P" * 3000
    moved = event["package"]["code"]["layers"]["tensors"]
    assert set(moved) == {offload.OFFLOAD_MARK, "sha256"}
    assert offload.restore_payload(event["package"], shared) == pkg


def test_tampered_part_is_refused(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    pkg = _package(layers={"pickle": "P", "tensors": "T" * 50_000})
    event = json.loads(offload.fit_payload(pkg, shared, 4_000, what="f"))
    key = event["package"]["code"]["layers"]["tensors"][offload.OFFLOAD_MARK]
    shared.put(key, b"other bytes")
    with pytest.raises(Exception, match="checksum"):
        offload.restore_payload(event["package"], shared)


def test_pickled_code_over_the_limit_names_size_and_fix(tmp_path) -> None:
    shared = open_storage(f"local://{tmp_path}")
    pkg = _package(layers={"pickle": "P" * 300_000})
    with pytest.raises(ConfigError) as err:
        offload.fit_payload(pkg, shared, 256 * 1024, what="function 'stage1-replica0'")
    text = str(err.value)
    assert "stage1-replica0" in text and "262144 bytes" in text
    assert "300000 bytes of it are pickled code" in text and "code_ref" in text
    assert shared.list("") == [] or all(k.startswith("control/payload/") for k in shared.list(""))
