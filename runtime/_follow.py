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
from typing import final

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
    ) -> AsyncIterator[RecordedEvent]:
        """Yield each batch `next_batch` reads; when one is empty, wait for the next commit
        (touching `stream`, when given), or end once the log closes or subscriptions end."""

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
            async for event in batches:
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
            async for event in batches:
                version = event.version
                yield event
