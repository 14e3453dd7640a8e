"""Function heartbeats and the client-gone check, and the client's replay of a batch stream."""

from __future__ import annotations

import json
import time

import pytest

from funcpipe.client.manager import Replay
from funcpipe.errors import ConfigError
from funcpipe.runtime.heartbeat import FunctionHeartbeat
from funcpipe.storage.memory import MemoryStorage


def test_heartbeat_beats_and_notices_a_silent_client() -> None:
    own, job = MemoryStorage(), MemoryStorage()
    job.put("manifest", b"beat 1")
    gone: list[str] = []
    hb = FunctionHeartbeat(own, job, stage=1, replica=2, period_s=0.05, client_key="manifest",
                           client_deadline_s=0.4, on_client_gone=gone.append).start()  # fmt: skip
    try:
        first = json.loads(own.get("heartbeat/s1r2"))
        for i in range(6):  # the client keeps beating: nothing happens
            time.sleep(0.1)
            job.put("manifest", f"beat {i + 2}".encode())
        assert not gone
        assert json.loads(own.get("heartbeat/s1r2"))["seq"] > first["seq"] + 3
        t0 = time.monotonic()
        while not gone and time.monotonic() - t0 < 5:  # the client stops beating
            time.sleep(0.02)
        assert gone and "unchanged for" in gone[0]
        assert 0.4 <= time.monotonic() - t0 <= 0.4 + 0.5
    finally:
        hb.close()


def test_a_missing_client_heartbeat_counts_as_gone() -> None:
    gone: list[str] = []
    hb = FunctionHeartbeat(MemoryStorage(), MemoryStorage(), stage=0, replica=0, period_s=0.05,
                           client_key="manifest", client_deadline_s=0.2,
                           on_client_gone=gone.append).start()  # fmt: skip
    try:
        time.sleep(0.6)
        assert gone and "missing" in gone[0]
    finally:
        hb.close()


def test_replay_holds_a_stream_from_the_last_checkpoint_on() -> None:
    replay = Replay(iter(range(100)), start=3)  # resumed at step 3: items 0-2 are skipped
    assert [replay.get(s) for s in (3, 4, 5)] == [3, 4, 5]
    assert replay.get(3) == 3  # a rollback reads it again
    replay.release_before(5)
    assert replay.get(6) == 6 and replay.get(5) == 5
    with pytest.raises(ConfigError, match="no longer held"):
        replay.get(4)
    listed = Replay([10, 11, 12])
    assert listed.get(2) == 12 and listed.get(0) == 10  # a list is indexed, never held
    with pytest.raises(ConfigError, match="ran out after 3 steps"):
        listed.get(3)
