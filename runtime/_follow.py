"""Subscriptions that pull: every backend reads committed events by seq (or a stream by version)
in bounded batches and waits for the next commit only when it has caught up, so a slow consumer
lags in the log and never grows a buffer. A backend supplies `read_all`, `read_stream` and
`_follow` (how it waits for the next commit); the two subscriptions are the same for all.

A commit wakes only the subscribers it concerns (`CommitSignal`): the firehose on every commit,
a stream's followers on a commit that touches their stream. Thousands of idle session streams
cost nothing per unrelated commit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Final, final

import trio

from cuelog.runtime._protocol import SUBSCRIBER_BATCH_BYTES
from cuelog.runtime._records import RecordedEvent


class _Followers:
    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.count = 0
        self.event: trio.Event | None = None  # what the stream's next commit sets

    def wake(self) -> None:
        event, self.event = self.event, None
        if event is not None:
            event.set()


@final
class CommitSignal:
    """Where subscribers wait for the next commit that concerns them.

    A subscriber takes its event (`waiter`) before it reads, then waits on it once the read
    found nothing: a commit in between has already set it, so none is missed.
    """

    __slots__ = ("_any", "_streams")

    def __init__(self) -> None:
        self._any = trio.Event()
        self._streams: dict[str, _Followers] = {}  # only streams someone follows

    def follow(self, stream: str) -> None:
        followers = self._streams.get(stream)
        if followers is None:
            followers = self._streams[stream] = _Followers()
        followers.count += 1

    def unfollow(self, stream: str) -> None:
        leaving = self._streams.get(stream)
        if leaving is not None:
            leaving.count -= 1
            if leaving.count <= 0:
                del self._streams[stream]

    def waiter(self, stream: str | None = None) -> trio.Event:
        """The event the next commit (touching `stream`, which is followed, when given) sets."""
        if stream is None:
            return self._any
        followers = self._streams[stream]
        if followers.event is None:
            followers.event = trio.Event()
        return followers.event

    def notify(self, streams: Iterable[str] | None = None) -> None:
        """A commit touched `streams` (None: any of them, or the log is closing)."""
        woken, self._any = self._any, trio.Event()
        woken.set()
        if not self._streams:
            return  # nobody follows a stream: `streams` need not even be walked
        if streams is None:
            for followers in self._streams.values():
                followers.wake()
            return
        for stream in streams:
            touched = self._streams.get(stream)
            if touched is not None:
                touched.wake()

    @property
    def followed_streams(self) -> int:
        return len(self._streams)


# What a writer keeps of its latest commits for the subscribers that keep up with it.
RECENT_EVENTS: Final = 4096
RECENT_BYTES: Final = 4 << 20  # of payloads


@final
class RecentEvents:
    """The events a log's own writer committed last, in seq order, bounded by count and by
    payload bytes: a subscriber that keeps up (a projection, an SSE stream of the whole log)
    reads them here instead of from the log. A gap (a commit it did not see) starts it over."""

    __slots__ = ("_bytes", "_events", "_head", "_max_bytes", "_max_events")

    def __init__(self, max_events: int = RECENT_EVENTS, max_bytes: int = RECENT_BYTES) -> None:
        self._events: list[RecordedEvent] = []
        self._head = 0  # index of the oldest event kept
        self._bytes = 0
        self._max_events = max_events
        self._max_bytes = max_bytes

    @property
    def last_seq(self) -> int:
        """The seq of the newest event kept (0: none)."""
        return self._events[-1].seq if len(self._events) > self._head else 0

    def add(self, events: Iterable[RecordedEvent]) -> None:
        """Events just committed, in seq order (ones already kept, such as an idempotent
        repeat's, are skipped)."""
        events_list = self._events
        for event in events:
            if len(events_list) > self._head:
                last = events_list[-1].seq
                if event.seq <= last:
                    continue
                if event.seq != last + 1:
                    self.clear()
            events_list.append(event)
            self._bytes += len(event.data)
        while len(events_list) - self._head > self._max_events or (
            self._bytes > self._max_bytes and len(events_list) - self._head > 1
        ):
            self._bytes -= len(events_list[self._head].data)
            self._head += 1
        if self._head > self._max_events:
            del events_list[: self._head]
            self._head = 0

    def after(
        self, after_seq: int, limit: int, max_bytes: int | None = None
    ) -> list[RecordedEvent] | None:
        """Up to `limit` events after `after_seq` (fewer once `max_bytes` of payloads are
        taken), or None when the oldest of them is no longer kept."""
        events = self._events
        if len(events) <= self._head:
            return None
        start = self._head + after_seq + 1 - events[self._head].seq
        if start < self._head:
            return None
        out = events[start : start + max(limit, 0)]
        if max_bytes is not None:
            size = 0
            for i, event in enumerate(out):
                size += len(event.data)
                if size >= max_bytes:
                    return out[: i + 1]
        return out

    def clear(self) -> None:
        self._events.clear()
        self._head = 0
        self._bytes = 0


class PullSubscriptions(ABC):
    @abstractmethod
    def read_all(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[RecordedEvent]: ...

    @abstractmethod
    def read_stream(
        self,
        stream: str,
        from_version: int = 1,
        *,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]: ...

    @abstractmethod
    def _follow(
        self, next_batch: Callable[[], list[RecordedEvent]], stream: str | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Yield each batch `next_batch` reads; when one is empty, wait for the next commit
        (touching `stream`, when given), or end once the log closes or subscriptions end."""

    @abstractmethod
    def _wake_subscribers(self, streams: Iterable[str] | None = None) -> None:
        """After a commit that touched `streams` (None: wake every subscriber)."""

    def poll_now(self) -> None:
        """Another process says it has committed: subscribers that poll for other processes'
        commits read now instead of at their next poll."""
        self._wake_subscribers()

    def follow_batches(
        self, next_batch: Callable[[], list[RecordedEvent]]
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Each non-empty batch `next_batch` reads, calling it again at once after each one and
        after each commit: a follower that keeps its own position (it reads from wherever it
        has got to) and wakes on every commit."""
        return self._follow(next_batch)

    async def subscribe(
        self, after_seq: int = 0, stream_prefix: str | None = None, *, batch: int = 256
    ) -> AsyncIterator[RecordedEvent]:
        """Every committed event after `after_seq` (optionally only streams with a prefix), then
        each new one as it commits. The subscriber pulls from the log: lagging costs no memory."""
        cursor = after_seq

        def next_batch() -> list[RecordedEvent]:
            return self.read_all(cursor, batch, max_bytes=SUBSCRIBER_BATCH_BYTES)

        # Closed here when the subscriber stops: not left for the collector to finish.
        batches = self._follow(next_batch)
        async with aclosing(batches):  # type: ignore[type-var]
            async for events in batches:
                for event in events:
                    cursor = event.seq
                    if stream_prefix is None or event.stream.startswith(stream_prefix):
                        yield event

    async def subscribe_stream(
        self, stream: str, after_version: int = 0, *, batch: int = 256
    ) -> AsyncIterator[RecordedEvent]:
        """One stream's events after `after_version`, then each new one as it commits. Reads
        the stream's index only, so following one run costs nothing per unrelated event."""
        version = after_version

        def next_batch() -> list[RecordedEvent]:
            return self.read_stream(
                stream, version + 1, limit=batch, max_bytes=SUBSCRIBER_BATCH_BYTES
            )

        batches = self._follow(next_batch, stream)
        async with aclosing(batches):  # type: ignore[type-var]
            async for events in batches:
                for event in events:
                    version = event.version
                    yield event
