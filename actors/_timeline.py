"""Events as people read them: payloads, one-line summaries and the events of a timeline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from cuelog.actors._errors import NotFound
from cuelog.actors._events import (
    APPROVAL_REQUESTED,
    ASSISTANT_DELTA,
    ASSISTANT_MESSAGE,
    MESSAGE_ACCEPTED,
    RUN_ASSIGNED,
    RUN_STARTED,
    TOOL_CALL_COMPLETED,
    TOOL_CALL_REQUESTED,
)
from cuelog.actors._names import run_stream, session_stream
from cuelog.runtime import EventLog, RecordedEvent

_generic = msgspec.msgpack.Decoder()
_json = msgspec.json.Encoder()


def event_data(event: RecordedEvent) -> Any:
    """The payload as plain data (its `type` tag included); None if it is not msgpack."""
    try:
        return _generic.decode(event.data)
    except msgspec.DecodeError:
        return None


def payload(event: RecordedEvent) -> Any:
    """The payload as plain data, without its `type` tag."""
    data = event_data(event)
    if isinstance(data, dict):
        data.pop("type", None)
    return data


def summary(event: RecordedEvent, width: int = 90) -> str:
    """One line saying what an event is about."""
    data = payload(event)
    if isinstance(data, dict):
        if event.type == ASSISTANT_DELTA:
            text = repr(data.get("text", ""))
        elif event.type in {TOOL_CALL_REQUESTED, APPROVAL_REQUESTED}:
            call = data.get("call", {})
            text = f"{call.get('name')}({call.get('arguments')})"
        elif event.type == MESSAGE_ACCEPTED:
            messages = data.get("messages", [])
            last = messages[-1] if messages else {}
            text = f"{data.get('run_id')}: {last.get('role')}: {last.get('content')!r}"
        elif event.type == RUN_STARTED:
            text = f"agent={data.get('agent_id')} session={data.get('session_key')}"
        elif event.type == TOOL_CALL_COMPLETED and data.get("output_digest"):
            # A stored output: the preview the event keeps and where the whole is, not the whole.
            text = (
                f"{data.get('name')}: {data.get('output_size')} bytes stored as"
                f" {data.get('output_digest')}: {data.get('output')!r}"
            )
        elif event.type == ASSISTANT_MESSAGE:
            message = data.get("message", {})
            text = repr(message.get("content")) if message.get("content") else "tool calls"
        else:
            text = _json.encode(data).decode()
    else:
        text = str(data)
    return text if len(text) <= width else text[: width - 1] + "…"


def timeline_events(
    log: EventLog, *, session: str | None = None, run: str | None = None
) -> Iterator[RecordedEvent]:
    """One run's events, one session's events merged with its runs' in seq order, or (with
    neither) the whole log."""
    if run is not None:
        yield from log.read_stream(run_stream(run))
        return
    if session is not None:
        events = log.read_stream(session_stream(session))
        if not events:
            raise NotFound(f"no session {session!r} in this log")
        run_ids: list[str] = []
        for event in events:
            data = payload(event)
            if event.type == RUN_ASSIGNED and isinstance(data, dict):
                run_ids.append(str(data.get("run_id")))
        merged = list(events)
        for run_id in dict.fromkeys(run_ids):
            merged.extend(log.read_stream(run_stream(run_id)))
        yield from sorted(merged, key=lambda e: e.seq)
        return
    after = 0
    while True:
        page = log.read_all(after, 1000)
        if not page:
            return
        yield from page
        after = page[-1].seq


def is_run_event(event: RecordedEvent) -> bool:
    return event.stream.startswith(run_stream(""))
