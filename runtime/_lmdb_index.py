"""The LMDB log's deferred stream index: the entries of recent commits, kept in memory.

The `streams` db is complete up to the watermark (`meta/watermark`, the u64be seq up to which
every event has its entry), and the writer moves the watermark in the same txn as the entries it
covers. The entries of the events after it live in an `IndexTail`: the writer adds each commit's
entries to its tail once the commit is durable and writes them out every few commits (or when
idle, or closing); a read-only open rebuilds its tail from the records after the watermark in its
read txn. Readers merge the two, so every read by stream is exact whenever the index is flushed.

A log written before the watermark existed has no `meta/watermark`: its index is complete.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import msgspec

from cuelog.runtime._envelope import HASH_SIZE
from cuelog.runtime._errors import LogFormatError
from cuelog.runtime._verify_range import body_head

WATERMARK: Final = b"watermark"
_U64 = struct.Struct(">Q")


class IndexTail:
    """The stream index entries of the events after the watermark, in seq order.

    A stream's entries in the tail are its newest versions, one after another: `streams` maps
    it to its first version in the tail and the seq of each version from there on.
    """

    __slots__ = ("commits", "entries", "head", "streams", "watermark")

    def __init__(self, watermark: int) -> None:
        self.watermark = watermark
        self.head = watermark  # the last seq this tail covers
        self.commits = 0  # commits added since the watermark moved
        self.entries: list[tuple[str, int, int]] = []  # (stream, version, seq)
        self.streams: dict[str, tuple[int, list[int]]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entries: list[tuple[str, int, int]]) -> None:
        streams = self.streams
        for stream, version, seq in entries:
            known = streams.get(stream)
            if known is None:
                streams[stream] = (version, [seq])
            else:
                known[1].append(seq)
        self.entries += entries
        if entries:
            self.head = entries[-1][2]

    def version(self, stream: str) -> int | None:
        """The stream's newest version when the tail holds it, else None (ask the index)."""
        known = self.streams.get(stream)
        return None if known is None else known[0] + len(known[1]) - 1


def stored_watermark(txn: Any, meta_db: Any, head: int) -> int:
    """The seq up to which the `streams` db is complete, as `txn` sees it (never past `head`)."""
    raw = txn.get(WATERMARK, db=meta_db)
    if raw is None:
        return head  # written before the deferred index: every entry is there
    if len(raw) != 8:
        return 0  # garbled: trust none of the index (verify names what is off)
    return min(int(_U64.unpack(raw)[0]), head)


def last_seq(txn: Any, events_db: Any) -> int:
    cursor = txn.cursor(db=events_db)
    if cursor.last() and len(cursor.key()) == 8:
        return int(_U64.unpack(cursor.key())[0])
    return 0


def read_tail(
    txn: Any, events_db: Any, meta_db: Any, known: IndexTail | None, *, strict: bool
) -> IndexTail:
    """The tail as `txn` sees it: `known` extended by the records after its head when the
    watermark has not moved since, else rebuilt from the records after the watermark.

    `strict` (a writer opening the log) raises on a record that cannot be read; otherwise the
    tail stops before it and verify names it.
    """
    head = last_seq(txn, events_db)
    watermark = stored_watermark(txn, meta_db, head)
    if known is None or known.watermark != watermark or known.head > head:
        known = IndexTail(watermark)
    if known.head == head:
        return known
    entries: list[tuple[str, int, int]] = []
    cursor = txn.cursor(db=events_db)
    if cursor.set_range(_U64.pack(known.head + 1)):
        expected = known.head + 1
        for value in cursor.iternext(keys=False, values=True):
            try:
                body = body_head.decode(value[2 * HASH_SIZE :])
            except msgspec.DecodeError:
                body = None
            if body is None or body.seq != expected:
                if strict:
                    raise LogFormatError(
                        f"the record at seq {expected} cannot be indexed; run `cuelog verify`"
                    )
                break
            entries.append((body.stream, body.version, body.seq))
            expected += 1
    known.add(entries)
    return known
