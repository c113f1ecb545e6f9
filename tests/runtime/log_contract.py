"""The behaviour every event log backend shows, written once as an abstract suite.

A backend's test module subclasses `EventLogContract` (as `TestSomethingEventLog`) and implements
`open_log`; pytest then runs every test below against that backend. The base class name does not
start with `Test`, so it is never collected on its own.
"""

from __future__ import annotations

import abc
import hashlib
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from cuelog.runtime import (
    NO_STREAM,
    AppendPart,
    Event,
    EventCodec,
    EventLog,
    IdempotencyConflict,
    LogError,
    LogFormatError,
    PayloadTooLarge,
    RawEvent,
    RecordedEvent,
    WrongExpectedVersion,
    event_type,
    open_event_log,
)

GUARD_SECONDS = 10  # only reached when a test is failing (a lost wake-up would hang otherwise)


class Said(Event, tag="Said", frozen=True):
    text: str


class Counted(Event, tag="Counted", frozen=True):
    n: int


class ProfileV1(Event, tag="Profile", frozen=True):
    name: str


class ProfileV2(Event, tag="Profile", frozen=True):
    __schema__ = 2
    first: str
    last: str
    email: str = "unknown"


def raw(value: object, type_name: str = "Raw") -> RawEvent:
    """A pre-encoded event carrying `value`."""
    return RawEvent(type_name, msgspec.msgpack.encode(value))


def payload_of_size(size: int) -> bytes:
    """One msgpack bin value whose encoding is exactly `size` bytes."""
    for header in (2, 3, 5):
        encoded = msgspec.msgpack.encode(b"x" * max(size - header, 0))
        if len(encoded) == size:
            return encoded
    raise AssertionError(f"no msgpack bin encodes to exactly {size} bytes")


def seqs(records: list[RecordedEvent]) -> list[int]:
    return [record.seq for record in records]


