"""The session actor: a conversation's history, its inbox and the one run it has at a time.

A message is in the log (`MessageAccepted`) before the caller hears back; the run for it is
assigned (`RunAssigned`) and started (the run's `RunStarted`, a part of the session's commit) in
the same write when the session is idle, or later, in the commit that settles the previous run
(which the run hands to the session with its last events). The run is handed its records and
drives from there. Other effects on runs (cancelling one) happen only after the events that call
for them are durable, so a crash in between is repaired on rehydration.
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
    start_events,
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
from cuelog.actors._names import AGENT, RUN, TERMINAL, run_stream
from cuelog.actors._session_fold import (
    SessionState,
    answered_only,
    fold_session,
)
from cuelog.runtime import (
    ActorContext,
    ActorError,
    ActorSystem,
    AppendPart,
    Event,
    EventLog,
    EventSourcedActor,
    Handed,
    RecordedEvent,
)


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
    # The session's version once the message was in (0 for a repeat that recorded nothing):
    # the run's settlement comes after it, so a waiter reads the session from there.
    session_version: int = 0


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
                # A completed run's unanswered calls are the client's: its next request answers.
                settled = messages if status == "completed" else answered_only(messages)
                events: list[Event] = [RunSettled(run_id=run_id, status=status, messages=settled)]
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

    def parts(
        self, state: SessionState, command: Any, events: Sequence[Event], version: int
    ) -> tuple[Sequence[AppendPart], Sequence[AppendPart]]:
        """A run's end is committed with its settlement (the run asked, with its part), and a
        run this command assigns is started in the same commit: its `RunStarted` is written
        here, at version 0 of its stream, and handed to the run (`after_commit`)."""
        before: list[AppendPart] = []
        if isinstance(command, RunDone) and command.part is not None:
            before.append(command.part)
        after: list[AppendPart] = []
        run_id = state.current_run
        # `RunAssigned` is the last event of a command that assigns, so `version` is its own.
        if run_id is not None and events and isinstance(events[-1], RunAssigned):
            start = start_command(self.ctx, state, run_id, assigned=version)
            if start is not None:
                after.append(
                    AppendPart(
                        run_stream(run_id),
                        start_events(run_id, start),
                        expected_version=0,
                        actor=start.owner or "local",
                    )
                )
        return before, after

    def reply(self, state: SessionState, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        match command:
            case Send(run_id=run_id):
                own = [r for r in recorded if r.stream == self.ctx.stream]
                version = own[-1].version if own else 0
                return Sent(self.ctx.id, run_id, state.current_run != run_id, version)
            case RunDone(part=AppendPart(stream=stream)):
                return [r for r in recorded if r.stream == stream]
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
            assigned = next(r.version for r in recorded if r.type == RUN_ASSIGNED)
            start = start_command(self.ctx, state, current, assigned=assigned)
            stream = run_stream(current)
            started = [r for r in recorded if r.stream == stream]
            if start is None:  # a message from before definitions travelled: ask the agent
                self.ctx.start_task(start_run_for_session, self.ctx, state, current)
            elif started:  # this commit started it: hand the run its records
                handed = Handed(started, msgspec.structs.replace(start, started=True))
                # Straight into the run's mailbox: no task, no waiting for its answer.
                try:
                    self.ctx.system.ref(RUN, current).tell_nowait(handed)
                except ActorError:  # a full mailbox, or shutting down (recovery closes it)
                    self.ctx.start_task(hand_over, self.ctx.system, current, handed)
            else:
                try:
                    self.ctx.system.ref(RUN, current).tell_nowait(start)
                except ActorError:  # a full mailbox, or shutting down (recovery starts it)
                    self.ctx.start_task(start_run_for_session, self.ctx, state, current)
        elif isinstance(command, Send) and state.busy_policy == "interrupt" and recorded:
            self.ctx.start_task(cancel_run, self.ctx.system, current, "interrupted")

    async def on_rehydrated(self, state: SessionState) -> Sequence[Event]:
        if state.current_run is not None and not state.deleted:
            self.ctx.start_task(recover_session_run, self.ctx, state)
        return ()


# -- effects on runs ---------------------------------------------------------------------------


def start_command(
    ctx: ActorContext,
    state: SessionState,
    run_id: str,
    error: str | None = None,
    *,
    assigned: int | None = None,
    spec: AgentSpec | None = None,
) -> StartRun | None:
    """The command that starts the run a session assigned, with the agent definition its message
    came with, else `spec` (None when neither is known: the agent must be asked); with `error`
    the run is recorded as started and failed at once (its session can no longer run it).

    The run records only the messages it brings and the session version its history counts up
    to (the version just before its `RunAssigned`, given as `assigned` when the caller has it),
    so a turn costs the same bytes in the log however long the conversation is."""
    history_stream: str | None = None
    history_version = 0
    history: list[ChatMessage] | None = None
    if run_id == state.current_run:
        spec = state.current_spec or spec
        messages = state.current_messages
        if assigned is None:
            assigned = assigned_version(ctx.log, ctx.stream, run_id)
        if assigned is not None:
            history_stream = ctx.stream
            # A state folded from an old snapshot may not know its run's messages: then the
            # history up to the assignment (which includes them) is the whole conversation.
            history_version = assigned - 1 if messages else assigned
            kept = len(state.history) - len(messages)
            history = state.history[:kept]
        else:  # cannot happen for an assigned run; copy rather than lose the conversation
            messages = state.history
    else:
        queued = next((q for q in state.inbox if q.run_id == run_id), None)
        spec = (queued.spec if queued else None) or spec
        messages = queued.messages if queued else []
    if spec is None and error is None:
        return None
    return StartRun(
        session_key=ctx.id,
        agent_id=state.agent_id,
        owner=state.owner,
        spec=spec,
        messages=messages,
        error=error,
        history_stream=history_stream,
        history_version=history_version,
        history=history,
    )


async def start_run_for_session(
    ctx: ActorContext, state: SessionState, run_id: str, error: str | None = None
) -> None:
    """Start the run a session assigned and wait until it has started (see `start_command`); a
    message recorded before the definition travelled with it asks the agent for it."""
    start = start_command(ctx, state, run_id, error)
    if start is None:
        try:
            agent: AgentView = await ctx.system.ref(AGENT, state.agent_id).ask(GetAgent())
            start = start_command(ctx, state, run_id, spec=agent.spec)
        except NotFound:
            start = start_command(ctx, state, run_id, f"agent {state.agent_id!r} does not exist")
    assert start is not None
    await ctx.system.ref(RUN, run_id).ask(start)


def assigned_version(log: EventLog, stream: str, run_id: str) -> int | None:
    """The version of the session's latest `RunAssigned` for `run_id`, read from the end (it is
    almost always among the last few events)."""
    end = log.stream_version(stream)
    window = 16
    while end > 0:
        start = max(1, end - window + 1)
        for record in reversed(log.read_stream(stream, start, limit=end - start + 1)):
            if record.type == RUN_ASSIGNED:
                event = DOMAIN_CODEC.decode(record.type, record.data)
                if isinstance(event, RunAssigned) and event.run_id == run_id:
                    return record.version
        end = start - 1
        window *= 4
    return None


async def hand_over(system: ActorSystem, run_id: str, handed: Handed) -> None:
    """Hand a run the start its session committed, waiting for room in its mailbox."""
    with suppress(ActorError):
        await system.ref(RUN, run_id).ask(handed)


async def cancel_run(system: ActorSystem, run_id: str, reason: str) -> None:
    with suppress(NotFound, ActorError):
        await system.ref(RUN, run_id).ask(CancelRun(reason=reason))


async def recover_session_run(ctx: ActorContext, state: SessionState) -> None:
    """After a session rehydrates with a run in flight: finish what a crash interrupted."""
    run_id = state.current_run
    assert run_id is not None
    run = ctx.system.ref(RUN, run_id)
    try:
        view: RunView = await run.ask(GetRun())
    except NotFound:
        # The run was assigned but never started: start it now.
        await start_run_for_session(ctx, state, run_id)
        return
    if view.status in TERMINAL:
        await ctx.ref.ask(RunDone(run_id=run_id, status=view.status, messages=view.messages))
