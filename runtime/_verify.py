"""Walk a log's chain and stream index and name the first bad seq and why, for every backend.

A backend hands over its records as (u64be seq, stored record) pairs in seq order and its stream
index as (stream || 0x00 || u32be version, u64be seq) pairs, the LMDB key layout; the rules and
the reasons are the same whichever backend holds the bytes.

The fast path touches each stored value once: one SHA-256 over the stored bytes from offset 32
(exactly the hashed input), two 32-byte comparisons and a three-field msgpack read of the body's
head. The index is checked by comparing an order-independent fingerprint of its entries from both
sides: the sum of each entry's keyed hash (Python's SipHash of the entry's bytes, keyed per
process, so swapping entries changes the sum). The keys of the records are not checked one by one:
every index entry holds an 8-byte seq, so when the fingerprints agree every record's key is 8
bytes; strictly increasing (the store sorts them), as many as there are records and ending at
that count, they are exactly 1..count. Only when anything disagrees does the precise walk run, from
the start, to name the first bad seq and why.

An index may be complete only up to a watermark (`indexed`: the LMDB log defers the entries of its
newest commits, see `_lmdb_index.py`): the index must then hold exactly the entries of the records
up to it, while the entries of the records after it are derived from those records themselves.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import msgspec

from cuelog.runtime._envelope import HASH_SIZE
from cuelog.runtime._lmdb_index import stored_watermark
from cuelog.runtime._records import Anchor, Progress, VerifyReport

Pairs = Iterable[tuple[bytes, bytes]]
Lookup = Callable[[bytes], bytes | None]

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_PROGRESS_EVERY = 1 << 16


class _BodyHead(msgspec.Struct, array_like=True):
    seq: int
    stream: str
    version: int


_head = msgspec.msgpack.Decoder(_BodyHead)


class _Bad(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason


def verify_environment(
    env: Any,
    events_db: Any,
    streams_db: Any,
    meta_db: Any,
    genesis: bytes,
    *,
    anchor: Anchor | None,
    anchor_key: bytes | None,
    progress: Progress | None,
) -> VerifyReport:
    """Verify an LMDB log inside one read txn, so the report describes one commit."""
    with env.begin() as txn:
        total = int(txn.stat(events_db)["entries"])
        return verify_chain(
            lambda: txn.cursor(db=events_db),
            lambda: txn.cursor(db=streams_db),
            lambda key: txn.get(key, db=events_db),
            lambda key: txn.get(key, db=streams_db),
            genesis,
            total,
            anchor=anchor,
            anchor_key=anchor_key,
            progress=progress,
            indexed=stored_watermark(txn, meta_db, total),
        )


def verify_chain(
    records: Callable[[], Pairs],
    index: Callable[[], Pairs],
    get_record: Lookup,
    get_index: Lookup,
    genesis: bytes,
    total: int,
    *,
    anchor: Anchor | None,
    anchor_key: bytes | None,
    progress: Progress | None,
    indexed: int | None = None,
) -> VerifyReport:
    """`records` and `index` start a fresh walk each call (the slow pass walks them again).
    `indexed`: the index holds the records up to this seq only (None: all of them)."""
    indexed = max(indexed, 0) if indexed is not None else 1 << 63
    checked = _fast_walk(records(), index(), genesis, total, progress, indexed)
    if checked is not None:
        hash_at_anchor = None
        if anchor is not None and 0 < anchor.seq <= checked:
            record = get_record(_U64.pack(anchor.seq))  # verified by the walk
            hash_at_anchor = None if record is None else bytes(record[:HASH_SIZE])
        try:
            anchored = _check_anchor(anchor, anchor_key, checked, hash_at_anchor)
        except _Bad as bad:
            return VerifyReport(
                ok=False,
                checked=checked,
                head_seq=total,
                first_bad_seq=bad.seq,
                reason=bad.reason,
            )
        if progress is not None:
            progress(checked, total)
        return VerifyReport(ok=True, checked=checked, head_seq=checked, anchored_seq=anchored)
    try:
        checked, fingerprint, hash_at_anchor = _walk_chain(
            records(), genesis, total, anchor, progress, indexed
        )
        anchored = _check_anchor(anchor, anchor_key, checked, hash_at_anchor)
        _check_index(records, index, get_record, get_index, checked, fingerprint, indexed)
    except _Bad as bad:
        return VerifyReport(
            ok=False,
            checked=checked or max(bad.seq - 1, 0),
            head_seq=total,
            first_bad_seq=bad.seq,
            reason=bad.reason,
        )
    if progress is not None:
        progress(checked, total)
    return VerifyReport(ok=True, checked=checked, head_seq=checked, anchored_seq=anchored)


def _fast_walk(
    records: Pairs,
    index: Pairs,
    genesis: bytes,
    total: int,
    progress: Progress | None,
    indexed: int,
) -> int | None:
    """The number of events checked when the chain and the index are intact; None as soon as
    anything is off (the precise walk then names it)."""
    sha256 = hashlib.sha256
    decode_head = _head.decode
    pack32 = _U32.pack
    prev = genesis
    seq = 0
    events_fp = 0
    last_key = b""
    walk = iter(records)
    try:
        while True:
            chunk_start = seq
            # Progress is reported between chunks, so the loop itself tests nothing for it;
            # a chunk ends at the watermark too, past which records have no index entries.
            if seq < indexed:
                for key, value in islice(walk, min(_PROGRESS_EVERY, indexed - seq)):
                    seq += 1
                    if not value.startswith(prev, HASH_SIZE):  # compares in place, no copy
                        return None
                    digest = sha256(value[HASH_SIZE:]).digest()
                    if not value.startswith(digest):
                        return None
                    head = decode_head(value[2 * HASH_SIZE :])
                    if head.seq != seq:
                        return None
                    events_fp += hash(head.stream.encode() + b"\x00" + pack32(head.version) + key)
                    prev = digest
                    last_key = key
            else:
                for key, value in islice(walk, _PROGRESS_EVERY):
                    seq += 1
                    if not value.startswith(prev, HASH_SIZE):
                        return None
                    digest = sha256(value[HASH_SIZE:]).digest()
                    if not value.startswith(digest):
                        return None
                    if decode_head(value[2 * HASH_SIZE :]).seq != seq:
                        return None
                    prev = digest
                    last_key = key
            if seq == chunk_start:
                break
            if progress is not None:
                progress(seq, total)
    except (msgspec.DecodeError, ValueError, TypeError, AttributeError):
        return None  # the precise walk names what is wrong
    if seq and last_key != _U64.pack(seq):
        return None
    index_fp = 0
    entries = 0
    for key, seq_bytes in index:
        if len(seq_bytes) != 8 or len(key) < 6:
            return None
        index_fp += hash(key + seq_bytes)
        entries += 1
    if entries != min(seq, indexed) or index_fp != events_fp:
        return None
    return seq


def _walk_chain(
    records: Pairs,
    genesis: bytes,
    total: int,
    anchor: Anchor | None,
    progress: Progress | None,
    indexed: int,
) -> tuple[int, int, bytes | None]:
    """Return (events checked, fingerprint of the index entries up to `indexed`, hash at the
    anchored seq)."""
    sha256 = hashlib.sha256
    unpack = _U64.unpack
    decode_head = _head.decode
    anchor_seq = anchor.seq if anchor is not None else -1
    hash_at_anchor: bytes | None = None
    prev = genesis
    expected = 1
    index_fp = 0
    pack32 = _U32.pack
    for key, value in records:
        if len(key) != 8 or len(value) <= 2 * HASH_SIZE:
            raise _Bad(expected, f"record after seq {expected - 1} is malformed")
        seq = unpack(key)[0]
        if seq != expected:
            raise _Bad(expected, f"seq {expected} is missing (event removed); next is {seq}")
        if value[HASH_SIZE : 2 * HASH_SIZE] != prev:
            raise _Bad(seq, _diagnose_link(value, seq))
        digest = sha256(value[HASH_SIZE:]).digest()
        if digest != value[:HASH_SIZE]:
            raise _Bad(seq, "content does not match its hash (payload edited)")
        try:
            head = decode_head(value[2 * HASH_SIZE :])
        except msgspec.DecodeError:
            raise _Bad(seq, "record body is not a valid envelope") from None
        if head.seq != seq:
            raise _Bad(seq, f"record stored at seq {seq} says it is seq {head.seq} (moved)")
        if seq <= indexed:
            index_fp += hash(head.stream.encode() + b"\x00" + pack32(head.version) + key)
        if seq == anchor_seq:
            hash_at_anchor = digest
        prev = digest
        expected += 1
        if progress is not None and seq % _PROGRESS_EVERY == 0:
            progress(seq, total)
    return expected - 1, index_fp, hash_at_anchor


def _diagnose_link(value: bytes, seq: int) -> str:
    try:
        head = _head.decode(value[2 * HASH_SIZE :])
    except msgspec.DecodeError:
        return "record body is not a valid envelope"
    if head.seq != seq:
        return f"record stored at seq {seq} says it is seq {head.seq} (events swapped or moved)"
    return f"prev hash does not match seq {seq - 1} (an earlier event was removed or replaced)"


def _check_index(
    records: Callable[[], Pairs],
    index: Callable[[], Pairs],
    get_record: Lookup,
    get_index: Lookup,
    count: int,
    events_fp: int,
    indexed: int,
) -> None:
    index_fp = 0
    entries = 0
    for key, seq_bytes in index():
        if len(key) < 6 or len(seq_bytes) != 8:
            index_fp = -1
            break
        index_fp += hash(key + seq_bytes)
        entries += 1
    if entries == min(count, indexed) and index_fp == events_fp:
        return
    _find_bad_index_entry(records, index, get_record, get_index, indexed)


def _find_bad_index_entry(
    records: Callable[[], Pairs],
    index: Callable[[], Pairs],
    get_record: Lookup,
    get_index: Lookup,
    indexed: int,
) -> None:
    for key, value in records():
        seq = _U64.unpack(key)[0]
        if seq > indexed:
            break
        head = _head.decode(value[2 * HASH_SIZE :])
        index_key = head.stream.encode() + b"\x00" + _U32.pack(head.version)
        found = get_index(index_key)
        if found is None:
            raise _Bad(seq, f"stream index has no entry for {head.stream!r} v{head.version}")
        if found != key:
            other = _U64.unpack(found)[0] if len(found) == 8 else found.hex()
            raise _Bad(
                seq,
                f"stream index maps {head.stream!r} v{head.version} to seq {other}, not {seq}",
            )
    for key, seq_bytes in index():
        if len(seq_bytes) != 8:
            raise _Bad(0, f"stream index entry {key!r} holds a malformed seq")
        record = get_record(seq_bytes)
        seq = _U64.unpack(seq_bytes)[0]
        if record is None:
            raise _Bad(seq, f"stream index entry {key!r} points to a missing seq")
        if seq > indexed:
            raise _Bad(
                seq, f"stream index entry {key!r} names seq {seq}, past its watermark {indexed}"
            )
        head = _head.decode(record[2 * HASH_SIZE :])
        if head.stream.encode() + b"\x00" + _U32.pack(head.version) != key:
            raise _Bad(seq, f"stream index entry {key!r} points to seq {seq}, another event's")
    raise _Bad(0, "the stream index does not match the events (an entry was added or changed)")


def _check_anchor(
    anchor: Anchor | None, key: bytes | None, head_seq: int, hash_at_anchor: bytes | None
) -> int | None:
    if anchor is None:
        if key is not None:
            raise _Bad(head_seq, "an anchor key was given but the log holds no anchor")
        return None
    if key is None:
        return None  # an anchor can only be checked with its key
    if anchor.seq < 0 or len(anchor.hash) != HASH_SIZE or not anchor.is_sealed_by(key):
        raise _Bad(
            max(anchor.seq, 0),
            "the anchor's MAC does not match the key (forged anchor or wrong key)",
        )
    if anchor.seq > head_seq:
        raise _Bad(
            head_seq + 1,
            f"log ends at seq {head_seq} but seq {anchor.seq} was anchored (tail truncated)",
        )
    if anchor.seq > 0 and hash_at_anchor != anchor.hash:
        raise _Bad(
            anchor.seq,
            f"seq {anchor.seq} no longer has its anchored hash (log rewritten at or before it)",
        )
    return anchor.seq
