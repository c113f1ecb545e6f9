"""Subscriptions that pull: every backend reads committed events by seq (or a stream by version)
in bounded batches and waits for the next commit only when it has caught up, so a slow consumer
lags in the log and never grows a buffer. A backend supplies `read_all`, `read_stream` and
`_follow` (how it waits for the next commit); the two subscriptions are the same for all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable

from cuelog.runtime._protocol import SUBSCRIBER_BATCH_BYTES
from cuelog.runtime._records import RecordedEvent


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
        self, next_batch: Callable[[], list[RecordedEvent]]
    ) -> AsyncIterator[RecordedEvent]:
        """Yield each batch `next_batch` reads; when one is empty, wait for the next commit
        (or end, once the log closes or subscriptions are ended)."""

    async def subscribe(
        self, after_seq: int = 0, stream_prefix: str | None = None, *, batch: int = 256
    ) -> AsyncIterator[RecordedEvent]:
        """Every committed event after `after_seq` (optionally only streams with a prefix), then
        each new one as it commits. The subscriber pulls from the log: lagging costs no memory."""
        cursor = after_seq

        def next_batch() -> list[RecordedEvent]:
            return self.read_all(cursor, batch, max_bytes=SUBSCRIBER_BATCH_BYTES)

        async for event in self._follow(next_batch):
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

        async for event in self._follow(next_batch):
            version = event.version
            yield event
