"""The in-memory event log: the same chain, envelope bytes and semantics as LMDB, no disk.

Like pyeventsourcing's POPO recorder, it exists so unit tests (and throwaway runs) get a real log
at memory speed. It keeps each record twice: the `RecordedEvent` readers get without decoding, and
the exact stored bytes (hash || prev || body) that verify, export and `copy_to` use, so an export
or a copy is byte-for-byte what LMDB would have written for the same events.

Appends are applied one at a time on the trio thread; there is no writer task to batch them
because there is no fsync to share.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import final

import trio

from cuelog.runtime._codec import Event
from cuelog.runtime._content import LocalContentStore, with_content_check
from cuelog.runtime._envelope import (
    BODY_OFFSET,
    AppendPart,
    RawEvent,
    check_name,
    encode_events,
    encode_record,
    genesis_hash,
    request_digest,
)
from cuelog.runtime._errors import IdempotencyConflict, LogClosed, WrongExpectedVersion
from cuelog.runtime._follow import CommitSignal, PullSubscriptions
from cuelog.runtime._lmdb import prepare_copy_dest, write_data_dir
from cuelog.runtime._records import (
    Anchor,
    Head,
    LogStatistics,
    Progress,
    RecordedEvent,
    StoredRecord,
    VerifyReport,
)
from cuelog.runtime._verify import verify_chain

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


@final
class MemoryEventLog(PullSubscriptions):
    """A log held in this process's memory. Open it with `open_event_log("memory:")`."""

    readonly = False

    def __init__(self, *, max_event_bytes: int, clock: Callable[[], int]) -> None:
        self.max_event_bytes = max_event_bytes
        self.content = LocalContentStore(None)
        self._clock = clock
        self._log_id = os.urandom(16)
        self._genesis = genesis_hash(self._log_id)
        self._closed = False
        self._subscriptions_ended = False
        self._commits = CommitSignal()
        # seq n is at index n - 1 of both lists.
        self._events: list[RecordedEvent] = []
        self._values: list[bytes] = []
        self._streams: dict[str, list[int]] = {}  # stream -> seq of each version, in order
        self._names: list[bytes] = []  # stream names, sorted by UTF-8 bytes (LMDB key order)
        self._idem: dict[str, tuple[int, int, bytes]] = {}  # key -> first seq, count, digest
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._anchor: Anchor | None = None
        self._subscribers = 0
        self._appends = 0
        self._batches = 0
        self._conflicts = 0
        self._replays = 0

    # -- appending -----------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Sequence[Event | RawEvent],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        causation: str | None = None,
        correlation: str | None = None,
        actor: str | None = None,
    ) -> list[RecordedEvent]:
        """Append events to a stream and return them as recorded (see `EventLog.append`)."""
        self._check_open()
        check_name("stream", stream)
        encoded = encode_events(events, self.max_event_bytes)
        digest = b""
        if idempotency_key is not None:
            check_name("idempotency key", idempotency_key)
            digest = request_digest(stream, encoded)
        # A cancelled append writes nothing: the only checkpoint comes before the write.
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._appends += 1
        if idempotency_key is not None:
            stored = self._idem.get(idempotency_key)
            if stored is not None:
                first_seq, count, original = stored
                if original != digest:
                    self._conflicts += 1
                    raise IdempotencyConflict(idempotency_key)
                self._replays += 1
                return self._events[first_seq - 1 : first_seq - 1 + count]
        records = self._write([(stream, encoded, expected_version, actor)], causation, correlation)[
            0
        ]
        if idempotency_key is not None:
            self._idem[idempotency_key] = (records[0].seq, len(records), digest)
        return records

    async def append_many(
        self,
        parts: Sequence[AppendPart],
        *,
        causation: str | None = None,
        correlation: str | None = None,
        actor: str | None = None,
    ) -> list[list[RecordedEvent]]:
        """Append to several streams atomically (see `EventLog.append_many`)."""
        self._check_open()
        if not parts:
            raise ValueError("append_many needs at least one part")
        if len({part.stream for part in parts}) != len(parts):
            raise ValueError("append_many takes each stream once")
        planned: list[tuple[str, list[tuple[str, bytes]], int | None, str | None]] = []
        for part in parts:
            check_name("stream", part.stream)
            encoded = encode_events(part.events, self.max_event_bytes)
            planned.append((part.stream, encoded, part.expected_version, part.actor or actor))
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._appends += 1
        return self._write(planned, causation, correlation)

    def _write(
        self,
        parts: list[tuple[str, list[tuple[str, bytes]], int | None, str | None]],
        causation: str | None,
        correlation: str | None,
    ) -> list[list[RecordedEvent]]:
        """Write every part, or none when any part's expected version is wrong."""
        currents: list[int] = []
        for stream, _, expected, _ in parts:
            current = len(self._streams.get(stream, ()))
            if expected is not None and expected != current:
                self._conflicts += 1
                raise WrongExpectedVersion(stream, expected, current)
            currents.append(current)
        ts = self._clock()
        seq = len(self._events)
        prev = self._events[-1].hash if self._events else self._genesis
        out: list[list[RecordedEvent]] = []
        for (stream, encoded, _, actor), base in zip(parts, currents, strict=True):
            version = base
            seqs = self._streams.get(stream)
            if seqs is None:
                seqs = self._streams[stream] = []
                bisect.insort(self._names, stream.encode())
            records: list[RecordedEvent] = []
            for type_name, data in encoded:
                seq += 1
                version += 1
                record, value = encode_record(
                    seq, stream, version, type_name, ts, causation, correlation, actor, data, prev
                )
                self._events.append(record)
                self._values.append(value)
                seqs.append(seq)
                records.append(record)
                prev = record.hash
            out.append(records)
        self._batches += 1
        self._wake_subscribers(stream for stream, _, _, _ in parts)
        return out

    async def save_snapshot(self, stream: str, version: int, state: bytes) -> None:
        """Store a snapshot of a stream's folded state (not part of the chain)."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._snapshots[stream] = (version, bytes(state))

    async def anchor(self, key: bytes) -> Anchor:
        """Seal the current head with `key`, keep the seal and return it."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        head = self.head()
        self._anchor = Anchor.seal(key, head.seq, head.hash, self._clock())
        return self._anchor

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosed("the log is closed")

    def _wake_subscribers(self, streams: Iterable[str] | None = None) -> None:
        """After a commit that touched `streams` (None: wake every subscriber)."""
        self._commits.notify(streams)

    # -- reading -------------------------------------------------------------------------------

    def stream_version(self, stream: str) -> int:
        """The stream's current version (0 when it has no events)."""
        return len(self._streams.get(stream, ()))

    def read_stream(
        self,
        stream: str,
        from_version: int = 1,
        *,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]:
        """The stream's events from `from_version` on (see `EventLog.read_stream`)."""
        seqs = self._streams.get(stream, [])
        start = max(from_version, 1) - 1
        stop = len(seqs) if limit is None else min(len(seqs), start + max(limit, 0))
        return self._take((seq - 1 for seq in seqs[start:stop]), max_bytes)

    def list_streams(self, prefix: str, *, after: str | None = None, limit: int = 100) -> list[str]:
        """Names of streams starting with `prefix`, in byte order, after `after` (a cursor)."""
        raw_prefix = prefix.encode()
        names = self._names
        i = bisect.bisect_left(names, raw_prefix)
        if after is not None:
            i = max(i, bisect.bisect_right(names, after.encode()))
        out: list[str] = []
        while i < len(names) and len(out) < limit and names[i].startswith(raw_prefix):
            out.append(names[i].decode())
            i += 1
        return out

    def read_all(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[RecordedEvent]:
        """Up to `limit` events with seq > `after_seq`, in order (see `EventLog.read_all`)."""
        start = max(after_seq, 0)
        stop = min(len(self._events), start + max(limit, 0))
        return self._take(range(start, stop), max_bytes)

    def _take(self, indexes: Iterator[int] | range, max_bytes: int | None) -> list[RecordedEvent]:
        # Stop once `max_bytes` of stored records are read, as LMDB does (but take at least one).
        if max_bytes is None:
            return [self._events[i] for i in indexes]
        out: list[RecordedEvent] = []
        size = 0
        for i in indexes:
            out.append(self._events[i])
            size += len(self._values[i])
            if size >= max_bytes:
                break
        return out

    def read_event(self, seq: int) -> RecordedEvent | None:
        return self._events[seq - 1] if 0 < seq <= len(self._events) else None

    def read_records(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[StoredRecord]:
        """Like `read_all`, with each event's exact hashed body, for export."""
        return [
            StoredRecord(event.seq, event, self._values[event.seq - 1][BODY_OFFSET:])
            for event in self.read_all(after_seq, limit, max_bytes=max_bytes)
        ]

    def load_snapshot(self, stream: str) -> tuple[int, bytes] | None:
        return self._snapshots.get(stream)

    def head(self) -> Head:
        """The last committed seq and hash."""
        if not self._events:
            return Head(0, self._genesis)
        return Head(len(self._events), self._events[-1].hash)

    def stored_anchor(self) -> Anchor | None:
        return self._anchor

    # -- following -----------------------------------------------------------------------------

    async def _follow(
        self, next_batch: Callable[[], list[RecordedEvent]], stream: str | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        self._subscribers += 1
        if stream is not None:
            self._commits.follow(stream)
        try:
            while True:
                committed = self._commits.waiter(stream)
                events = next_batch()
                if events:
                    yield events
                    # Reading a list never blocks: give other tasks a turn between batches.
                    await trio.lowlevel.checkpoint()
                    continue
                if self._closed or self._subscriptions_ended:
                    return
                await committed.wait()
        finally:
            self._subscribers -= 1
            if stream is not None:
                self._commits.unfollow(stream)

    def end_subscriptions(self) -> None:
        """Make every subscriber return once it has caught up (a server shutting down)."""
        self._subscriptions_ended = True
        self._wake_subscribers()

    def _close(self) -> None:
        self._closed = True
        self._wake_subscribers()

    # -- verification and copies ---------------------------------------------------------------

    async def verify(
        self,
        *,
        anchor_key: bytes | None = None,
        anchor: Anchor | None = None,
        progress: Progress | None = None,
        jobs: int = 1,
    ) -> VerifyReport:
        """Walk the stored bytes of the chain and the stream index, as LMDB's verify does (in
        one walk, whatever `jobs`)."""
        await trio.lowlevel.checkpoint()
        count = len(self._values)
        values = self._values
        index = {
            stream.encode() + b"\x00" + _U32.pack(version): _U64.pack(seq)
            for stream, seqs in self._streams.items()
            for version, seq in enumerate(seqs, 1)
        }

        def get_record(key: bytes) -> bytes | None:
            seq = _U64.unpack(key)[0] if len(key) == 8 else 0
            return values[seq - 1] if 0 < seq <= count else None

        report = verify_chain(
            lambda: ((_U64.pack(i + 1), values[i]) for i in range(count)),
            lambda: iter(index.items()),
            get_record,
            index.get,
            self._genesis,
            count,
            anchor=anchor if anchor is not None else self._anchor,
            anchor_key=anchor_key,
            progress=progress,
        )
        return await with_content_check(report, self.content)

    async def copy_to(self, dest: Path) -> None:
        """Write the log as it is now into `dest` as an ordinary LMDB data dir (same log id,
        same records), so it can be opened, verified and served like any other."""
        count = len(self._events)
        # Copies taken now: appends that land while the thread writes are not in this copy.
        records = list(zip(self._events[:count], self._values[:count], strict=True))
        idem = {k: v for k, v in self._idem.items() if v[0] <= count}
        snapshots = dict(self._snapshots)
        anchor = self._anchor
        prepare_copy_dest(dest)
        await trio.to_thread.run_sync(
            lambda: write_data_dir(
                dest,
                log_id=self._log_id,
                records=records,
                idempotency=idem,
                snapshots=snapshots,
                anchor=anchor,
            )
        )
        await self.content.copy_into(dest)

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            head_seq=len(self._events),
            appends=self._appends,
            events_appended=len(self._events),
            batches=self._batches,
            largest_batch=min(self._batches, 1),  # every append is its own commit
            commit_seconds_total=0.0,
            conflicts=self._conflicts,
            idempotent_replays=self._replays,
            map_size=0,  # nothing is mapped; the metric is LMDB's
            pending=0,
            subscribers=self._subscribers,
            max_event_bytes=self.max_event_bytes,
        )
