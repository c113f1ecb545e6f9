"""The fast check of one seq range of an LMDB log's records, and of its stream index.

`cuelog verify --jobs N` runs this file as a script in N worker processes over read-only opens of
the log, each on its own range (`python -P _verify_range.py DIR FIRST LAST INDEXED LOCK INDEX`);
with one job, the verifier calls the same functions in its own process. The file imports nothing
from cuelog, so a worker starts in tens of milliseconds.

A range check touches each stored value once: one SHA-256 over the value from byte 32 on (exactly
the hashed input), two 32-byte comparisons in place and a three-field msgpack read of the body's
head (seq, stream, version). It returns the range's first `prev` and last `hash`, so the chain
across ranges is checked by the caller: range k starts with the `hash` range k-1 ends with, and
range 1 with the genesis hash. The stream index is checked by an order-independent fingerprint
(`_verify.py` explains it): the sum of the keyed hashes of every index entry, built once from the
records up to the watermark and once from the index. Python's `hash` of bytes is SipHash keyed per
process; the workers of one verify share a key (PYTHONHASHSEED, drawn at random for each verify),
so their sums add up.

Anything off makes the check answer None (a worker prints `null`); the verifier then walks the
log again, precisely, to name the first bad seq and why.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

import msgspec

HASH_SIZE = 32
PROGRESS_EVERY = 1 << 16
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


class BodyHead(msgspec.Struct, array_like=True):
    """The first three fields of a stored record's body (the rest is not decoded)."""

    seq: int
    stream: str
    version: int


body_head = msgspec.msgpack.Decoder(BodyHead)


class RangeCheck(NamedTuple):
    """What an intact range of records shows of itself."""

    events: int  # records in the range (its seqs run from its first to first + count - 1)
    first_prev: bytes  # the `prev` of its first record (empty for an empty range)
    last_hash: bytes  # the verified hash of its last record
    fingerprint: int  # sum of the keyed hashes of its index entries up to the watermark


def check_records(
    txn: Any,
    events_db: Any,
    first: int,
    last: int | None,
    indexed: int,
    progress: Callable[[int], None] | None = None,
) -> RangeCheck | None:
    """Check the records with seqs `first`..`last` (`last` None: to the end of the db, and
    `first` 1: from its first key, so no stray key before or after goes unseen)."""
    cursor = txn.cursor(db=events_db)
    if first == 1:
        if not cursor.first():
            return RangeCheck(0, b"", b"", 0)
    elif not cursor.set_key(_U64.pack(first)):
        return None
    return check_pairs(cursor.iternext(keys=True, values=True), first, last, indexed, progress)


def check_pairs(
    walk: Iterator[tuple[bytes, bytes]],
    first: int,
    last: int | None,
    indexed: int,
    progress: Callable[[int], None] | None = None,
) -> RangeCheck | None:
    """`check_records` over (u64be seq, stored record) pairs from any backend, starting at
    `first`; `progress` is called with the number of records done now and then."""
    try:
        return _walk(walk, first, last, indexed, progress)
    except (msgspec.DecodeError, ValueError, TypeError, AttributeError):
        return None


