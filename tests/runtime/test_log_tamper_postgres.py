"""Each way of tampering with a PostgreSQL log's tables is caught by verify, at the right seq.

Every test writes a real 50-event log, closes it, edits the tables with SQL as someone with write
access to the database would, reopens it read-only and verifies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from cuelog.runtime import Anchor, VerifyReport, open_event_log
from tests.postgres import fresh_database, run_sql
from tests.runtime.log_contract import raw

KEY = b"anchor-key-kept-outside-the-database"
EVENTS = 50


@pytest.fixture
async def url() -> Any:
    with fresh_database() as created:
        async with open_event_log(created) as log:
            for i in range(EVENTS):
                await log.append(f"stream-{i % 3}", [raw({"i": i, "text": f"event {i}"})])
            await log.anchor(KEY)
        yield created


async def verify(url: str, **kwargs: Any) -> VerifyReport:
    async with open_event_log(url, readonly=True) as log:
        return await log.verify(**kwargs)


def assert_bad(report: VerifyReport, seq: int, *words: str) -> None:
    assert not report.ok, report
    assert report.first_bad_seq == seq, report
    for word in words:
        assert word in (report.reason or ""), report


def record(url: str, seq: int) -> bytes:
    [(value,)] = run_sql(url, "SELECT record FROM cuelog_events WHERE seq = %s", [seq])
    assert isinstance(value, bytes)
    return value


def store(url: str, seq: int, value: bytes) -> None:
    run_sql(url, "UPDATE cuelog_events SET record = %s WHERE seq = %s", [value, seq])


def rechained(url: str, start: int) -> Iterator[tuple[int, bytes]]:
    """Every record from `start` on with prev and hash recomputed, as a careful forger would."""
    prev = record(url, start - 1)[:32]
    for seq in range(start, EVENTS + 1):
        body = record(url, seq)[64:]
        digest = hashlib.sha256(prev + body).digest()
        yield seq, digest + prev + body
        prev = digest


async def test_an_untouched_log_verifies(url: str) -> None:
    """The 50-event fixture itself verifies, with its anchor, before any tampering."""
    report = await verify(url, anchor_key=KEY)
    assert (report.ok, report.checked, report.anchored_seq) == (True, EVENTS, EVENTS)


async def test_an_edited_body_is_caught(url: str) -> None:
    """A changed payload in seq 20's row fails verify at seq 20 as an edited payload."""
    store(url, 20, record(url, 20).replace(b"event 19", b"event X9"))
    assert_bad(await verify(url), 20, "payload edited")


async def test_a_deleted_row_is_caught(url: str) -> None:
    """Deleting seq 20's row fails verify at seq 20 as a removed event."""
    run_sql(url, "DELETE FROM cuelog_events WHERE seq = 20")
    assert_bad(await verify(url), 20, "missing", "removed")


async def test_swapped_rows_are_caught(url: str) -> None:
    """Swapping the records of seqs 20 and 21 fails verify at seq 20 as swapped."""
    one, two = record(url, 20), record(url, 21)
    store(url, 20, two)
    store(url, 21, one)
    assert_bad(await verify(url), 20, "swapped")


async def test_a_recomputed_chain_is_caught_by_the_anchor(url: str) -> None:
    """An edit with every later hash and the head row recomputed fails the anchor at seq 50."""
    store(url, 20, record(url, 20).replace(b"event 19", b"event X9"))
    for seq, value in list(rechained(url, 20)):
        store(url, seq, value)
    run_sql(url, "UPDATE cuelog_head SET hash = %s", [record(url, EVENTS)[:32]])
    assert (await verify(url)).ok  # without the key the forgery holds
    assert_bad(await verify(url, anchor_key=KEY), EVENTS, "anchored hash", "rewritten")


async def test_a_truncated_tail_is_caught(url: str) -> None:
    """Deleting the last 5 rows fails verify at seq 46: by the head row, and by the anchor when
    the head row was rewritten too."""
    run_sql(url, "DELETE FROM cuelog_events WHERE seq > 45")
    assert_bad(await verify(url), 46, "tail truncated")
    run_sql(url, "UPDATE cuelog_head SET seq = 45, hash = %s", [record(url, 45)[:32]])
    run_sql(
        url,
        "UPDATE cuelog_streams s SET version = (SELECT max(version) FROM cuelog_events e "
        "WHERE e.stream = s.stream)",
    )
    assert (await verify(url)).ok
    assert_bad(await verify(url, anchor_key=KEY), 46, "truncated", "seq 45")


async def test_a_corrupted_stream_index_is_caught(url: str) -> None:
    """seq 20's row claiming another version fails verify at seq 20 in the stream index."""
    run_sql(url, "UPDATE cuelog_events SET version = 99 WHERE seq = 20")
    assert_bad(await verify(url), 20, "stream index", "no entry")


async def test_a_wrong_stream_version_is_caught(url: str) -> None:
    """cuelog_streams listing a stream at the wrong version fails verify at its last event."""
    run_sql(url, "UPDATE cuelog_streams SET version = 3 WHERE stream = 'stream-1'")
    assert_bad(await verify(url), 50, "stream-1", "version 3")


async def test_a_forged_anchor_is_caught(url: str) -> None:
    """An anchor rewritten without the key is reported as forged at its seq."""
    forged = Anchor.seal(b"not the key", 10, record(url, 10)[:32])
    run_sql(
        url,
        "UPDATE cuelog_meta SET value = %s WHERE key = 'anchor'",
        [msgspec.msgpack.encode(forged)],
    )
    assert_bad(await verify(url, anchor_key=KEY), 10, "forged")


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200])
async def test_random_bytes_for_a_record_give_a_clean_report(url: str, size: int) -> None:
    """Random bytes stored as seq 20's record fail verify at seq 20 with a reason, never raise."""
    store(url, 20, bytes(range(256))[:size])
    assert_bad(await verify(url), 20)
