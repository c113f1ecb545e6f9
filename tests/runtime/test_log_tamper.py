"""Each way of tampering with a closed log's LMDB file is caught by verify, at the right seq.

Every test writes a real 50-event log, closes it, edits the file through py-lmdb as an attacker
with disk access would, reopens it read-only and verifies.
"""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cuelog.runtime import Anchor, LogFormatError, VerifyReport, open_event_log
from tests.runtime.log_contract import raw
from tests.tamper import Raw, tampered

KEY = b"anchor-key-kept-outside-the-data-dir"
EVENTS = 50
_U64 = struct.Struct(">Q")


def key(seq: int) -> bytes:
    return _U64.pack(seq)


def index_key(stream: str, version: int) -> bytes:
    return stream.encode() + b"\x00" + struct.pack(">I", version)


async def write_log(path: Path, *, anchored: bool = True) -> Anchor | None:
    """50 events over three streams, anchored at the head with KEY; returns the anchor."""
    async with open_event_log(path) as log:
        for i in range(EVENTS):
            await log.append(f"stream-{i % 3}", [raw({"i": i, "text": f"event {i}"})])
        return await log.anchor(KEY) if anchored else None


async def verify(path: Path, **kwargs: Any) -> VerifyReport:
    async with open_event_log(path, readonly=True) as log:
        return await log.verify(**kwargs)


def assert_bad(report: VerifyReport, seq: int, *words: str) -> None:
    assert not report.ok, report
    assert report.first_bad_seq == seq, report
    for word in words:
        assert word in (report.reason or ""), report


def rechain(raw_log: Raw, start: int) -> None:
    """Recompute prev and hash of every event from `start` on, as a careful forger would."""
    prev = bytes(raw_log.txn.get(key(start - 1), db=raw_log.events)[:32])
    for seq in range(start, EVENTS + 1):
        body = bytes(raw_log.txn.get(key(seq), db=raw_log.events)[64:])
        digest = hashlib.sha256(prev + body).digest()
        raw_log.txn.put(key(seq), digest + prev + body, db=raw_log.events)
        prev = digest


def edit_body(value: bytes) -> bytes:
    """The stored value with its payload's text changed and nothing else."""
    assert b"event 19" in value
    return value.replace(b"event 19", b"event X9")


async def test_an_untouched_log_verifies(tmp_path: Path) -> None:
    """The 50-event fixture itself verifies, with its anchor, before any tampering."""
    await write_log(tmp_path)
    report = await verify(tmp_path, anchor_key=KEY)
    assert (report.ok, report.checked, report.head_seq, report.anchored_seq) == (
        True,
        EVENTS,
        EVENTS,
        EVENTS,
    )


async def test_an_edited_payload_is_caught(tmp_path: Path) -> None:
    """A byte changed in the body of seq 20 fails verify at seq 20 as an edited payload."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        db.txn.put(key(20), edit_body(bytes(db.txn.get(key(20), db=db.events))), db=db.events)
    report = await verify(tmp_path)
    assert_bad(report, 20, "payload edited")
    assert report.checked == 19


async def test_a_flipped_bit_anywhere_in_the_value_is_caught(tmp_path: Path) -> None:
    """Flipping one bit of seq 20's stored value, wherever it is, fails verify at seq 20."""
    await write_log(tmp_path)
    async with open_event_log(tmp_path, readonly=True) as log:
        [record] = log.read_records(19, 1)
        original = record.event.hash + record.event.prev + record.body
    rng = random.Random(20)
    for position in [0, 31, 32, 63, 64, len(original) - 1, *rng.sample(range(len(original)), 5)]:
        flipped = bytearray(original)
        flipped[position] ^= 1 << rng.randrange(8)
        with tampered(tmp_path) as db:
            db.txn.put(key(20), bytes(flipped), db=db.events)
        assert_bad(await verify(tmp_path), 20)
    with tampered(tmp_path) as db:
        db.txn.put(key(20), original, db=db.events)
    assert (await verify(tmp_path)).ok


async def test_a_removed_event_is_caught(tmp_path: Path) -> None:
    """Deleting seq 20 fails verify at seq 20 as a removed event."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        assert db.txn.delete(key(20), db=db.events)
    assert_bad(await verify(tmp_path), 20, "missing", "removed")


async def test_swapped_events_are_caught(tmp_path: Path) -> None:
    """Swapping the stored values of seqs 20 and 21 fails verify at seq 20 as swapped."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        twenty = bytes(db.txn.get(key(20), db=db.events))
        twenty_one = bytes(db.txn.get(key(21), db=db.events))
        db.txn.put(key(20), twenty_one, db=db.events)
        db.txn.put(key(21), twenty, db=db.events)
    assert_bad(await verify(tmp_path), 20, "swapped")


