"""The session actor: a conversation's history, its inbox and the one run it has at a time.

A message is in the log (`MessageAccepted`) before the caller hears back; the run for it is
assigned (`RunAssigned`) in the same write when the session is idle, or later when the previous
run settles. Effects on other actors (starting or cancelling a run) happen only after the events
that call for them are durable, so a crash in between is repaired on rehydration.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any, final

import msgspec

from cuelog.actors._agent import AgentView, GetAgent
from cuelog.actors._commands import (
    ADMIN,
    Caller,
    CancelRun,
    GetRun,
    RunDone,
    RunView,
    StartRun,
    caller_actor,
)
from cuelog.actors._errors import Conflict, NotFound
from cuelog.actors._events import (
    DOMAIN_CODEC,
    RUN_ASSIGNED,
    SESSION_DELETED,
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
from cuelog.actors._names import AGENT, RUN, TERMINAL, run_stream, session_stream
from cuelog.runtime import (
    ActorContext,
    ActorError,
    ActorSystem,
    Event,
    EventLog,
    EventSourcedActor,
    RecordedEvent,
)

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


class SessionView(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    agent_id: str
    owner: str | None
    busy_policy: BusyPolicy
    label: str | None
    metadata: dict[str, Any]
    messages: list[ChatMessage]
    current_run: str | None
    queued_runs: list[str]
    recent_runs: list[str]
    version: int
    parent_session: str | None = None
    parent_seq: int | None = None


class Sent(msgspec.Struct, frozen=True):
    session_key: str
    run_id: str
    queued: bool


# -- commands ----------------------------------------------------------------------------------


class Send(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    messages: list[ChatMessage]
    agent_id: str
    caller: Caller = ADMIN
    busy_policy: BusyPolicy | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    label: str | None = None
    spec: AgentSpec | None = None  # the agent's definition, read once by the sender


class GetSession(msgspec.Struct, frozen=True):
    caller: Caller = ADMIN


class ResetSession(msgspec.Struct, frozen=True):
    caller: Caller = ADMIN


class PatchSession(msgspec.Struct, frozen=True, kw_only=True):
    caller: Caller = ADMIN
    label: str | None = None
    metadata: dict[str, Any] | None = None
    busy_policy: BusyPolicy | None = None


class DeleteSession(msgspec.Struct, frozen=True):
    caller: Caller = ADMIN


class ForkFrom(msgspec.Struct, frozen=True, kw_only=True):
    """Create this session as a copy of another's history at a seq."""

    agent_id: str
    history: list[ChatMessage]
    parent_session: str
    parent_seq: int
    parent_hash: str
    caller: Caller = ADMIN


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
            )
        case RunSettled(run_id=run_id, messages=messages):
            current = None if state.current_run == run_id else state.current_run
            return replace(state, history=state.history + messages, current_run=current)
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


def session_view(key: str, state: SessionState, version: int) -> SessionView:
    """What callers see of a session's state at a version."""
    return SessionView(
        key=key,
        agent_id=state.agent_id,
        owner=state.owner,
        busy_policy=state.busy_policy,
        label=state.label,
        metadata=state.metadata,
        messages=state.history,
        current_run=state.current_run,
        queued_runs=[q.run_id for q in state.inbox],
        recent_runs=state.recent_runs,
        version=version,
        parent_session=state.parent_session,
        parent_seq=state.parent_seq,
    )


