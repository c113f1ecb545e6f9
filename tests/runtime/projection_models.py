"""Projections used by the projection tests, shared with the crash child process."""

from __future__ import annotations

import struct

import msgspec

from cuelog.runtime import Projection, ProjectionState, RecordedEvent

_U64 = struct.Struct(">Q")


class Tally(Projection):
    """Counts events, sums their seqs, and keeps one key per event seen (by seq), so a double
    application shows in the count, the sum and the key set alike."""

    name = "tally"

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        count = int(state.get(b"count") or b"0") + 1
        total = int(state.get(b"sum") or b"0") + event.seq
        state.put(b"count", str(count).encode())
        state.put(b"sum", str(total).encode())
        state.put(b"seen:" + _U64.pack(event.seq), event.stream.encode())
        if event.type == "Poison":
            raise ValueError("a poisoned event")


def tally(state: ProjectionState) -> tuple[int, int, int]:
    """(count, sum of seqs, keys seen) as the state holds them."""
    count = int(state.get(b"count") or b"0")
    total = int(state.get(b"sum") or b"0")
    return count, total, sum(1 for _ in state.scan(b"seen:"))


def snapshot(state: ProjectionState) -> list[tuple[bytes, bytes]]:
    return list(state.scan(b""))


def tick(i: int) -> bytes:
    return msgspec.msgpack.encode(i)
