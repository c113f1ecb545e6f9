"""One-line summaries of events, for timelines on the command line and over HTTP."""

from __future__ import annotations

from typing import Any

import msgspec

from cuelog.runtime import RecordedEvent

_generic = msgspec.msgpack.Decoder()
_json = msgspec.json.Encoder()


def payload(event: RecordedEvent) -> Any:
    try:
        data = _generic.decode(event.data)
    except msgspec.DecodeError:
        return None
    if isinstance(data, dict):
        data.pop("type", None)
    return data


def summary(event: RecordedEvent, width: int = 90) -> str:
    """One line saying what an event is about."""
    data = payload(event)
    if isinstance(data, dict):
        if event.type == "AssistantDelta":
            text = repr(data.get("text", ""))
        elif event.type in {"ToolCallRequested", "ApprovalRequested"}:
            call = data.get("call", {})
            text = f"{call.get('name')}({call.get('arguments')})"
        elif event.type == "MessageAccepted":
            messages = data.get("messages", [])
            last = messages[-1] if messages else {}
            text = f"{data.get('run_id')}: {last.get('role')}: {last.get('content')!r}"
        elif event.type in {"RunStarted"}:
            text = f"agent={data.get('agent_id')} session={data.get('session_key')}"
        elif event.type == "AssistantMessage":
            message = data.get("message", {})
            text = repr(message.get("content")) if message.get("content") else "tool calls"
        else:
            text = _json.encode(data).decode()
    else:
        text = str(data)
    return text if len(text) <= width else text[: width - 1] + "…"
