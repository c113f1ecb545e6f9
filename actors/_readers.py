"""Read models over the log for the layers above: a run's events as it goes, a session's events,
a run's timeline. Readers pull from the log, so a slow consumer lags there and holds no buffer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import msgspec

from cuelog.actors._events import DOMAIN_CODEC, TERMINAL_EVENTS
from cuelog.actors._names import run_stream, session_stream
from cuelog.actors._timeline import summary
from cuelog.runtime import Event, EventLog, RecordedEvent


class RunEvent(msgspec.Struct, frozen=True):
    """One event of a run: the record as committed and its decoded payload (None for an event
    the domain does not define, such as the kernel's `ActorFailed`)."""

    record: RecordedEvent
    event: Event | None

    @property
    def terminal(self) -> bool:
        return self.record.type in TERMINAL_EVENTS


class TimelineRow(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    ts: int
    actor: str | None
    type: str
    summary: str
    since_previous_ms: float | None


def decode_event(record: RecordedEvent) -> Event | None:
    if not DOMAIN_CODEC.knows(record.type):
        return None
    return DOMAIN_CODEC.decode(record.type, record.data)


async def follow_run(log: EventLog, run_id: str) -> AsyncGenerator[RunEvent]:
    """Every event of the run from its first, waiting for new ones; ends after its last."""
    records = log.subscribe_stream(run_stream(run_id))
    async with aclosing(records):  # type: ignore[type-var]
        async for record in records:
            item = RunEvent(record, decode_event(record))
            yield item
            if item.terminal:
                return


async def follow_session(
    log: EventLog, key: str, after_seq: int = 0
) -> AsyncIterator[RecordedEvent]:
    """The session's events after `after_seq`, then new ones as they commit (never ends)."""
    async for record in log.subscribe_stream(session_stream(key)):
        if record.seq > after_seq:
            yield record


def run_recorded(log: EventLog, run_id: str) -> bool:
    """Whether the log holds any event of this run."""
    return log.stream_version(run_stream(run_id)) > 0


def session_events(log: EventLog, key: str, after_seq: int, limit: int) -> list[RecordedEvent]:
    """Up to `limit` of the session's events after `after_seq`."""
    return [e for e in log.read_stream(session_stream(key)) if e.seq > after_seq][:limit]


def run_timeline(log: EventLog, run_id: str) -> list[TimelineRow]:
    """The run's events with a one-line summary and the milliseconds since the previous one."""
    rows: list[TimelineRow] = []
    previous: int | None = None
    for event in log.read_stream(run_stream(run_id)):
        rows.append(
            TimelineRow(
                seq=event.seq,
                ts=event.ts,
                actor=event.actor,
                type=event.type,
                summary=summary(event),
                since_previous_ms=None
                if previous is None
                else round((event.ts - previous) / 1000, 3),
            )
        )
        previous = event.ts
    return rows
