"""The writer's latest commits kept for subscribers: in seq order, bounded by count and bytes,
started over at a gap, and served only for what they hold."""

from __future__ import annotations

from pathlib import Path

import msgspec

from cuelog.runtime import RawEvent, RecordedEvent, open_event_log
from cuelog.runtime._follow import RecentEvents
from cuelog.runtime._lmdb import LmdbEventLog


def event(seq: int, size: int = 10) -> RecordedEvent:
    return RecordedEvent(
        seq=seq,
        stream="s",
        version=seq,
        type="T",
        ts=0,
        causation=None,
        correlation=None,
        actor=None,
        data=b"x" * size,
        prev=b"",
        hash=b"",
    )


def seqs(events: list[RecordedEvent] | None) -> list[int] | None:
    return None if events is None else [e.seq for e in events]


def test_kept_in_order_bounded_and_started_over_at_a_gap() -> None:
    recent = RecentEvents(max_events=5, max_bytes=1000)
    assert recent.after(0, 10) is None and recent.last_seq == 0
    recent.add([event(1), event(2), event(3)])
    assert seqs(recent.after(0, 10)) == [1, 2, 3]
    assert seqs(recent.after(1, 1)) == [2]
    assert seqs(recent.after(3, 10)) == []
    recent.add([event(2), event(3), event(4)])  # a repeat's events are skipped
    assert seqs(recent.after(0, 10)) == [1, 2, 3, 4]
    recent.add([event(n) for n in range(5, 13)])
    assert recent.after(6, 10) is None  # 7 is gone: read it from the log
    assert seqs(recent.after(7, 10)) == [8, 9, 10, 11, 12]
    assert seqs(recent.after(7, 10, max_bytes=25)) == [8, 9, 10]
    recent.add([event(20)])  # a commit it did not see came between
    assert recent.after(12, 10) is None
    assert seqs(recent.after(19, 10)) == [20] and recent.last_seq == 20


def test_payload_bytes_bound_it() -> None:
    recent = RecentEvents(max_events=100, max_bytes=100)
    recent.add([event(n, size=30) for n in range(1, 11)])
    assert seqs(recent.after(7, 10)) == [8, 9, 10]
    assert recent.after(6, 10) is None
    recent.add([event(11, size=500)])  # one bigger than the bound is still kept
    assert seqs(recent.after(10, 10)) == [11]


async def test_a_writer_serves_subscribers_its_commits_as_the_log_holds_them(
    tmp_path: Path,
) -> None:
    """What `read_all` answers from memory is what the log holds, for every position and limit,
    across commits of several streams and an idempotent repeat."""
    async with open_event_log(tmp_path / "data") as log:
        for n in range(30):
            payload = msgspec.msgpack.encode("x" * (n + 1))
            await log.append(f"s{n % 3}", [RawEvent("T", payload)] * (1 + n % 4))
        again = [RawEvent("T", msgspec.msgpack.encode("again"))]
        await log.append("s0", again, idempotency_key="k")
        await log.append("s0", again, idempotency_key="k")
        assert isinstance(log, LmdbEventLog)
        head = log.head().seq
        asked = [(after, limit) for after in range(0, head + 1, 7) for limit in (1, 5, 1000)]
        assert log._recent.last_seq == head  # what follows is read from memory
        remembered = [log.read_all(after, limit) for after, limit in asked]
        bounded = log.read_all(0, 1000, max_bytes=40)
        log._recent.clear()  # and now from the log itself
        assert remembered == [log.read_all(after, limit) for after, limit in asked]
        # A byte bound is a bound on the batch, counted on payloads here: a prefix, not empty.
        assert bounded and bounded == log.read_all(0, len(bounded))