async def test_a_recomputed_chain_is_caught_by_the_anchor(tmp_path: Path) -> None:
    """An edit with every later hash recomputed passes the chain but fails the anchor at seq 50."""
    anchor = await write_log(tmp_path)
    assert anchor is not None
    with tampered(tmp_path) as db:
        db.txn.put(key(20), edit_body(bytes(db.txn.get(key(20), db=db.events))), db=db.events)
        rechain(db, 20)
    assert (await verify(tmp_path)).ok  # the chain alone cannot tell: that is what anchors are for
    assert_bad(await verify(tmp_path, anchor_key=KEY), EVENTS, "anchored hash", "rewritten")
    # The anchor copy kept outside the data dir catches it even if the stored one is removed.
    with tampered(tmp_path) as db:
        db.txn.delete(b"anchor", db=db.meta)
    assert_bad(await verify(tmp_path, anchor_key=KEY, anchor=anchor), EVENTS, "rewritten")
    assert_bad(await verify(tmp_path, anchor_key=KEY), EVENTS, "no anchor")


def truncate(db: Raw, first: int, *, with_index: bool) -> None:
    """Delete events `first`..50, and their streams index entries when `with_index`."""
    for seq in range(first, EVENTS + 1):
        if with_index:
            stream, version = msgspec.msgpack.decode(db.txn.get(key(seq), db=db.events)[64:])[1:3]
            assert db.txn.delete(index_key(stream, version), db=db.streams)
        assert db.txn.delete(key(seq), db=db.events)


async def test_a_truncated_tail_is_caught_by_the_anchor(tmp_path: Path) -> None:
    """Deleting the last 5 events and their index entries fails verify with the key at seq 46."""
    anchor = await write_log(tmp_path)
    assert anchor is not None
    with tampered(tmp_path) as db:
        truncate(db, 46, with_index=True)
    assert (await verify(tmp_path)).ok  # a clean cut: only the anchor can tell
    assert_bad(await verify(tmp_path, anchor_key=KEY), 46, "truncated", "seq 45")
    # A stored anchor replaced by one the attacker sealed at the new head is a forgery.
    forged = Anchor.seal(b"guess", 45, b"h" * 32)
    with tampered(tmp_path) as db:
        db.txn.put(b"anchor", msgspec.msgpack.encode(forged), db=db.meta)
    assert_bad(await verify(tmp_path, anchor_key=KEY), 45, "forged")
    # The copy of the anchor kept outside the data dir still shows the truncation.
    assert_bad(await verify(tmp_path, anchor_key=KEY, anchor=anchor), 46, "truncated")


async def test_a_tail_cut_from_events_only_is_caught_by_the_index(tmp_path: Path) -> None:
    """Deleting the last 5 events but not their index entries fails verify at 46 without a key."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        truncate(db, 46, with_index=False)
    assert_bad(await verify(tmp_path), 46, "missing seq")


async def test_a_tail_cut_from_events_only_is_reported_as_truncated(tmp_path: Path) -> None:
    """With the anchor key, deleting the last 5 events is reported as a truncated tail."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        truncate(db, 46, with_index=False)
    assert_bad(await verify(tmp_path, anchor_key=KEY), 46, "truncated")


async def test_a_streams_index_entry_pointing_elsewhere_is_caught(tmp_path: Path) -> None:
    """The streams index entry of seq 20 pointing at seq 8 fails verify at seq 20."""
    await write_log(tmp_path, anchored=False)
    # seq 20 is event i=19: stream-1, version 7; seq 8 is stream-1 version 3.
    with tampered(tmp_path) as db:
        assert bytes(db.txn.get(index_key("stream-1", 7), db=db.streams)) == key(20)
        db.txn.put(index_key("stream-1", 7), key(8), db=db.streams)
    report = await verify(tmp_path)
    assert_bad(report, 20, "stream index", "seq 8")


