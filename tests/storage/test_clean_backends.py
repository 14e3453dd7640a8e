"""Listing and cleaning jobs works the same on every backend (it only uses the interface)."""

from __future__ import annotations

import json
import time

from funcpipe.client.jobs import LIVE_WINDOW_S, Heartbeat, clean, list_jobs
from funcpipe.storage.base import Storage


def test_clean_on_every_backend(store: Storage) -> None:
    now = time.time()
    for job_id, beat in [("a", now), ("ab", now - LIVE_WINDOW_S - 1), ("abc", None)]:
        store.put(f"jobs/{job_id}/step0/act/s0/mb0", b"x")
        if beat is not None:
            manifest = {"started": beat, "heartbeat": beat}
            store.put(f"jobs/{job_id}/manifest", json.dumps(manifest).encode())
    store.put("datasets/d/index.json", b"{}")
    assert [(j.job_id, j.objects, j.live(now)) for j in list_jobs(store)] == [
        ("a", 2, True), ("ab", 2, False), ("abc", 1, False),
    ]  # fmt: skip
    assert sorted(j.job_id for j in clean(store, now=now)) == ["ab", "abc"]
    assert store.list("") == ["datasets/d/index.json", "jobs/a/manifest", "jobs/a/step0/act/s0/mb0"]


def test_heartbeat_on_every_backend(store: Storage) -> None:
    with Heartbeat(store, "hb", period_s=0.05):
        time.sleep(0.2)
        (job,) = list_jobs(store)
        assert job.job_id == "hb" and job.live() and job.started is not None
