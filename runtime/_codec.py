"""Event payloads: msgspec tagged structs with a schema version, upcast on read, never rewritten.

A payload class names its tag and, once its shape changes, its schema version:

    class RunStarted(Event, tag="RunStarted"):
        run_id: str

    class RunStarted(Event, tag="RunStarted"):   # later
        __schema__ = 2
        run_id: str
        agent_id: str = "default"

    codec.upcaster("RunStarted", 1)(lambda d: {**d, "agent_id": "default"})

The envelope's `type` is the tag for schema 1 and `tag/N` for schema N, so a reader always knows
which shape the stored bytes have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import msgspec

from cuelog.runtime._errors import LogFormatError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_encoder = msgspec.msgpack.Encoder(order="deterministic")
_any_decoder = msgspec.msgpack.Decoder(dict[str, Any])


class Event(msgspec.Struct, frozen=True, kw_only=True, tag=True, omit_defaults=False):
    """Base of every event payload."""

    __schema__: ClassVar[int] = 1


def event_type(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag if cls.__schema__ == 1 else f"{tag}/{cls.__schema__}"


def encode_payload(event: Event) -> bytes:
    return _encoder.encode(event)


def _split_type(type_name: str) -> tuple[str, int]:
    tag, _, schema = type_name.partition("/")
    return tag, int(schema) if schema else 1


class EventCodec:
    """Turns (type, bytes) from the log back into payload structs, upcasting old schemas."""

    def __init__(self, classes: Iterable[type[Event]] = ()) -> None:
        self._current: dict[str, type[Event]] = {}
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Event]) -> type[Event]:
        tag, _ = _split_type(event_type(cls))
        self._current[tag] = cls
        self._decoders[event_type(cls)] = msgspec.msgpack.Decoder(cls)
        return cls

    def upcaster(self, tag: str, from_schema: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function that turns schema `from_schema` of `tag` into the next schema."""

        def register(fn: Upcaster) -> Upcaster:
            self._upcasters[(tag, from_schema)] = fn
            return fn

        return register

    def knows(self, type_name: str) -> bool:
        return _split_type(type_name)[0] in self._current

    def decode(self, type_name: str, data: bytes) -> Event:
        decoder = self._decoders.get(type_name)
        try:
            if decoder is not None:
                event: Event = decoder.decode(data)
                return event
            tag, schema = _split_type(type_name)
            cls = self._current.get(tag)
            if cls is None:
                raise LogFormatError(f"unknown event type {type_name!r}")
            fields = _any_decoder.decode(data)
            while schema < cls.__schema__:
                step = self._upcasters.get((tag, schema))
                if step is None:
                    raise LogFormatError(f"no upcaster from {tag} schema {schema} to {schema + 1}")
                fields = step(fields)
                schema += 1
            fields["type"] = tag
            return msgspec.convert(fields, cls)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise LogFormatError(f"cannot decode {type_name!r} payload: {exc}") from exc