async def test_every_swap_of_two_streams_index_entries_is_caught(tmp_path: Path) -> None:
    """Swapping the seqs of any two adjacent versions in the streams index fails verify."""
    await write_log(tmp_path, anchored=False)
    missed: list[tuple[str, int]] = []
    for stream_no in range(3):
        stream = f"stream-{stream_no}"
        stream_seqs = [i + 1 for i in range(EVENTS) if i % 3 == stream_no]
        for version in range(1, len(stream_seqs)):
            low, high = stream_seqs[version - 1], stream_seqs[version]
            with tampered(tmp_path) as db:
                db.txn.put(index_key(stream, version), key(high), db=db.streams)
                db.txn.put(index_key(stream, version + 1), key(low), db=db.streams)
            report = await verify(tmp_path)
            if report.ok:
                missed.append((stream, version))
            else:
                assert_bad(report, low, "stream index")
            with tampered(tmp_path) as db:
                db.txn.put(index_key(stream, version), key(low), db=db.streams)
                db.txn.put(index_key(stream, version + 1), key(high), db=db.streams)
    assert (await verify(tmp_path)).ok
    assert missed == []


async def test_a_missing_streams_index_entry_is_caught(tmp_path: Path) -> None:
    """A deleted streams index entry fails verify at the seq it indexed."""
    await write_log(tmp_path, anchored=False)
    with tampered(tmp_path) as db:
        assert db.txn.delete(index_key("stream-1", 7), db=db.streams)
    assert_bad(await verify(tmp_path), 20, "no entry")


@pytest.mark.parametrize("size", [0, 1, 16, 64, 65, 200, 4000])
async def test_random_bytes_for_an_event_give_a_clean_report(tmp_path: Path, size: int) -> None:
    """Random bytes stored as seq 20 fail verify at seq 20 with a reason, never an exception."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        db.txn.put(key(20), random.Random(size).randbytes(size), db=db.events)
    report = await verify(tmp_path, anchor_key=KEY)
    assert_bad(report, 20)
    assert report.reason
    async with open_event_log(tmp_path, readonly=True) as log:
        with pytest.raises(LogFormatError):
            log.read_event(20)
        assert log.read_event(19) is not None


async def test_random_bytes_for_the_last_event_give_a_clean_report(tmp_path: Path) -> None:
    """Random bytes in place of the head event fail verify at that seq, never an exception."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        db.txn.put(key(EVENTS), random.Random(1).randbytes(300), db=db.events)
    assert_bad(await verify(tmp_path, anchor_key=KEY), EVENTS)


async def test_a_junk_key_in_the_events_db_gives_a_clean_report(tmp_path: Path) -> None:
    """An extra events entry whose key is not 8 bytes fails verify cleanly, without an exception."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        db.txn.put(b"junk", b"\x00" * 100, db=db.events)
    report = await verify(tmp_path)
    assert not report.ok


async def test_a_junk_streams_index_entry_gives_a_clean_report(tmp_path: Path) -> None:
    """An extra streams index entry with an empty value fails verify cleanly, no exception."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        db.txn.put(index_key("ghost", 1), b"", db=db.streams)
    report = await verify(tmp_path)
    assert not report.ok


async def test_a_wrong_anchor_key_reports_a_forged_anchor(tmp_path: Path) -> None:
    """Verifying an untouched log with another key reports the anchor as forged, at its seq."""
    await write_log(tmp_path)
    assert_bad(await verify(tmp_path, anchor_key=b"not the key"), EVENTS, "forged")


async def test_a_garbled_stored_anchor_is_reported_forged(tmp_path: Path) -> None:
    """Random bytes in place of the stored anchor give a forged-anchor report, not an exception."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        db.txn.put(b"anchor", random.Random(3).randbytes(40), db=db.meta)
    report = await verify(tmp_path, anchor_key=KEY)
    assert not report.ok
    assert "forged" in (report.reason or "")


async def test_a_record_moved_to_a_key_that_keeps_its_order_is_caught(tmp_path: Path) -> None:
    """A record re-keyed so that the chain still links in key order (a 9-byte key just after
    the one it left; the last seq skipped, its index entry changed to match) fails verify:
    reads by seq would miss it."""
    await write_log(tmp_path, anchored=False)
    with tampered(tmp_path) as db:
        value = bytes(db.txn.get(key(20), db=db.events))
        db.txn.delete(key(20), db=db.events)
        db.txn.put(key(19) + b"\x00", value, db=db.events)
    assert_bad(await verify(tmp_path), 20)
    await write_log(tmp_path / "tail", anchored=False)
    with tampered(tmp_path / "tail") as db:
        value = bytes(db.txn.get(key(EVENTS), db=db.events))
        db.txn.delete(key(EVENTS), db=db.events)
        db.txn.put(key(EVENTS + 1), value, db=db.events)
        # and the index made to agree with the new key
        db.txn.put(index_key("stream-1", 17), key(EVENTS + 1), db=db.streams)  # seq 50
    assert_bad(await verify(tmp_path / "tail"), EVENTS, "missing")
