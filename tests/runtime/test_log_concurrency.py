"""Many appenders at once: order per appender, contiguous seqs, and cancellation mid-append."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from cuelog.runtime import (
    EventLog,
    IdempotencyConflict,
    LogClosed,
    RecordedEvent,
    StorageFull,
    open_event_log,
)
from tests.runtime.log_contract import GUARD_SECONDS, raw, seqs

APPENDERS = 48
APPENDS_EACH = 15


async def test_concurrent_appenders_keep_order_and_leave_no_gaps(tmp_path: Path) -> None:
    """48 concurrent appenders each see their appends in order; seqs are 1..N and verify passes."""
    by_appender: dict[int, list[list[RecordedEvent]]] = {i: [] for i in range(APPENDERS)}
    rng = random.Random(4)
    sizes = {i: [rng.randint(1, 3) for _ in range(APPENDS_EACH)] for i in range(APPENDERS)}

    async def appender(log: EventLog, me: int) -> None:
        for n, size in enumerate(sizes[me]):
            own = f"appender-{me}"
            by_appender[me].append(
                await log.append(
                    own,
                    [raw([me, n, k]) for k in range(size)],
                    expected_version=log.stream_version(own),
                )
            )
            if n % 3 == 0:
                by_appender[me].append(await log.append("shared", [raw([me, n])]))

    async with open_event_log(tmp_path / "log") as log:
        with trio.fail_after(GUARD_SECONDS * 3):
            async with trio.open_nursery() as nursery:
                for me in range(APPENDERS):
                    nursery.start_soon(appender, log, me)
        total = sum(sum(s) + len(range(0, APPENDS_EACH, 3)) for s in sizes.values())
        everything = log.read_all(limit=total + 1)
        assert seqs(everything) == list(range(1, total + 1))
        for me, appends in by_appender.items():
            mine = [seq for records in appends for seq in seqs(records)]
            assert mine == sorted(mine), f"appender {me} saw its appends reordered"
            own = log.read_stream(f"appender-{me}")
            assert [r.version for r in own] == list(range(1, sum(sizes[me]) + 1))
            assert [r.data for r in own] == [
                raw([me, n, k]).data for n, size in enumerate(sizes[me]) for k in range(size)
            ]
        assert [r.version for r in log.read_stream("shared")] == list(
            range(1, APPENDERS * len(range(0, APPENDS_EACH, 3)) + 1)
        )
        stats = log.statistics()
        assert stats.batches < stats.appends  # appends were grouped into shared commits
        report = await log.verify()
        assert (report.ok, report.checked) == (True, total)


async def test_an_append_cancelled_before_the_writer_takes_it_is_dropped(tmp_path: Path) -> None:
    """Cancelled while still queued, an append writes nothing and its neighbours still land."""
    landed: dict[int, list[RecordedEvent]] = {}

    async def append(log: EventLog, i: int, cancel_first: bool) -> None:
        with trio.CancelScope() as scope:
            if cancel_first:
                scope.cancel()  # delivered at the append's first wait: still in the queue
            landed[i] = await log.append(f"s{i}", [raw(i), raw(i)])

    async with open_event_log(tmp_path / "log") as log:
        with trio.fail_after(GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(append, log, i, i % 2 == 0)
        assert sorted(landed) == [1, 3, 5, 7, 9]
        assert sorted(s for records in landed.values() for s in seqs(records)) == list(range(1, 11))
        assert [log.stream_version(f"s{i}") for i in range(4)] == [0, 2, 0, 2]
        [after] = await log.append("after", [raw(0)])
        assert after.seq == 11
        assert log.statistics().pending == 0
        assert (await log.verify()).ok


async def test_an_append_cancelled_mid_commit_lands_whole(tmp_path: Path) -> None:
    """Cancelled while its group is being written, an append still returns its durable records."""
    returned: dict[int, list[RecordedEvent]] = {}
    scopes: list[trio.CancelScope] = []

    async def append(log: EventLog, i: int) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            returned[i] = await log.append(f"s{i}", [raw(i)] * 3, idempotency_key=f"k{i}")
            await trio.sleep_forever()  # only the cancel ends this

    async with open_event_log(tmp_path / "log") as log:
        with trio.fail_after(GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(append, log, i)
                # Multi-event groups commit in a worker thread: wait until the writer is in it.
                await trio.testing.wait_all_tasks_blocked()
                for scope in scopes:
                    scope.cancel()
        assert sorted(returned) == list(range(8))
        assert sorted(s for records in returned.values() for s in seqs(records)) == list(
            range(1, 25)
        )
        for i, records in returned.items():
            assert log.read_stream(f"s{i}") == records
            # A client retrying after its cancel gets the same records, not a duplicate.
            assert await log.append(f"s{i}", [raw(i)] * 3, idempotency_key=f"k{i}") == records
        assert log.head().seq == 24
        assert (await log.verify()).ok


async def test_cancelling_appenders_at_random_moments_never_breaks_the_writer(
    tmp_path: Path,
) -> None:
    """Appenders cancelled at any moment land whole or not at all, and the log goes on working."""
    rng = random.Random(7)
    acked: dict[str, list[RecordedEvent]] = {}

    async def append(log: EventLog, scope: trio.CancelScope, stream: str, size: int) -> None:
        with scope:
            acked[stream] = await log.append(stream, [raw(stream)] * size)

    async with open_event_log(tmp_path / "log") as log:
        for round_ in range(10):
            scopes = [trio.CancelScope() for _ in range(12)]
            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    for i, scope in enumerate(scopes):
                        nursery.start_soon(append, log, scope, f"r{round_}-{i}", rng.randint(1, 3))
                    for _ in range(rng.randint(0, 4)):
                        await trio.lowlevel.checkpoint()
                    for scope in rng.sample(scopes, 6):
                        scope.cancel()
        everything = log.read_all(limit=10_000)
        assert seqs(everything) == list(range(1, len(everything) + 1))
        by_stream: dict[str, list[RecordedEvent]] = {}
        for event in everything:
            by_stream.setdefault(event.stream, []).append(event)
        for stream, records in acked.items():
            assert by_stream[stream] == records
        for stream, records in by_stream.items():
            assert len(records) == len(acked.get(stream, records))  # whole or not at all
            assert [r.version for r in records] == list(range(1, len(records) + 1))
        assert 60 <= len(by_stream) < 120  # the cancels hit queued appends, not only finished ones
        assert log.statistics().pending == 0
        [last] = await log.append("last", [raw(0)])
        assert last.seq == len(everything) + 1
        assert (await log.verify()).ok


async def test_appends_that_form_while_a_group_commits_see_its_versions_and_keys(
    tmp_path: Path,
) -> None:
    """A crowd of appends is split into a committing group and a forming one: the forming group
    numbers its stream versions after the committing group's, and a retry of an idempotent
    append from the committing group gets that append's records (a changed body, a conflict)."""
    crowd = 40
    results: dict[int, list[RecordedEvent] | BaseException] = {}

    async def append(log: EventLog, i: int) -> None:
        key = "first-and-last" if i in (0, crowd - 1) else f"other-{i}"
        body = [raw("retried")] if i in (0, crowd - 1) else [raw(i)]
        if i in (1, crowd - 2):
            key, body = "changed", [raw(i)]
        try:
            results[i] = await log.append("shared", body, idempotency_key=key)
        except IdempotencyConflict as exc:
            results[i] = exc

    async with open_event_log(tmp_path / "log") as log:
        with trio.fail_after(GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                for i in range(crowd):
                    nursery.start_soon(append, log, i)
        assert log.statistics().batches == 2  # one group committed while the other formed
        assert results[0] == results[crowd - 1]
        conflicts = [i for i in (1, crowd - 2) if isinstance(results[i], IdempotencyConflict)]
        assert len(conflicts) == 1
        stream = log.read_stream("shared")
        assert [r.version for r in stream] == list(range(1, crowd - 1))
        assert seqs(stream) == list(range(1, crowd - 1))
        assert (await log.verify()).ok


async def test_a_failed_commit_makes_the_group_formed_on_top_of_it_start_again(
    tmp_path: Path,
) -> None:
    """When a group commit fails (the log is full), the group formed on top of it is built again
    on the last durable event: what is acknowledged is contiguous, readable, and verifies."""
    acked: list[RecordedEvent] = []
    refused = 0
    big, small = raw("x" * 150_000), raw("x" * 300)

    async def appender(log: EventLog, me: int) -> None:
        # Big appends stop fitting before small ones do: a group holding one fails, and the
        # group after it, formed meanwhile, still fits.
        nonlocal refused
        for n in range(60):
            try:
                acked.extend(await log.append(f"a{me}", [big if me < 4 else small, raw(n)]))
            except StorageFull:
                refused += 1

    async with open_event_log(
        tmp_path / "log", initial_map_size=1 << 20, max_map_size=1 << 20
    ) as log:
        with trio.fail_after(GUARD_SECONDS * 3):
            async with trio.open_nursery() as nursery:
                for me in range(48):
                    nursery.start_soon(appender, log, me)
        assert refused and acked
        head = log.head().seq
        assert sorted(seqs(acked)) == list(range(1, head + 1))
        for record in acked:
            assert log.read_event(record.seq) == record
        report = await log.verify()
        assert (report.ok, report.checked) == (True, head)


async def test_cancelling_the_log_mid_append_never_leaves_an_appender_waiting(
    tmp_path: Path,
) -> None:
    """The log's scope cancelled at random moments under 64 appenders: every appender ends (its
    group committed, or refused with LogClosed, or cancelled), and what was acked is there."""
    rng = random.Random(11)
    for round_ in range(15):
        await cancel_the_log_under_appenders(tmp_path / f"log{round_}", rng.uniform(0.0, 0.05))


async def cancel_the_log_under_appenders(path: Path, delay: float) -> None:
    acked: list[RecordedEvent] = []
    ended = 0

    async def appender(log: EventLog, me: int) -> None:
        nonlocal ended
        try:
            while True:
                acked.extend(await log.append(f"s{me}", [raw(me)]))
        except LogClosed:
            pass
        finally:
            ended += 1

    with trio.fail_after(GUARD_SECONDS):
        with trio.CancelScope() as scope:
            async with open_event_log(path) as log, trio.open_nursery() as nursery:
                for me in range(64):
                    nursery.start_soon(appender, log, me)
                await trio.sleep(delay)
                scope.cancel()
    assert ended == 64
    async with open_event_log(path) as log:
        for record in acked:
            assert log.read_event(record.seq) == record
        assert (await log.verify()).ok
