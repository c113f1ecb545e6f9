"""A session's state as a pure fold of its stream: its history, inbox and current run.

The session actor evolves with it; runs rebuild the history they continue from it (a run records
the session stream and version its history counts up to, not a copy); `state --at`, fork and
replay read sessions at any seq with it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cuelog.actors._events import (
    DOMAIN_CODEC,
    AgentSpec,
    BusyPolicy,
    MessageAccepted,
    RunAssigned,
    RunSettled,
    SessionCreated,
    SessionDeleted,
    SessionPatched,
    SessionReset,
)
from cuelog.actors._messages import ChatMessage
from cuelog.actors._names import session_stream
from cuelog.runtime import Event, EventLog

RECENT_RUNS = 50


class QueuedRun(msgspec.Struct, frozen=True):
    run_id: str
    messages: list[ChatMessage]
    spec: AgentSpec | None = None  # what the run will start with (None: ask the agent)


class SessionState(msgspec.Struct, frozen=True, kw_only=True):
    exists: bool = False
    deleted: bool = False
    agent_id: str = ""
    owner: str | None = None
    busy_policy: BusyPolicy = "enqueue"
    label: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    history: list[ChatMessage] = msgspec.field(default_factory=list)
    inbox: list[QueuedRun] = msgspec.field(default_factory=list)
    current_run: str | None = None
    recent_runs: list[str] = msgspec.field(default_factory=list)
    parent_session: str | None = None
    parent_seq: int | None = None
    parent_hash: str | None = None
    current_spec: AgentSpec | None = None  # the agent definition `current_run` starts with
    # The messages `current_run` brought; the run records only these and refers to the history
    # before them by the session's stream and version.
    current_messages: list[ChatMessage] = msgspec.field(default_factory=list)


def fold_session(state: SessionState, event: Event) -> SessionState:
    """Apply one session event; also used to read a session's state at any seq."""
    replace = msgspec.structs.replace
    match event:
        case SessionCreated():
            return SessionState(
                exists=True,
                agent_id=event.agent_id,
                owner=event.owner,
                busy_policy=event.busy_policy,
                label=event.label,
                metadata=dict(event.metadata),
                parent_session=event.parent_session,
                parent_seq=event.parent_seq,
                parent_hash=event.parent_hash,
                history=list(event.history),
            )
        case MessageAccepted(run_id=run_id, messages=messages, spec=spec):
            return replace(state, inbox=[*state.inbox, QueuedRun(run_id, messages, spec)])
        case RunAssigned(run_id=run_id):
            queued = next((q for q in state.inbox if q.run_id == run_id), None)
            inbox = [q for q in state.inbox if q.run_id != run_id]
            history = state.history + (queued.messages if queued else [])
            recent = [*state.recent_runs, run_id][-RECENT_RUNS:]
            return replace(
                state,
                inbox=inbox,
                history=history,
                current_run=run_id,
                recent_runs=recent,
                current_spec=queued.spec if queued else None,
                current_messages=list(queued.messages) if queued else [],
            )
        case RunSettled(run_id=run_id, messages=messages):
            current = None if state.current_run == run_id else state.current_run
            return replace(
                state,
                history=state.history + messages,
                current_run=current,
                current_messages=state.current_messages if current else [],
            )
        case SessionReset():
            return replace(state, history=[])
        case SessionPatched():
            return replace(
                state,
                label=event.label if event.label is not None else state.label,
                metadata={**state.metadata, **event.metadata}
                if event.metadata is not None
                else state.metadata,
                busy_policy=event.busy_policy or state.busy_policy,
            )
        case SessionDeleted():
            # The inbox stays: its runs are closed as failed once the deletion is durable.
            return replace(state, deleted=True)
    return state


def answered_only(messages: list[ChatMessage]) -> list[ChatMessage]:
    """Drop tool calls a run left unanswered (it was cancelled or failed before the result).

    OpenAI-compatible upstreams refuse a history where an assistant's tool call has no tool
    message after it, so such a call would break every later run of the session.
    """
    answered = {m.tool_call_id for m in messages if m.role == "tool"}
    out: list[ChatMessage] = []
    for message in messages:
        calls = message.tool_calls
        if calls and any(call.id not in answered for call in calls):
            kept = [call for call in calls if call.id in answered]
            if kept or message.content:
                out.append(msgspec.structs.replace(message, tool_calls=kept or None))
            continue
        out.append(message)
    return out


def session_state_at(log: EventLog, key: str, at_seq: int | None = None) -> SessionState:
    """A session's state folded from the log as of `at_seq` (or now)."""
    state = SessionState()
    for record in log.read_stream(session_stream(key)):
        if at_seq is not None and record.seq > at_seq:
            break
        if DOMAIN_CODEC.knows(record.type):
            state = fold_session(state, DOMAIN_CODEC.decode(record.type, record.data))
    return state


def history_at(log: EventLog, stream: str, version: int) -> list[ChatMessage]:
    """The history of the session whose stream is `stream`, as of stream version `version`."""
    state = SessionState()
    for record in log.read_stream(stream, 1, limit=version) if version > 0 else ():
        if DOMAIN_CODEC.knows(record.type):
            state = fold_session(state, DOMAIN_CODEC.decode(record.type, record.data))
    return state.history
