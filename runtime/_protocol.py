"""The `EventLog` protocol: what every log backend offers. LMDB is the embedded one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from cuelog.runtime._codec import Event
from cuelog.runtime._lmdb import RawEvent
from cuelog.runtime._records import (
    Anchor,
    Head,
    LogStatistics,
    Progress,
    RecordedEvent,
    VerifyReport,
)


class EventLog(Protocol):
    """An append-only, hash-chained, totally ordered log of events in versioned streams."""

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
    ) -> list[RecordedEvent]: ...

    def stream_version(self, stream: str) -> int: ...

    def read_stream(
        self,
        stream: str,
        from_version: int = 1,
        *,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]: ...

    def list_streams(
        self, prefix: str, *, after: str | None = None, limit: int = 100
    ) -> list[str]: ...

    def read_all(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[RecordedEvent]: ...

    def read_event(self, seq: int) -> RecordedEvent | None: ...

    def subscribe(
        self, after_seq: int = 0, stream_prefix: str | None = None, *, batch: int = 256
    ) -> AsyncIterator[RecordedEvent]: ...

    def subscribe_stream(
        self, stream: str, after_version: int = 0, *, batch: int = 256
    ) -> AsyncIterator[RecordedEvent]: ...

    def head(self) -> Head: ...

    async def save_snapshot(self, stream: str, version: int, state: bytes) -> None: ...

    def load_snapshot(self, stream: str) -> tuple[int, bytes] | None: ...

    async def anchor(self, key: bytes) -> Anchor: ...

    def stored_anchor(self) -> Anchor | None: ...

    def end_subscriptions(self) -> None: ...

    async def verify(
        self,
        *,
        anchor_key: bytes | None = None,
        anchor: Anchor | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport: ...

    def statistics(self) -> LogStatistics: ...
