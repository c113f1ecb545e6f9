"""The envelope every backend stores and hashes: one byte layout, one hash rule.

A stored record is `hash (32) || prev (32) || body`, where `body` is the canonical msgpack array
[seq, stream, version, type, ts, causation, correlation, actor, data] and
`hash = sha256(prev || body)`. The record from byte 32 on is exactly the hashed input, so a
verifier hashes stored bytes and never re-encodes anything, and an export of the same events has
the same hashes from any backend (see docs/log-format.md).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Sequence
from typing import Final

import msgspec

from cuelog.runtime._codec import Event, encode_payload, event_type
from cuelog.runtime._errors import LogFormatError, PayloadTooLarge
from cuelog.runtime._records import RecordedEvent

HASH_SIZE: Final = 32
# Where `prev` and `body` start in a stored record.
PREV_OFFSET: Final = HASH_SIZE
BODY_OFFSET: Final = 2 * HASH_SIZE
NO_STREAM: Final = 0
MAX_NAME_BYTES: Final = 255

_U64 = struct.Struct(">Q")


class RawEvent(msgspec.Struct, frozen=True):
    """An event whose payload is already encoded: `data` is exactly one msgpack value."""

    type: str
    data: bytes


class AppendPart(msgspec.Struct, frozen=True):
    """One stream's share of an atomic multi-stream append (`EventLog.append_many`)."""

    stream: str
    events: Sequence[Event | RawEvent]
    expected_version: int | None = None
    # Who caused this part's events (the envelope's `actor`); None: the append's `actor`.
    actor: str | None = None


class RecordBody(msgspec.Struct, array_like=True):
    """The hashed body of a record; `data` is inlined as the payload's own msgpack bytes."""

    seq: int
    stream: str
    version: int
    type: str
    ts: int
    causation: str | None
    correlation: str | None
    actor: str | None
    data: msgspec.Raw


_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(RecordBody)
_raw_decoder = msgspec.msgpack.Decoder(msgspec.Raw)


def now_us() -> int:
    return time.time_ns() // 1000


def genesis_hash(log_id: bytes) -> bytes:
    """The `prev` of seq 1: chains from different logs never share a hash."""
    return hashlib.sha256(log_id).digest()


def encode_record(
    seq: int,
    stream: str,
    version: int,
    type_name: str,
    ts: int,
    causation: str | None,
    correlation: str | None,
    actor: str | None,
    data: bytes,
    prev: bytes,
) -> tuple[RecordedEvent, bytes]:
    """The event as recorded, and the exact record to store: hash || prev || body."""
    body = _body_encoder.encode(
        RecordBody(
            seq, stream, version, type_name, ts, causation, correlation, actor, msgspec.Raw(data)
        )
    )
    digest = hashlib.sha256(prev + body).digest()
    recorded = RecordedEvent(
        seq=seq,
        stream=stream,
        version=version,
        type=type_name,
        ts=ts,
        causation=causation,
        correlation=correlation,
        actor=actor,
        data=data,
        prev=prev,
        hash=digest,
    )
    return recorded, digest + prev + body


def decode_record(value: bytes) -> RecordedEvent:
    """Decode a stored record; raises LogFormatError on anything malformed."""
    if len(value) <= BODY_OFFSET:
        raise LogFormatError("record is shorter than its two hashes")
    try:
        body = _body_decoder.decode(value[BODY_OFFSET:])
    except msgspec.DecodeError as exc:
        raise LogFormatError(f"record body is not a valid envelope: {exc}") from exc
    return RecordedEvent(
        seq=body.seq,
        stream=body.stream,
        version=body.version,
        type=body.type,
        ts=body.ts,
        causation=body.causation,
        correlation=body.correlation,
        actor=body.actor,
        data=bytes(body.data),
        prev=bytes(value[PREV_OFFSET:BODY_OFFSET]),
        hash=bytes(value[:HASH_SIZE]),
    )


def check_name(kind: str, name: str) -> bytes:
    """Stream names and idempotency keys are 1-255 bytes of UTF-8 without NUL (NUL separates
    a stream from its version in the LMDB index)."""
    raw = name.encode()
    if not raw or len(raw) > MAX_NAME_BYTES or b"\x00" in raw:
        raise ValueError(f"{kind} must be 1-{MAX_NAME_BYTES} bytes of UTF-8 without NUL")
    return raw


def check_msgpack(data: bytes) -> None:
    """A raw payload is inlined into the envelope, so it must be exactly one msgpack value."""
    try:
        _raw_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"RawEvent.data is not one msgpack value: {exc}") from None


def encode_events(
    events: Sequence[Event | RawEvent], max_event_bytes: int
) -> list[tuple[str, bytes]]:
    """(type, payload bytes) per event, refusing bad or oversize payloads before any write."""
    if not events:
        raise ValueError("append needs at least one event")
    encoded: list[tuple[str, bytes]] = []
    for event in events:
        if isinstance(event, RawEvent):
            check_msgpack(event.data)
            item = (event.type, event.data)
        else:
            item = (event_type(type(event)), encode_payload(event))
        if len(item[1]) > max_event_bytes:
            raise PayloadTooLarge(len(item[1]), max_event_bytes)
        encoded.append(item)
    return encoded


def request_digest(stream: str, encoded: list[tuple[str, bytes]]) -> bytes:
    """What an idempotency key is bound to: the stream and every event's type and payload."""
    h = hashlib.sha256(stream.encode())
    for type_name, data in encoded:
        h.update(b"\x00" + type_name.encode() + b"\x00" + _U64.pack(len(data)) + data)
    return h.digest()
