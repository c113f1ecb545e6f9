"""The `EventLog` protocol: what every log backend offers, and all that layers above may use.

Backends (LMDB, in-memory) implement it; this module imports none of them, as pyeventsourcing's
`persistence.py` imports no recorder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

from cuelog.runtime._codec import Event
from cuelog.runtime._content import ContentStore
from cuelog.runtime._envelope import AppendPart, RawEvent
from cuelog.runtime._records import (
    Anchor,
    Head,
    LogStatistics,
    Progress,
    RecordedEvent,
    StoredRecord,
    VerifyReport,
)

# What one subscriber holds at most while its consumer is slow: a lagging reader costs a cursor
# and one small batch, never a growing buffer.
SUBSCRIBER_BATCH_BYTES: Final = 64 << 10


class EventLog(Protocol):
    """An append-only, hash-chained, totally ordered log of events in versioned streams."""

    @property
    def readonly(self) -> bool:
        """Opened for reading only: appends, snapshots and anchors raise `LogClosed`."""
        ...

    @property
    def content(self) -> ContentStore | None:
        """The content store beside the log (large payloads by digest); None where the backend
        has none, and callers keep such payloads inline."""
        ...

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

    async def append_many(
        self,
        parts: Sequence[AppendPart],
        *,
        causation: str | None = None,
        correlation: str | None = None,
        actor: str | None = None,
    ) -> list[list[RecordedEvent]]:
        """Append to several streams in one commit: every part, each checked against its own
        `expected_version`, is written, or none is (a conflict in any part raises
        `WrongExpectedVersion` for it and writes nothing). The parts' events follow one another
        in the global order, part by part; one list of records is returned per part. Each
        stream appears once; there is no idempotency key (claim one with `append` first)."""
        ...

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

    def read_records(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[StoredRecord]:
        """Like `read_all`, each event with the exact body its hash covers (for export)."""
        ...

    def subscribe(
        self, after_seq: int = 0, stream_prefix: str | None = None, *, batch: int = 256
    ) -> AsyncIterator[RecordedEvent]: ...

    def subscribe_stream(
        self, stream: str, after_version: int = 0, *, batch: int = 256
    ) -> AsyncIterator[RecordedEvent]: ...

    def follow_batches(
        self, next_batch: Callable[[], list[RecordedEvent]]
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Each non-empty batch `next_batch` reads, reading again at once after each one and
        after each commit (a follower that keeps its own position)."""
        ...

    def end_subscriptions(self) -> None:
        """Make every subscriber return once it has caught up (a server shutting down)."""
        ...

    def poll_now(self) -> None:
        """Another process says it has committed: subscribers that poll for other processes'
        commits read now instead of at their next poll."""
        ...

    def head(self) -> Head: ...

    async def save_snapshot(self, stream: str, version: int, state: bytes) -> None: ...

    def load_snapshot(self, stream: str) -> tuple[int, bytes] | None: ...

    async def anchor(self, key: bytes) -> Anchor: ...

    def stored_anchor(self) -> Anchor | None:
        """The last anchor `anchor` stored, as stored (a garbled one has seq -1)."""
        ...

    async def verify(
        self,
        *,
        anchor_key: bytes | None = None,
        anchor: Anchor | None = None,
        progress: Progress | None = None,
        jobs: int = 1,
    ) -> VerifyReport:
        """Walk the chain and the stream index, then re-hash the content store's blobs; name
        the first bad seq (or blob) and why. Without `anchor`, the stored anchor is checked
        (when `anchor_key` is given). `jobs` > 1 lets a backend that can (LMDB) split the
        hashing over that many processes; the others verify in one."""
        ...

    async def copy_to(self, dest: Path) -> None:
        """Write a consistent copy of the log, as of one commit, into `dest` (new or empty) as
        an ordinary cuelog data dir with the same log id and the exact same records."""
        ...

    def statistics(self) -> LogStatistics: ...
