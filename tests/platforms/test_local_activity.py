"""Activity labels shared between a local function and its parent survive a kill mid-write."""

from __future__ import annotations

import mmap
import struct
from types import SimpleNamespace

import pytest

from funcpipe.platforms.local import activity, runs
from funcpipe.platforms.local.activity import ACT_SIZE, activity_writer, read_activity


class _Killed(BaseException):
    """Stands in for SIGKILL: the writer stops where it is and never runs again."""


class _DiesAt(struct.Struct):
    """A header format that dies at its n-th pack: after it (`done`) or before it."""

    def __init__(self, fmt: str, n: int, done: bool) -> None:
        super().__init__(fmt)
        self.left, self.done = n, done

    def pack_into(self, buffer, offset: int, *values) -> None:
        self.left -= 1
        if self.left == 0 and not self.done:
            raise _Killed
        super().pack_into(buffer, offset, *values)
        if self.left == 0:
            raise _Killed


def test_labels_round_trip() -> None:
    buf = mmap.mmap(-1, ACT_SIZE)
    assert read_activity(buf) is None
    write = activity_writer(buf)
    for label in ["forward mb 0", "backward mb 3", "x" * 2000, "é"]:
        write(label)
        assert read_activity(buf) == label[:504]


@pytest.mark.parametrize(
    ("n", "done"), [(1, True), (2, False)], ids=["header marked", "bytes copied, not marked done"]
)
def test_kill_mid_write_keeps_the_previous_label(monkeypatch, n: int, done: bool) -> None:
    buf = mmap.mmap(-1, ACT_SIZE)
    write = activity_writer(buf)
    write("forward mb 0")
    write("backward mb 3")
    header = activity._ACT_HEADER
    monkeypatch.setattr(activity, "_ACT_HEADER", _DiesAt(header.format, n, done))
    with pytest.raises(_Killed):
        write("a label never finished")
    monkeypatch.setattr(activity, "_ACT_HEADER", header)
    assert read_activity(buf) == "backward mb 3"


def test_parent_keeps_the_last_label_when_a_read_is_torn(monkeypatch) -> None:
    buf = mmap.mmap(-1, ACT_SIZE)
    activity_writer(buf)("recv act")
    run = SimpleNamespace(activity=buf, last_activity=None)
    assert runs.Run.label(run) == "recv act"  # a label needs no process
    monkeypatch.setattr(runs, "read_activity", lambda _: None)  # a write in progress, or torn
    assert runs.Run.label(run) == "recv act"