def _walk(
    walk: Iterator[tuple[bytes, bytes]],
    first: int,
    last: int | None,
    indexed: int,
    progress: Callable[[int], None] | None,
) -> RangeCheck | None:
    sha256 = hashlib.sha256
    decode_head = body_head.decode
    pack32 = _U32.pack
    end = last if last is not None else 1 << 63
    seq = first - 1
    fingerprint = 0
    first_prev = b""
    prev = b""
    key = b""
    for key, value in islice(walk, 1):  # the first record: its prev links to the range before
        seq += 1
        first_prev = value[HASH_SIZE : 2 * HASH_SIZE]
        prev = sha256(value[HASH_SIZE:]).digest()
        if len(first_prev) != HASH_SIZE or not value.startswith(prev):
            return None
        head = decode_head(value[2 * HASH_SIZE :])
        if head.seq != seq:
            return None
        if seq <= indexed:
            fingerprint += hash(head.stream.encode() + b"\x00" + pack32(head.version) + key)
        elif key != _U64.pack(seq):
            return None
    if seq < first:
        return None if last is not None else RangeCheck(0, b"", b"", 0)
    while seq < end:
        chunk_start = seq
        # Progress is reported between chunks, so the loop itself tests nothing for it; a chunk
        # ends at the watermark too, past which records have no index entries.
        if seq < indexed:
            for key, value in islice(walk, min(PROGRESS_EVERY, indexed - seq, end - seq)):
                seq += 1
                if not value.startswith(prev, HASH_SIZE):  # compares in place, no copy
                    return None
                prev = sha256(value[HASH_SIZE:]).digest()
                if not value.startswith(prev):
                    return None
                head = decode_head(value[2 * HASH_SIZE :])
                if head.seq != seq:
                    return None
                fingerprint += hash(head.stream.encode() + b"\x00" + pack32(head.version) + key)
        else:
            # Past the watermark (a few commits at most) no index entry vouches for the key.
            pack64 = _U64.pack
            for key, value in islice(walk, min(PROGRESS_EVERY, end - seq)):
                seq += 1
                if not value.startswith(prev, HASH_SIZE):
                    return None
                prev = sha256(value[HASH_SIZE:]).digest()
                if not value.startswith(prev):
                    return None
                if decode_head(value[2 * HASH_SIZE :]).seq != seq or key != pack64(seq):
                    return None
        if seq == chunk_start:
            break
        if progress is not None:
            progress(seq - first + 1)
    if last is not None and seq != last:
        return None
    # Every key up to the watermark is vouched for by an index entry's 8-byte seq (when the
    # fingerprints agree); the last key must be its seq.
    if key != _U64.pack(seq):
        return None
    return RangeCheck(seq - first + 1, bytes(first_prev), prev, fingerprint)


def index_fingerprint(entries_of_index: Iterable[tuple[bytes, bytes]]) -> tuple[int, int] | None:
    """(entries, fingerprint) of the stream index, given as (stream || 0x00 || u32be version,
    u64be seq) pairs; None when an entry is malformed."""
    fingerprint = 0
    entries = 0
    for key, seq_bytes in entries_of_index:
        if len(seq_bytes) != 8 or len(key) < 6:
            return None
        fingerprint += hash(key + seq_bytes)
        entries += 1
    return entries, fingerprint


def _stored_watermark(txn: Any, meta_db: Any, head: int) -> int:
    raw = txn.get(b"watermark", db=meta_db)
    if raw is None:
        return head
    if len(raw) != 8:
        return 0
    return min(int(_U64.unpack(raw)[0]), head)


def main(argv: list[str]) -> int:
    """Worker: check one range and print progress lines (records done), then one JSON line:
    null, or the range's count, first prev, last hash and fingerprint, the index's entries and
    fingerprint (when asked), and the head and watermark this worker's read txn saw."""
    import lmdb

    path, first, last_arg, indexed, lock, with_index = argv
    last = None if last_arg == "-" else int(last_arg)
    env = lmdb.open(
        path, readonly=True, lock=lock == "1", max_dbs=8, readahead=False, max_readers=1024
    )
    out = sys.stdout

    def progress(done: int) -> None:
        out.write(f"{done}\n")
        out.flush()

    try:
        events_db, streams_db, meta_db = (
            env.open_db(name, create=False) for name in (b"events", b"streams", b"meta")
        )
        with env.begin() as txn:
            head = int(txn.stat(events_db)["entries"])
            checked = check_records(txn, events_db, int(first), last, int(indexed), progress)
            index = None
            if checked is not None and with_index == "1":
                index = index_fingerprint(txn.cursor(db=streams_db))
                if index is None:
                    checked = None
            result = None
            if checked is not None:
                result = {
                    "count": checked.events,
                    "first_prev": checked.first_prev.hex(),
                    "last_hash": checked.last_hash.hex(),
                    "fingerprint": checked.fingerprint,
                    "index": list(index) if index is not None else None,
                    "entries": head,
                    "watermark": _stored_watermark(txn, meta_db, head),
                }
    finally:
        env.close()
    out.write(json.dumps(result) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