class EventLogContract(abc.ABC):
    """Subclass, implement `open_log` and name the subclass `Test...` to run this suite."""

    #: the per-event payload limit `open_log` must configure
    max_event_bytes = 64 << 10

    @abc.abstractmethod
    def open_log(self, path: Path) -> AbstractAsyncContextManager[EventLog]:
        """Open (creating it if needed) a log stored at `path`, with `max_event_bytes`."""

    async def test_append_round_trips_through_every_read(self, tmp_path: Path) -> None:
        """Appended events come back identical from append, read_stream, read_all and read_event."""
        async with self.open_log(tmp_path / "log") as log:
            written = await log.append(
                "chat/1",
                [Said(text="hello"), Counted(n=2)],
                causation="cmd-1",
                correlation="conv-9",
                actor="agent-a",
            )
            assert [(r.seq, r.stream, r.version, r.type) for r in written] == [
                (1, "chat/1", 1, "Said"),
                (2, "chat/1", 2, "Counted"),
            ]
            assert {(r.causation, r.correlation, r.actor) for r in written} == {
                ("cmd-1", "conv-9", "agent-a")
            }
            codec = EventCodec([Said, Counted])
            assert [codec.decode(r.type, r.data) for r in written] == [
                Said(text="hello"),
                Counted(n=2),
            ]
            assert log.read_stream("chat/1") == written
            assert log.read_all() == written
            assert log.read_event(2) == written[1]
            assert log.read_event(3) is None

    async def test_raw_events_keep_their_exact_bytes(self, tmp_path: Path) -> None:
        """A RawEvent's payload bytes are stored and returned unchanged."""
        data = msgspec.msgpack.encode({"b": [1, 2, 3], "a": None})
        async with self.open_log(tmp_path / "log") as log:
            [written] = await log.append("s", [RawEvent("Blob", data)])
            assert written.data == data
            assert written.type == "Blob"
            assert log.read_stream("s")[0].data == data

    async def test_versions_start_at_one_in_every_stream(self, tmp_path: Path) -> None:
        """Each stream numbers its own events from 1, whatever else is in the log."""
        async with self.open_log(tmp_path / "log") as log:
            assert log.stream_version("a") == 0
            assert log.read_stream("a") == []
            await log.append("a", [raw(1), raw(2)])
            [b1] = await log.append("b", [raw(3)])
            [a3] = await log.append("a", [raw(4)])
            await log.append("ab", [raw(5)])  # shares a prefix with "a", not its versions
            assert (b1.version, a3.version) == (1, 3)
            assert [r.version for r in log.read_stream("a")] == [1, 2, 3]
            assert [log.stream_version(s) for s in ("a", "b", "ab", "c")] == [3, 1, 1, 0]

    async def test_seqs_are_global_and_gapless(self, tmp_path: Path) -> None:
        """Seqs count every event in the log from 1 with no gap, across streams and appends."""
        async with self.open_log(tmp_path / "log") as log:
            recorded: list[RecordedEvent] = []
            for i in range(12):
                recorded += await log.append(f"s{i % 3}", [raw(i)] * (1 + i % 3))
            assert seqs(recorded) == list(range(1, len(recorded) + 1))
            assert seqs(log.read_all()) == seqs(recorded)

    async def test_each_event_links_to_the_one_before(self, tmp_path: Path) -> None:
        """Every event's prev is the hash of the event before it, and head names the last one."""
        async with self.open_log(tmp_path / "log") as log:
            empty = log.head()
            assert empty.seq == 0
            assert len(empty.hash) == 32
            recorded = await log.append("a", [raw(1), raw(2)])
            recorded += await log.append("b", [raw(3)])
            assert recorded[0].prev == empty.hash
            assert [r.prev for r in recorded[1:]] == [r.hash for r in recorded[:-1]]
            assert len({r.hash for r in recorded}) == 3
            assert log.head().seq == 3
            assert log.head().hash == recorded[-1].hash

    async def test_expected_version_guards_the_stream(self, tmp_path: Path) -> None:
        """An append lands only when the stream is at the expected version (NO_STREAM = new)."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("s", [raw(1)], expected_version=NO_STREAM)
            with pytest.raises(WrongExpectedVersion) as caught:
                await log.append("s", [raw(2)], expected_version=NO_STREAM)
            assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("s", 0, 1)
            with pytest.raises(WrongExpectedVersion) as caught:
                await log.append("s", [raw(2)], expected_version=5)
            assert caught.value.actual == 1
            [second] = await log.append("s", [raw(2)], expected_version=1)
            assert (second.seq, second.version) == (2, 2)
            assert log.head().seq == 2

    async def test_a_conflict_fails_only_its_own_append(self, tmp_path: Path) -> None:
        """Of concurrent appends, the conflicting ones fail alone and all the others land."""
        results: dict[str, list[RecordedEvent]] = {}
        conflicts: list[WrongExpectedVersion] = []

        async def contend(name: str) -> None:
            try:
                results[name] = await log.append("contested", [raw(name)], expected_version=0)
            except WrongExpectedVersion as exc:
                conflicts.append(exc)

        async def own(name: str) -> None:
            results[name] = await log.append(name, [raw(name)] * 2, expected_version=0)

        async with self.open_log(tmp_path / "log") as log:
            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    for i in range(8):
                        nursery.start_soon(contend, f"contender-{i}")
                        nursery.start_soon(own, f"own-{i}")
            winners = [name for name in results if name.startswith("contender")]
            assert len(winners) == 1
            assert len(conflicts) == 7
            assert {(c.stream, c.expected, c.actual) for c in conflicts} == {("contested", 0, 1)}
            assert all(len(results[f"own-{i}"]) == 2 for i in range(8))
            assert sorted(s for r in results.values() for s in seqs(r)) == list(range(1, 18))
            assert [r.data for r in log.read_stream("contested")] == [
                msgspec.msgpack.encode(winners[0])
            ]

    async def test_a_multi_stream_append_lands_whole_in_one_commit(self, tmp_path: Path) -> None:
        """The parts of `append_many` get consecutive seqs, part by part, each stream its next
        versions, in one commit; followers of each stream see their part; the chain verifies."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("a", [raw(0)])
            batches = log.statistics().batches
            got: list[RecordedEvent] = []

            async def follow() -> None:
                async for event in log.subscribe_stream("b"):
                    got.append(event)
                    return

            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow)
                    await trio.testing.wait_all_tasks_blocked()
                    first, second = await log.append_many(
                        [
                            AppendPart("a", [raw(1), raw(2)], expected_version=1),
                            AppendPart("b", [raw(3)], expected_version=NO_STREAM),
                        ],
                        correlation="c-1",
                    )
            assert [(r.stream, r.version, r.seq) for r in first] == [("a", 2, 2), ("a", 3, 3)]
            assert [(r.stream, r.version, r.seq) for r in second] == [("b", 1, 4)]
            assert {r.correlation for r in first + second} == {"c-1"}
            assert log.statistics().batches == batches + 1
            assert got == second
            assert (log.stream_version("a"), log.stream_version("b")) == (3, 1)
            assert (await log.verify()).ok

    async def test_each_part_of_a_multi_stream_append_may_name_its_actor(
        self, tmp_path: Path
    ) -> None:
        """A part's own `actor` goes in its records' envelopes; a part without one gets the
        append's; the records read back the same and the chain verifies."""
        async with self.open_log(tmp_path / "log") as log:
            first, second, third = await log.append_many(
                [
                    AppendPart("a", [raw(1), raw(2)], actor="run:r1"),
                    AppendPart("b", [raw(3)]),
                    AppendPart("c", [raw(4)], actor="agent:x"),
                ],
                actor="session:s",
            )
            assert [r.actor for r in first + second + third] == [
                "run:r1",
                "run:r1",
                "session:s",
                "agent:x",
            ]
            assert log.read_all(0) == first + second + third
            assert (await log.verify()).ok

    async def test_a_conflict_in_one_part_writes_no_part(self, tmp_path: Path) -> None:
        """A wrong expected version in any part fails the whole append: no stream moves, the
        head stays, and the error names the part that conflicted."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("a", [raw(0)])
            await log.append("b", [raw(0)])
            with pytest.raises(WrongExpectedVersion) as caught:
                await log.append_many(
                    [
                        AppendPart("a", [raw(1)], expected_version=1),
                        AppendPart("b", [raw(1)], expected_version=NO_STREAM),
                        AppendPart("c", [raw(1)]),
                    ]
                )
            assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("b", 0, 1)
            assert log.head().seq == 2
            assert [log.stream_version(s) for s in ("a", "b", "c")] == [1, 1, 0]
            assert log.list_streams("c") == []

    async def test_concurrent_multi_stream_appends_to_one_stream_let_one_win(
        self, tmp_path: Path
    ) -> None:
        """Of multi-stream appends racing for one stream's next version, exactly one lands
        with all its parts, while appends to other streams all land."""
        wins: list[int] = []
        lost = 0

        async def contend(i: int) -> None:
            nonlocal lost
            try:
                await log.append_many(
                    [
                        AppendPart(f"own-{i}", [raw(i)], expected_version=NO_STREAM),
                        AppendPart("shared", [raw(i)], expected_version=NO_STREAM),
                    ]
                )
                wins.append(i)
            except WrongExpectedVersion:
                lost += 1

        async with self.open_log(tmp_path / "log") as log:
            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    for i in range(8):
                        nursery.start_soon(contend, i)
                        nursery.start_soon(log.append, f"other-{i}", [raw(i)])
            assert len(wins) == 1 and lost == 7
            assert log.list_streams("own-") == [f"own-{wins[0]}"]
            assert log.head().seq == 8 + 2
            assert [r.data for r in log.read_stream("shared")] == [msgspec.msgpack.encode(wins[0])]
            assert (await log.verify()).ok

    async def test_a_multi_stream_append_refuses_bad_parts_before_writing(
        self, tmp_path: Path
    ) -> None:
        """No parts, a stream named twice, an empty part or a bad stream name raise at once and
        write nothing."""
        async with self.open_log(tmp_path / "log") as log:
            for parts in (
                [],
                [AppendPart("a", [raw(1)]), AppendPart("a", [raw(2)])],
                [AppendPart("a", [raw(1)]), AppendPart("b", [])],
                [AppendPart("a", [raw(1)]), AppendPart("", [raw(2)])],
            ):
                with pytest.raises((ValueError, LogError)):
                    await log.append_many(parts)
            assert log.head().seq == 0

    async def test_an_idempotent_repeat_returns_the_original_records(self, tmp_path: Path) -> None:
        """Repeating an append with its idempotency key returns the first records, writing none."""
        async with self.open_log(tmp_path / "log") as log:
            first = await log.append("s", [raw(1), raw(2)], idempotency_key="k1")
            await log.append("s", [raw(3)])
            head = log.head()
            again = await log.append("s", [raw(1), raw(2)], idempotency_key="k1")
            stale = await log.append(
                "s", [raw(1), raw(2)], idempotency_key="k1", expected_version=NO_STREAM
            )
            assert again == first
            assert stale == first
            assert log.head() == head
            assert log.stream_version("s") == 3

    async def test_concurrent_repeats_of_one_key_write_once(self, tmp_path: Path) -> None:
        """Several concurrent appends with one key and one body all get the same single write."""
        results: list[list[RecordedEvent]] = []

        async def send() -> None:
            results.append(await log.append("s", [raw("x")], idempotency_key="same"))

        async with self.open_log(tmp_path / "log") as log:
            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    for _ in range(6):
                        nursery.start_soon(send)
            assert len(results) == 6
            assert all(r == results[0] for r in results)
            assert log.head().seq == 1

    async def test_a_reused_key_with_another_body_conflicts(self, tmp_path: Path) -> None:
        """The same key with other events or another stream raises a conflict and writes nothing."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("s", [raw(1)], idempotency_key="k")
            with pytest.raises(IdempotencyConflict) as caught:
                await log.append("s", [raw(2)], idempotency_key="k")
            assert caught.value.key == "k"
            with pytest.raises(IdempotencyConflict):
                await log.append("other", [raw(1)], idempotency_key="k")
            with pytest.raises(IdempotencyConflict):
                await log.append("s", [raw(1, "Renamed")], idempotency_key="k")
            with pytest.raises(IdempotencyConflict):
                await log.append("s", [raw(1), raw(1)], idempotency_key="k")
            assert log.head().seq == 1
            assert log.stream_version("other") == 0

    async def test_a_key_is_free_again_after_its_append_failed(self, tmp_path: Path) -> None:
        """An append refused for its expected version does not claim its idempotency key."""
        async with self.open_log(tmp_path / "log") as log:
            with pytest.raises(WrongExpectedVersion):
                await log.append("s", [raw(1)], idempotency_key="k", expected_version=3)
            [landed] = await log.append("s", [raw(2)], idempotency_key="k")
            assert landed.seq == 1

    async def test_an_oversize_payload_is_refused_alone(self, tmp_path: Path) -> None:
        """An event over the size limit fails its whole append; the limit itself is accepted."""
        limit = self.max_event_bytes
        async with self.open_log(tmp_path / "log") as log:
            with pytest.raises(PayloadTooLarge) as caught:
                await log.append("s", [raw(1), RawEvent("Big", payload_of_size(limit + 1))])
            assert (caught.value.size, caught.value.limit) == (limit + 1, limit)
            assert log.head().seq == 0
            [at_limit] = await log.append("s", [RawEvent("Big", payload_of_size(limit))])
            assert len(at_limit.data) == limit
            with pytest.raises(PayloadTooLarge):
                await log.append("s", [Said(text="x" * limit)])
            assert [r.version for r in log.read_stream("s")] == [1]

    async def test_bad_appends_are_refused_before_writing(self, tmp_path: Path) -> None:
        """Empty/NUL-bearing stream names, no events or non-msgpack raw data raise ValueError."""
        async with self.open_log(tmp_path / "log") as log:
            for stream, events in [
                ("", [raw(1)]),
                ("a\x00b", [raw(1)]),
                ("s", []),
                ("s", [RawEvent("T", b"\xc1")]),  # 0xc1 is never valid msgpack
                ("s", [RawEvent("T", msgspec.msgpack.encode(1) * 2)]),  # two values
            ]:
                with pytest.raises(ValueError):
                    await log.append(stream, events)
            assert log.head().seq == 0

    async def test_subscribe_replays_then_follows(self, tmp_path: Path) -> None:
        """A subscriber gets the events already committed, then each new one as it commits."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("chat/1", [raw(1), raw(2)])
            await log.append("tool/1", [raw(3)])
            everything: list[RecordedEvent] = []
            chats: list[RecordedEvent] = []
            later: list[RecordedEvent] = []

            async def follow(
                out: list[RecordedEvent], want: int, after: int, prefix: str | None
            ) -> None:
                async for event in log.subscribe(after, stream_prefix=prefix):
                    out.append(event)
                    if len(out) == want:
                        return

            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow, everything, 6, 0, None)
                    nursery.start_soon(follow, chats, 4, 0, "chat/")
                    nursery.start_soon(follow, later, 2, 4, None)
                    await trio.testing.wait_all_tasks_blocked()
                    assert seqs(everything) == [1, 2, 3]
                    assert seqs(chats) == [1, 2]
                    await log.append("chat/2", [raw(4)])
                    await log.append("tool/1", [raw(5)])
                    await log.append("chat/1", [raw(6)])
            assert seqs(everything) == [1, 2, 3, 4, 5, 6]
            assert everything == log.read_all()
            assert [(e.stream, e.seq) for e in chats] == [
                ("chat/1", 1),
                ("chat/1", 2),
                ("chat/2", 4),
                ("chat/1", 6),
            ]
            assert seqs(later) == [5, 6]

    async def test_read_all_pages_by_seq(self, tmp_path: Path) -> None:
        """read_all(after_seq, limit) pages through the log without overlap or gaps."""
        async with self.open_log(tmp_path / "log") as log:
            for i in range(25):
                await log.append(f"s{i % 4}", [raw(i)])
            pages = [seqs(log.read_all(after, 10)) for after in (0, 10, 20, 25)]
            assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26)), []]
            assert seqs(log.read_all(7, 3)) == [8, 9, 10]
            assert len(log.read_all()) == 25

    async def test_read_all_with_limit_zero_returns_nothing(self, tmp_path: Path) -> None:
        """read_all never returns more than `limit` events, also when the limit is zero."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("s", [raw(1), raw(2)])
            assert log.read_stream("s", limit=0) == []
            assert log.read_all(0, 0) == []

    async def test_read_stream_from_a_version_with_a_limit(self, tmp_path: Path) -> None:
        """read_stream starts at from_version and stops after limit events of that stream only."""
        async with self.open_log(tmp_path / "log") as log:
            for i in range(6):
                await log.append("a", [raw(i)])
                await log.append("b", [raw(i)])
            assert [r.version for r in log.read_stream("a", 3)] == [3, 4, 5, 6]
            assert [r.version for r in log.read_stream("a", 2, limit=2)] == [2, 3]
            assert [r.version for r in log.read_stream("a", 0)] == [1, 2, 3, 4, 5, 6]
            assert log.read_stream("a", 7) == []
            assert {r.stream for r in log.read_stream("b")} == {"b"}

    async def test_snapshots_round_trip_outside_the_chain(self, tmp_path: Path) -> None:
        """A saved snapshot loads back (the latest wins) and adds no event to the log."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("s", [raw(1)])
            assert log.load_snapshot("s") is None
            await log.save_snapshot("s", 1, b"state-1")
            assert log.load_snapshot("s") == (1, b"state-1")
            await log.save_snapshot("s", 4, b"")
            assert log.load_snapshot("s") == (4, b"")
            assert log.load_snapshot("other") is None
            assert log.head().seq == 1

    async def test_an_old_schema_is_upcast_on_read(self, tmp_path: Path) -> None:
        """Events stored with schema 1 decode as schema 2 through the upcaster, bytes untouched."""
        async with self.open_log(tmp_path / "log") as log:
            [old] = await log.append("user/1", [ProfileV1(name="Ada Lovelace")])
            [new] = await log.append("user/1", [ProfileV2(first="Alan", last="Turing")])
            assert (old.type, new.type) == ("Profile", "Profile/2")
            assert event_type(ProfileV2) == "Profile/2"

            codec = EventCodec([ProfileV2])
            with pytest.raises(LogFormatError, match="no upcaster"):
                codec.decode(old.type, old.data)

            @codec.upcaster("Profile", 1)
            def split_name(fields: dict[str, object]) -> dict[str, object]:
                first, _, last = str(fields.pop("name")).partition(" ")
                return {**fields, "first": first, "last": last}

            decoded = [codec.decode(r.type, r.data) for r in log.read_stream("user/1")]
            assert decoded == [
                ProfileV2(first="Ada", last="Lovelace"),
                ProfileV2(first="Alan", last="Turing"),
            ]
            assert log.read_event(1) == old  # upcast on read, never rewritten
            with pytest.raises(LogFormatError, match="unknown event type"):
                EventCodec([Said]).decode(old.type, old.data)

    async def test_verify_passes_and_checks_an_anchor(self, tmp_path: Path) -> None:
        """verify passes a healthy log, confirms an anchor with its key and rejects another key."""
        async with self.open_log(tmp_path / "log") as log:
            for i in range(5):
                await log.append("s", [raw(i)])
            anchor = await log.anchor(b"k" * 32)
            assert (anchor.seq, anchor.hash) == (5, log.head().hash)
            await log.append("s", [raw(5)])
            report = await log.verify(anchor_key=b"k" * 32)
            assert (report.ok, report.checked, report.head_seq, report.anchored_seq) == (
                True,
                6,
                6,
                5,
            )
            forged = await log.verify(anchor_key=b"x" * 32)
            assert not forged.ok
            assert "forged" in (forged.reason or "")
            progress: list[tuple[int, int]] = []
            await log.verify(progress=lambda done, total: progress.append((done, total)))
            assert progress[-1] == (6, 6)

    async def test_records_carry_the_exact_hashed_bytes(self, tmp_path: Path) -> None:
        """read_records gives each event with the body its hash covers: sha256(prev+body)=hash."""
        async with self.open_log(tmp_path / "log") as log:
            assert not log.readonly
            await log.append("a", [Said(text="hi"), raw([1, "x"])], actor="who")
            await log.append("b", [raw(None)], causation="c", correlation="r")
            records = log.read_records()
            assert [r.event for r in records] == log.read_all()
            for record in records:
                event = record.event
                assert record.seq == event.seq
                assert hashlib.sha256(event.prev + record.body).digest() == event.hash
                fields = msgspec.msgpack.decode(record.body)
                assert fields[:8] == [
                    event.seq,
                    event.stream,
                    event.version,
                    event.type,
                    event.ts,
                    event.causation,
                    event.correlation,
                    event.actor,
                ]
                assert msgspec.msgpack.encode(fields[8]) == event.data
            assert [r.seq for r in log.read_records(1, 1)] == [2]
            assert log.read_records(0, 0) == []
            assert log.read_records(3) == []

    async def test_copy_to_writes_a_data_dir_that_verifies(self, tmp_path: Path) -> None:
        """copy_to writes an ordinary data dir: same head, records, keys, snapshots and anchor."""
        key = b"k" * 32
        async with self.open_log(tmp_path / "log") as log:
            first = await log.append("s", [raw(1), raw(2)], idempotency_key="idem")
            await log.append("t", [Said(text="x")])
            await log.save_snapshot("s", 2, b"folded")
            anchor = await log.anchor(key)
            head = log.head()
            records = log.read_records()
            await log.copy_to(tmp_path / "copy")
            await log.append("s", [raw(3)])  # after the copy: not in it
            with pytest.raises(LogError, match="not an empty directory"):
                await log.copy_to(tmp_path / "copy")
        async with open_event_log(tmp_path / "copy", readonly=True) as copy:
            report = await copy.verify(anchor_key=key)
            assert (report.ok, report.checked, report.anchored_seq) == (True, 3, 3)
            assert copy.head() == head
            assert copy.read_records() == records
            assert copy.stored_anchor() == anchor
            assert copy.load_snapshot("s") == (2, b"folded")
        async with open_event_log(tmp_path / "copy") as copy:
            assert await copy.append("s", [raw(1), raw(2)], idempotency_key="idem") == first
            [next_event] = await copy.append("s", [raw(3)], expected_version=2)
            assert (next_event.seq, next_event.prev) == (4, head.hash)

    async def test_a_stream_follower_sleeps_through_commits_to_other_streams(
        self, tmp_path: Path
    ) -> None:
        """A follower of one stream is not woken by commits to other streams (so thousands of
        idle followers cost nothing per unrelated commit); a commit to its stream wakes it."""
        async with self.open_log(tmp_path / "log") as log:
            got: list[RecordedEvent] = []
            steps = 0
            follower: list[trio.lowlevel.Task] = []

            class CountSteps(trio.abc.Instrument):
                def before_task_step(self, task: trio.lowlevel.Task) -> None:
                    nonlocal steps
                    if follower and task is follower[0]:
                        steps += 1

            async def follow() -> None:
                follower.append(trio.lowlevel.current_task())
                async for event in log.subscribe_stream("mine"):
                    got.append(event)

            counter = CountSteps()
            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow)
                    await trio.testing.wait_all_tasks_blocked()
                    trio.lowlevel.add_instrument(counter)
                    try:
                        for n in range(20):
                            await log.append(f"other-{n % 3}", [raw(n)])
                        await trio.testing.wait_all_tasks_blocked()
                        assert steps == 0
                        await log.append("mine", [raw(99)])
                        while not got:
                            await trio.testing.wait_all_tasks_blocked()
                        assert steps > 0
                    finally:
                        trio.lowlevel.remove_instrument(counter)
                    nursery.cancel_scope.cancel()
            assert [e.stream for e in got] == ["mine"]

    async def test_end_subscriptions_ends_waiting_subscribers(self, tmp_path: Path) -> None:
        """After end_subscriptions, subscribers deliver what is committed, then return."""
        async with self.open_log(tmp_path / "log") as log:
            await log.append("s", [raw(1), raw(2)])
            await log.append("t", [raw(3)])
            everything: list[RecordedEvent] = []
            one_stream: list[RecordedEvent] = []

            async def follow_all() -> None:
                async for event in log.subscribe():
                    everything.append(event)

            async def follow_stream() -> None:
                async for event in log.subscribe_stream("s"):
                    one_stream.append(event)

            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow_all)
                    nursery.start_soon(follow_stream)
                    await trio.testing.wait_all_tasks_blocked()
                    assert (seqs(everything), seqs(one_stream)) == ([1, 2, 3], [1, 2])
                    log.end_subscriptions()
                late: list[RecordedEvent] = [e async for e in log.subscribe(1)]
            assert seqs(late) == [2, 3]
            assert log.statistics().subscribers == 0
