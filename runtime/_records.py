"""What the log stores and returns: recorded events, heads, reports and counters."""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Protocol

import msgspec

_U64 = struct.Struct(">Q")


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as committed: its place in the log, its payload bytes and its chain links.

    `data` is the payload's canonical msgpack; decode it with an `EventCodec`.
    `ts` is microseconds since the Unix epoch.
    """

    seq: int
    stream: str
    version: int
    type: str
    ts: int
    causation: str | None
    correlation: str | None
    actor: str | None
    data: bytes
    prev: bytes
    hash: bytes


class StoredRecord(msgspec.Struct, frozen=True):
    """One event with the exact bytes its hash covers: `sha256(event.prev + body) == event.hash`.

    `body` is the canonical msgpack envelope as stored (docs/log-format.md); an export of the same
    events carries the same bodies and hashes from every backend.
    """

    seq: int
    event: RecordedEvent
    body: bytes


class Head(msgspec.Struct, frozen=True):
    """The last committed seq and its hash (seq 0 carries the genesis hash)."""

    seq: int
    hash: bytes


class Anchor(msgspec.Struct, frozen=True, array_like=True):
    """A head sealed with a key kept outside the data dir: HMAC-SHA256(key, u64be(seq) || hash)."""

    seq: int
    hash: bytes
    mac: bytes
    ts: int = 0

    @staticmethod
    def seal(key: bytes, seq: int, hash: bytes, ts: int = 0) -> Anchor:
        return Anchor(seq, hash, anchor_mac(key, seq, hash), ts)

    def is_sealed_by(self, key: bytes) -> bool:
        return hmac.compare_digest(self.mac, anchor_mac(key, self.seq, self.hash))


def anchor_mac(key: bytes, seq: int, hash: bytes) -> bytes:
    return hmac.new(key, _U64.pack(seq) + hash, hashlib.sha256).digest()


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of walking the chain and the indexes."""

    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    anchored_seq: int | None = None
    content_checked: int = 0  # blobs of the content store re-hashed
    bad_content: str | None = None  # the digest of the first blob whose bytes do not match it


class LogStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for tests and metrics."""

    head_seq: int
    appends: int
    events_appended: int
    batches: int
    largest_batch: int
    commit_seconds_total: float
    conflicts: int
    idempotent_replays: int
    map_size: int
    pending: int
    subscribers: int
    max_event_bytes: int = 1 << 20  # the largest event payload an append accepts


class Progress(Protocol):
    """Called now and then by long work with how far it got."""

    def __call__(self, done: int, total: int) -> None: ...
