"""Activity labels shared between a local function and its parent survive a kill mid-write."""

from __future__ import annotations

import mmap
import struct
from types import SimpleNamespace

import pytest

from funcpipe.platforms import local, local_child
from funcpipe.platforms.local import LocalPlatform
from funcpipe.platforms.local_child import ACT_SIZE, _activity_writer, read_activity


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
    write = _activity_writer(buf)
    for label in ["forward mb 0", "backward mb 3", "x" * 2000, "é"]:
        write(label)
        assert read_activity(buf) == label[:504]


@pytest.mark.parametrize(
    ("n", "done"), [(1, True), (2, False)], ids=["header marked", "bytes copied, not marked done"]
)
def test_kill_mid_write_keeps_the_previous_label(monkeypatch, n: int, done: bool) -> None:
    buf = mmap.mmap(-1, ACT_SIZE)
    write = _activity_writer(buf)
    write("forward mb 0")
    write("backward mb 3")
    header = local_child._ACT_HEADER
    monkeypatch.setattr(local_child, "_ACT_HEADER", _DiesAt(header.format, n, done))
    with pytest.raises(_Killed):
        write("a label never finished")
    monkeypatch.setattr(local_child, "_ACT_HEADER", header)
    assert read_activity(buf) == "backward mb 3"


def test_parent_keeps_the_last_label_when_a_read_is_torn(monkeypatch) -> None:
    buf = mmap.mmap(-1, ACT_SIZE)
    _activity_writer(buf)("recv act")
    run = SimpleNamespace(activity=buf, last_activity=None)
    platform = LocalPlatform.__new__(LocalPlatform)  # _activity needs no platform state
    assert platform._activity(run) == "recv act"
    monkeypatch.setattr(local, "read_activity", lambda _: None)  # a write in progress, or torn
    assert platform._activity(run) == "recv act"
