"""An append waiting for its group commit: what a group-committing backend (LMDB, PostgreSQL)
queues for its writer task, and how an appender parks until the commit that covers it."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, final

import trio

from cuelog.runtime._codec import Event
from cuelog.runtime._envelope import (
    AppendPart,
    RawEvent,
    check_name,
    encode_events,
    encode_record,
    request_digest,
)
from cuelog.runtime._errors import LogClosed
from cuelog.runtime._records import RecordedEvent

_U64 = struct.Struct(">Q")


@final
class PendingAppend:
    """One pending append: what was asked, and where the answer goes."""

    __slots__ = (
        "actor",
        "causation",
        "correlation",
        "digest",
        "error",
        "events",
        "expected",
        "idem",
        "parts",
        "result",
        "stream",
        "taken",
        "task",
    )

    def __init__(
        self,
        stream: str,
        events: Sequence[Event | RawEvent],
        *,
        max_event_bytes: int,
        expected: int | None,
        idem: str | None,
        causation: str | None,
        correlation: str | None,
        actor: str | None,
    ) -> None:
        """Check and encode the request (raising before anything is queued)."""
        check_name("stream", stream)
        self.stream = stream
        self.events = encode_events(events, max_event_bytes)
        self.digest = b""
        if idem is not None:
            check_name("idempotency key", idem)
            self.digest = request_digest(stream, self.events)
        self.expected = expected
        self.idem = idem
        self.causation = causation
        self.correlation = correlation
        self.actor = actor
        # Every stream this append writes, in order, with its events, expected version and
        # actor: one part for `append`, several for `append_many`, all or none committed.
        self.parts: list[tuple[str, list[tuple[str, bytes]], int | None, str | None]] = [
            (stream, self.events, expected, actor)
        ]
        self.result: list[RecordedEvent] | None = None
        self.error: BaseException | None = None
        self.taken = False  # the writer has it: too late to withdraw
        self.task: trio.lowlevel.Task | None = None

    def encode(
        self, currents: Sequence[int], seq: int, prev: bytes, ts: int
    ) -> list[tuple[RecordedEvent, bytes]]:
        """Every part's events as chained records after `seq` (whose hash is `prev`), each
        part's versions going on from its current version in `currents`: (record, stored
        value) pairs, in commit order."""
        out: list[tuple[RecordedEvent, bytes]] = []
        for (stream, events, _, actor), current in zip(self.parts, currents, strict=True):
            version = current
            for type_name, data in events:
                seq += 1
                version += 1
                record, value = encode_record(
                    seq,
                    stream,
                    version,
                    type_name,
                    ts,
                    self.causation,
                    self.correlation,
                    actor,
                    data,
                    prev,
                )
                out.append((record, value))
                prev = record.hash
        return out

    def encode_part(
        self,
        stream: str,
        events: list[tuple[str, bytes]],
        actor: str | None,
        current: int,
        seq: int,
        prev: bytes,
        ts: int,
        values: list[tuple[bytes, bytes]],
        index: list[tuple[str, int, int]],
    ) -> list[RecordedEvent]:
        """One part's events as chained records after `seq` (whose hash is `prev`), versions
        going on from `current`; each record's (u64be seq, stored value) joins `values` and its
        (stream, version, seq) joins `index`."""
        out: list[RecordedEvent] = []
        causation, correlation = self.causation, self.correlation
        version = current
        for type_name, data in events:
            seq += 1
            version += 1
            record, value = encode_record(
                seq, stream, version, type_name, ts, causation, correlation, actor, data, prev
            )
            out.append(record)
            values.append((_U64.pack(seq), value))
            index.append((stream, version, seq))
            prev = record.hash
        return out

    @classmethod
    def of_parts(
        cls,
        parts: Sequence[AppendPart],
        *,
        max_event_bytes: int,
        causation: str | None,
        correlation: str | None,
        actor: str | None,
    ) -> PendingAppend:
        """An atomic append to several streams (no idempotency key: claim one with `append`)."""
        if not parts:
            raise ValueError("append_many needs at least one part")
        if len({part.stream for part in parts}) != len(parts):
            raise ValueError("append_many takes each stream once")
        first = parts[0]
        request = cls(
            first.stream,
            first.events,
            max_event_bytes=max_event_bytes,
            expected=first.expected_version,
            idem=None,
            causation=causation,
            correlation=correlation,
            actor=first.actor or actor,
        )
        for part in parts[1:]:
            check_name("stream", part.stream)
            request.parts.append(
                (
                    part.stream,
                    encode_events(part.events, max_event_bytes),
                    part.expected_version,
                    part.actor or actor,
                )
            )
        return request

    def split(self) -> list[list[RecordedEvent]]:
        """The records of a committed append, one list per part."""
        assert self.result is not None
        out: list[list[RecordedEvent]] = []
        start = 0
        for _, events, _, _ in self.parts:
            out.append(self.result[start : start + len(events)])
            start += len(events)
        return out

    async def submit(self, queue: list[PendingAppend], wake: trio.Event) -> list[RecordedEvent]:
        """Queue this append for the writer and park until its commit answers it. Cancelled
        before the writer took it, it is withdrawn and nothing is written."""
        queue.append(self)
        wake.set()
        self.task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            if self.taken:
                return trio.lowlevel.Abort.FAILED  # the writer owns it now and will wake us
            queue.remove(self)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        # The writer may hold this request a while longer (its last batch): not the task,
        # which holds the caller's context.
        self.task = None
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class GroupCommitAppends:
    """`append` and `append_many` of a backend whose writer task group-commits what is queued
    in `_pending` (LMDB, PostgreSQL): each call queues one `PendingAppend`, wakes the writer and
    parks until the commit that covers it."""

    _closed: bool
    readonly: bool
    max_event_bytes: int
    _pending: list[PendingAppend]
    _wake_writer: trio.Event

    def _check_writable(self) -> None:
        if self._closed or self.readonly:
            raise LogClosed("the log is closed" if self._closed else "the log is read-only")

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
        """Append events to a stream; return them as recorded once they are durable.

        `expected_version` is the stream's version the caller saw (`NO_STREAM` = 0 for a new
        stream); a mismatch raises `WrongExpectedVersion`. With `idempotency_key`, a repeat with
        the same stream and events returns the original records, and a different body raises
        `IdempotencyConflict`. On PostgreSQL a lost connection raises `LogUnavailable`: nothing
        was acknowledged, and a retry with the same idempotency key is safe.
        """
        self._check_writable()
        request = PendingAppend(
            stream,
            events,
            max_event_bytes=self.max_event_bytes,
            expected=expected_version,
            idem=idempotency_key,
            causation=causation,
            correlation=correlation,
            actor=actor,
        )
        return await request.submit(self._pending, self._wake_writer)

    async def append_many(
        self,
        parts: Sequence[AppendPart],
        *,
        causation: str | None = None,
        correlation: str | None = None,
        actor: str | None = None,
    ) -> list[list[RecordedEvent]]:
        """Append to several streams in one commit (see `EventLog.append_many`)."""
        self._check_writable()
        request = PendingAppend.of_parts(
            parts,
            max_event_bytes=self.max_event_bytes,
            causation=causation,
            correlation=correlation,
            actor=actor,
        )
        await request.submit(self._pending, self._wake_writer)
        return request.split()