@final
class SessionActor(EventSourcedActor[SessionState]):
    codec = DOMAIN_CODEC

    def initial_state(self) -> SessionState:
        return SessionState()

    def evolve(self, state: SessionState, event: Event) -> SessionState:
        return fold_session(state, event)

    def actor_of(self, command: Any) -> str | None:
        if isinstance(command, RunDone):
            return run_stream(command.run_id)  # the run settles itself into the session
        return caller_actor(command)

    def _check_access(self, state: SessionState, caller: Caller) -> None:
        if not state.exists or state.deleted:
            raise NotFound(f"no session {self.ctx.id!r}")
        if not caller.admin and state.owner != caller.owner:
            raise NotFound(f"no session {self.ctx.id!r}")

    async def decide(self, state: SessionState, command: Any) -> Sequence[Event]:
        match command:
            case Send():
                return self._decide_send(state, command)
            case RunDone(run_id=run_id, status=status, messages=messages):
                if state.current_run != run_id:
                    return []  # already settled (a repeat after recovery)
                events: list[Event] = [
                    RunSettled(run_id=run_id, status=status, messages=answered_only(messages))
                ]
                if state.inbox and not state.deleted:
                    events.append(RunAssigned(run_id=state.inbox[0].run_id))
                return events
            case GetSession(caller=caller):
                self._check_access(state, caller)
                return []
            case ResetSession(caller=caller):
                self._check_access(state, caller)
                return [SessionReset()]
            case PatchSession(caller=caller):
                self._check_access(state, caller)
                return [
                    SessionPatched(
                        label=command.label,
                        metadata=command.metadata,
                        busy_policy=command.busy_policy,
                    )
                ]
            case DeleteSession(caller=caller):
                self._check_access(state, caller)
                return [SessionDeleted()]
            case ForkFrom():
                if state.exists:
                    raise Conflict(f"session {self.ctx.id!r} already exists")
                return [
                    SessionCreated(
                        session_key=self.ctx.id,
                        agent_id=command.agent_id,
                        owner=command.caller.owner,
                        parent_session=command.parent_session,
                        parent_seq=command.parent_seq,
                        parent_hash=command.parent_hash,
                        history=command.history,
                    )
                ]
        raise TypeError(f"session actor cannot handle {type(command).__name__}")

    def _decide_send(self, state: SessionState, command: Send) -> list[Event]:
        events: list[Event] = []
        if state.deleted:
            raise NotFound(f"session {self.ctx.id!r} was deleted")
        if state.exists:
            self._check_access(state, command.caller)
            if state.agent_id != command.agent_id:
                raise Conflict(
                    f"session {self.ctx.id!r} belongs to agent {state.agent_id!r}, "
                    f"not {command.agent_id!r}"
                )
            policy = state.busy_policy
        else:
            policy = command.busy_policy or "enqueue"
            events.append(
                SessionCreated(
                    session_key=self.ctx.id,
                    agent_id=command.agent_id,
                    owner=command.caller.owner,
                    busy_policy=policy,
                    label=command.label,
                    metadata=command.metadata,
                )
            )
        known = {q.run_id for q in state.inbox} | set(state.recent_runs)
        if command.run_id in known:
            return []  # a retried request: the message is already in
        busy = state.current_run is not None or bool(state.inbox)
        if busy and policy == "reject":
            raise Conflict(
                f"session {self.ctx.id!r} is busy with run {state.current_run}; "
                "retry when it finishes (busy_policy is reject)"
            )
        events.append(
            MessageAccepted(
                run_id=command.run_id,
                messages=command.messages,
                metadata=command.metadata,
                spec=command.spec,
            )
        )
        if state.current_run is None and not state.inbox:
            events.append(RunAssigned(run_id=command.run_id))
        return events

    def reply(self, state: SessionState, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        match command:
            case Send(run_id=run_id):
                return Sent(self.ctx.id, run_id, queued=state.current_run != run_id)
            case _:
                return self.view(state)

    def view(self, state: SessionState) -> SessionView:
        return session_view(self.ctx.id, state, self.version)

    def after_commit(
        self, state: SessionState, command: Any, recorded: Sequence[RecordedEvent]
    ) -> None:
        """Start and cancel runs once the events that ask for it are durable."""
        types = {record.type for record in recorded}
        current = state.current_run
        if SESSION_DELETED in types:
            if current is not None:
                self.ctx.start_task(cancel_run, self.ctx.system, current, "session deleted")
            for queued in state.inbox:
                self.ctx.start_task(
                    start_run_for_session,
                    self.ctx,
                    state,
                    queued.run_id,
                    "the session was deleted before this run started",
                )
        elif current is None:
            return
        elif RUN_ASSIGNED in types:
            self.ctx.start_task(start_run_for_session, self.ctx, state, current)
        elif isinstance(command, Send) and state.busy_policy == "interrupt" and recorded:
            self.ctx.start_task(cancel_run, self.ctx.system, current, "interrupted")

    async def on_rehydrated(self, state: SessionState) -> Sequence[Event]:
        if state.current_run is not None and not state.deleted:
            self.ctx.start_task(
                recover_session_run, self.ctx, state.current_run, state.current_spec
            )
        return ()


# -- effects on runs ---------------------------------------------------------------------------


async def start_run_for_session(
    ctx: ActorContext, state: SessionState, run_id: str, error: str | None = None
) -> None:
    """Start the run a session assigned, with the agent definition its message came with; with
    `error` the run is recorded as started and failed at once (its session can no longer run it)."""
    if run_id == state.current_run:
        spec = state.current_spec
    else:
        spec = next((q.spec for q in state.inbox if q.run_id == run_id), None)
    if spec is None:
        # A message recorded before the definition travelled with it: ask the agent.
        try:
            agent: AgentView = await ctx.system.ref(AGENT, state.agent_id).ask(GetAgent())
            spec = agent.spec
        except NotFound:
            error = error or f"agent {state.agent_id!r} does not exist"
    await ctx.system.ref(RUN, run_id).ask(
        StartRun(
            session_key=ctx.id,
            agent_id=state.agent_id,
            owner=state.owner,
            spec=spec,
            messages=state.history,
            error=error,
        )
    )


async def cancel_run(system: ActorSystem, run_id: str, reason: str) -> None:
    with suppress(NotFound, ActorError):
        await system.ref(RUN, run_id).ask(CancelRun(reason=reason))


async def recover_session_run(ctx: ActorContext, run_id: str, spec: AgentSpec | None) -> None:
    """After a session rehydrates with a run in flight: finish what a crash interrupted."""
    run = ctx.system.ref(RUN, run_id)
    try:
        view: RunView = await run.ask(GetRun())
    except NotFound:
        # The run was assigned but never started: start it now.
        session: SessionView = await ctx.ref.ask(GetSession())
        state = SessionState(
            exists=True,
            agent_id=session.agent_id,
            owner=session.owner,
            history=session.messages,
            current_run=run_id,
            current_spec=spec,
        )
        await start_run_for_session(ctx, state, run_id)
        return
    if view.status in TERMINAL:
        await ctx.ref.ask(RunDone(run_id=run_id, status=view.status, messages=view.messages))
