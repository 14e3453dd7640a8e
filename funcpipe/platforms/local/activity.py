"""A local function's activity label, shared with its parent through an anonymous mapping.

The function writes what it is doing (``set_activity``) into a small shared mapping that its
parent reads whenever it looks at the function, and still reads after the function was killed, so
a memory or timeout failure says where it happened.

Two slots, each a uint32 sequence (odd while the child writes it), a uint16 length, then UTF-8
bytes. Label n goes to slot n % 2 with final sequence 2n, so while one slot is being written the
other still holds the previous label: a kill mid-write never loses the last finished label.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

__all__ = ["ACT_SIZE", "activity_writer", "read_activity"]

ACT_SIZE = 1024
_SLOT = ACT_SIZE // 2
_ACT_HEADER = struct.Struct("<IH")
_ACT_MAX = _SLOT - 8


def activity_writer(buf: mmap.mmap) -> Callable[[str], None]:
    """The function side's sink: each call publishes one label."""
    count = [0]

    def write(label: str) -> None:
        data = str(label).encode("utf-8", "replace")[:_ACT_MAX]
        count[0] += 1
        at = _SLOT * (count[0] % 2)
        _ACT_HEADER.pack_into(buf, at, 2 * count[0] - 1, 0)
        buf[at + 8 : at + 8 + len(data)] = data
        _ACT_HEADER.pack_into(buf, at, 2 * count[0], len(data))

    return write


def read_activity(buf: mmap.mmap) -> str | None:
    """The newest finished label, or None before the first one (or after 100 torn reads)."""
    for _ in range(100):
        newest: tuple[int, bytes] | None = None
        written = False
        for at in (0, _SLOT):
            seq, length = _ACT_HEADER.unpack_from(buf, at)
            written = written or seq > 0
            if seq == 0 or seq % 2:
                continue
            data = bytes(buf[at + 8 : at + 8 + length])
            if _ACT_HEADER.unpack_from(buf, at)[0] == seq and (newest is None or seq > newest[0]):
                newest = (seq, data)
        if newest is not None:
            return newest[1].decode("utf-8", "ignore")
        if not written:
            return None
    return None
