"""`Domain`: the domain's front door. Everything above it (HTTP, CLI, tests) goes through it.

It registers the agent, session and run actors, seeds the `default` agent, closes or resumes the
runs a crash interrupted, and turns calls into actor messages. It also owns the domain's other
writes (API keys, idempotency claims, the emergency stop) and the readers the layers above use,
so nothing above it appends to the log, names a stream or decodes a payload.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, suppress
from typing import Any, Final, TypeVar, final

import msgspec
import structlog
import trio

from cuelog.actors._agent import (
    AgentActor,
    AgentView,
    CreateAgent,
    DeleteAgent,
    GetAgent,
    UpdateAgent,
)
from cuelog.actors._budgets import Budgets
from cuelog.actors._commands import ADMIN, Caller, CancelRun, GetRun, RunView
from cuelog.actors._content import resolve_messages, store_media
from cuelog.actors._errors import InputTooLarge, Invalid, NotFound, Unavailable
from cuelog.actors._events import (
    APPROVAL_REQUESTED,
    DOMAIN_CODEC,
    RUN_SETTLED,
    SESSION_DELETED,
    TERMINAL_EVENTS,
    AgentSpec,
    ApprovalPolicy,
    ApprovalRequested,
    BusyPolicy,
    EmergencyStopChanged,
    MessageAccepted,
    RunSettled,
    RunStarted,
    SessionCreated,
)
from cuelog.actors._failover import follow_emergency_stop, take_over_orphans
from cuelog.actors._idempotency import Claim, claim_request
from cuelog.actors._keys import KeyStore
from cuelog.actors._messages import ChatMessage, Usage
from cuelog.actors._names import (
    AGENT,
    RUN,
    SESSION,
    SYSTEM_STREAM,
    TERMINAL,
    agent_stream,
    idempotency_stream,
    run_stream,
    session_stream,
    stream_id,
    stream_prefix,
)
from cuelog.actors._projector import ProjectorMode
from cuelog.actors._read_models import ReadModels, open_read_models
from cuelog.actors._readers import (
    RunEvent,
    TimelineRow,
    decode_event,
    follow_run,
    follow_session,
    run_timeline,
    session_events,
)
from cuelog.actors._run import (
    DecideApproval,
    RunRegistry,
    RunSettings,
    RunState,
    fold_run,
    run_factory,
    run_view,
)
from cuelog.actors._session import (
    DeleteSession,
    ForkFrom,
    GetSession,
    PatchSession,
    ResetSession,
    Send,
    Sent,
    SessionActor,
    SessionView,
    session_view,
)
from cuelog.actors._session_fold import SessionState, session_state_at
from cuelog.actors._sessions_catalog import OpenWork
from cuelog.actors._traces import Trace, fold_trace
from cuelog.runtime import (
    ActorConfig,
    ActorOwnedElsewhere,
    ActorSystem,
    ClusterConfig,
    EventLog,
    LeaseStatistics,
    LogError,
    ProjectionStore,
    RecordedEvent,
    open_actor_system,
    open_leases,
)

logger = structlog.get_logger("cuelog.domain")

QUEUED_HINTS = 100_000
T = TypeVar("T")
_payload_size = msgspec.msgpack.Encoder()  # the same size as the log's encoding of an event
_MAX_VERSION = (1 << 32) - 1  # the widest version a reference can carry
_SETTLED_READ = 64  # session events read at once while looking for a run's settlement
INVOKE_AGENT = "tools"  # the agent id `invoke_tool` runs are recorded under (no agent is needed)
# Listing pages read at most SCAN_PER_PAGE streams, SCAN_BATCH at a time with a checkpoint in
# between: one batch of session folds takes a few milliseconds, so no listing holds the event
# loop for long however few of the streams the caller may see.
SCAN_PER_PAGE = 2_000
SCAN_BATCH = 64


def _settles(record: RecordedEvent, run_id: str) -> bool:
    """Whether a session's record settles the run (or deletes the session: nothing will)."""
    if record.type == SESSION_DELETED:
        return True
    if record.type == RUN_SETTLED:
        event = DOMAIN_CODEC.decode(record.type, record.data)
        return isinstance(event, RunSettled) and event.run_id == run_id
    return False


def random_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class IdempotencyKey(msgspec.Struct, frozen=True):
    """A request's `Idempotency-Key`: who sent it (`scope`), the key, what it was sent to
    (`route`) and the digest of the request, so a repeat can be told from a reuse."""

    scope: str
    key: str
    route: str
    digest: str


@final
class Domain:
    """Agents, sessions, runs, keys and the emergency stop over one actor system and one log."""

    QUEUED_HINTS: Final = QUEUED_HINTS

    def __init__(
        self,
        system: ActorSystem,
        log: EventLog,
        settings: RunSettings,
        registry: RunRegistry,
        ids: Callable[[str], str],
    ) -> None:
        self.system = system
        self.log = log
        self.settings = settings
        self.registry = registry
        self.keys = KeyStore(log)
        self._ids = ids
        self._queued: dict[str, str] = {}  # run id -> session key, until the run starts
        # Checked before a run is sent, once the read models run beside the domain.
        self.budgets: Budgets | None = None
        self._max_event_bytes = log.statistics().max_event_bytes
        # The projections, when the domain keeps them: recovery and the session listing read
        # their catalogs instead of folding every session.
        self.read_models: ReadModels | None = None

    # -- agents --------------------------------------------------------------------------------

    async def create_agent(
        self, agent_id: str, spec: AgentSpec, *, if_absent: bool = False
    ) -> AgentView:
        view: AgentView = await self.system.ref(AGENT, agent_id).ask(CreateAgent(spec, if_absent))
        return view

    async def update_agent(self, agent_id: str, spec: AgentSpec) -> AgentView:
        view: AgentView = await self.system.ref(AGENT, agent_id).ask(UpdateAgent(spec))
        return view

    async def delete_agent(self, agent_id: str) -> None:
        await self.system.ref(AGENT, agent_id).ask(DeleteAgent())

    async def get_agent(self, agent_id: str) -> AgentView:
        view: AgentView = await self.system.ref(AGENT, agent_id).ask(GetAgent())
        return view

    def agent_created(self, agent_id: str) -> int:
        """When the agent was created, in seconds since the epoch (0 if it never was)."""
        first = self.log.read_stream(agent_stream(agent_id), 1, limit=1)
        return first[0].ts // 1_000_000 if first else 0

    async def list_agents(
        self, *, after: str | None = None, limit: int = 100, scan: int | None = None
    ) -> tuple[list[AgentView], str | None]:
        """A page of agents in id order, and the cursor of the next page (or None).

        At most `scan` agent streams are looked at per page (deleted agents are skipped), so a
        page may come back short, even empty, with a cursor to go on from.
        """

        async def pick(agent_id: str) -> AgentView | None:
            try:
                return await self.get_agent(agent_id)
            except NotFound:
                return None  # deleted

        return await self._page(AGENT, pick, after=after, limit=limit, scan=scan)

    # -- messages and runs ---------------------------------------------------------------------

    async def send(
        self,
        agent_id: str,
        messages: list[ChatMessage],
        *,
        session_key: str | None = None,
        caller: Caller = ADMIN,
        busy_policy: BusyPolicy | None = None,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
        idempotency: IdempotencyKey | None = None,
        spec: AgentSpec | None = None,
    ) -> Sent:
        """Put messages in a session's inbox (creating it if needed); return the run's id.

        Durable before it returns: the messages and the run are in the log. With `idempotency`,
        the first request with that key makes the run and a repeat attaches to it. The run
        starts with the agent's current definition, or with `spec` when given (then the agent
        is neither read nor needed).
        """
        if self.registry.stopped:
            raise Unavailable("emergency stop is on: new runs are refused until it is released")
        if spec is None:  # read before an Idempotency-Key is claimed in the log
            spec = (await self.get_agent(agent_id)).spec
        if idempotency is None or not self._claimed(idempotency):
            # A retry of a request already taken attaches to its run whatever the budget says.
            await self.check_budgets(agent_id, spec, caller)
        key = session_key or self._ids("sess")
        run = run_id or self._ids("run")
        messages = await store_media(messages, self.log.content)
        self._check_fits(agent_id, spec, messages, metadata or {}, key, run, caller)
        if idempotency is not None:
            claim = await self.claim(idempotency, run_id=run, session_key=key)
            run, key = claim.run_id, claim.session_key
            if claim.repeated and self.log.stream_version(run_stream(run)) > 0:
                # The first request's run has started, so its message is in: attach to it
                # (however many runs the session has had since).
                await self._wait_where_it_runs(run)
                return Sent(key, run, queued=False)
        sent: Sent = await self.system.ref(SESSION, key).ask(
            Send(
                run_id=run,
                messages=messages,
                agent_id=agent_id,
                caller=caller,
                busy_policy=busy_policy,
                metadata=metadata or {},
                spec=spec,
            )
        )
        self._remember_queued(run, key)
        return sent

    async def _wait_where_it_runs(self, run_id: str) -> None:
        """In cluster mode, a repeat attaching to a run that runs on another node is sent there
        (`ActorOwnedElsewhere`): only the run's node hears of an end the log refused (a full
        database), so only a waiter there is told instead of waiting for an end that never
        comes. A run that ended (or whose node died) is waited for here, in the log."""
        placement = self.system.placement
        stream = run_stream(run_id)
        if placement is None or placement.holds(stream):
            return
        with suppress(LogError):  # the lease table unreachable: follow the log here
            moved = await placement.owner(stream)
            if moved is not None:
                raise moved

    async def check_budgets(self, agent_id: str, spec: AgentSpec, caller: Caller) -> None:
        """Refuse (`BudgetExceeded`) a run the agent's or the caller's budget has no room for."""
        if self.budgets is not None:
            await self.budgets.check(agent_id, spec, caller)

    def _check_fits(
        self,
        agent_id: str,
        spec: AgentSpec,
        messages: list[ChatMessage],
        metadata: dict[str, Any],
        key: str,
        run: str,
        caller: Caller,
    ) -> None:
        """Refuse input that would make one of the events it causes larger than the log accepts,
        before anything is written: the events that carry it are built and measured."""
        for index, message in enumerate(messages):
            if message.content_digest is not None:
                raise Invalid(
                    "content_digest is set by the server for stored tool outputs, not by clients",
                    param=f"messages.{index}.content_digest",
                )
        carriers = (
            SessionCreated(
                session_key=key, agent_id=agent_id, owner=caller.owner, metadata=metadata
            ),
            MessageAccepted(run_id=run, messages=messages, metadata=metadata, spec=spec),
            RunStarted(
                run_id=run,
                session_key=key,
                agent_id=agent_id,
                spec=spec,
                messages=messages,
                owner=caller.owner,
                history_stream=session_stream(key),
                history_version=_MAX_VERSION,
            ),
        )
        size = max(len(_payload_size.encode(event)) for event in carriers)
        if size > self._max_event_bytes:
            raise InputTooLarge(size, self._max_event_bytes)

    async def claim(self, request: IdempotencyKey, *, run_id: str, session_key: str) -> Claim:
        """Claim an `Idempotency-Key` for a run, or learn the run a first request made."""
        return await claim_request(
            self.log,
            scope=request.scope,
            key=request.key,
            route=request.route,
            digest=request.digest,
            run_id=run_id,
            session_key=session_key,
        )

    def _claimed(self, request: IdempotencyKey) -> bool:
        """Whether a first request already claimed this `Idempotency-Key`."""
        return self.log.stream_version(idempotency_stream(request.scope, request.key)) > 0

    def _remember_queued(self, run_id: str, session_key: str) -> None:
        """Where to look for a run before it starts (a bounded hint, checked against the
        session, so a stale entry is harmless)."""
        self._queued[run_id] = session_key
        while len(self._queued) > QUEUED_HINTS:
            del self._queued[next(iter(self._queued))]

    async def get_run(
        self, run_id: str, *, caller: Caller = ADMIN, session_key: str | None = None
    ) -> RunView:
        """The run's current view; a queued run that has not started yet is reported queued
        (found through `session_key` when another process queued it)."""
        try:
            ref = self.system.ref(RUN, run_id)
        except ValueError:  # not an id any run can have (empty, NUL, too long)
            raise NotFound(f"no run {run_id!r}") from None
        try:
            view: RunView = await ref.ask(GetRun(caller))
        except NotFound:
            session_key = self._queued.get(run_id) or session_key
            if session_key is None:
                raise
            try:
                session = await self.get_session(session_key, caller=caller)
            except NotFound:  # not the caller's: the answer must not name the session
                raise NotFound(f"no run {run_id!r}") from None
            if run_id not in session.queued_runs and run_id != session.current_run:
                raise
            return RunView(
                id=run_id,
                status="queued",
                session_key=session_key,
                agent_id=session.agent_id,
                owner=session.owner,
                step=0,
                content="",
                usage=Usage(),
                error=None,
                pending_approvals=[],
                messages=[],
                version=0,
            )
        return await self.resolved(view)

    async def resolved(self, view: RunView) -> RunView:
        """`view` with stored tool outputs read back from the content store, whole."""
        if not any(m.content_digest for m in view.messages):
            return view
        messages = await resolve_messages(view.messages, [self.log.content], strict=False)
        return msgspec.structs.replace(view, messages=messages)

    async def wait_run(self, run_id: str, *, caller: Caller = ADMIN) -> RunView:
        """Wait until the run ends and its session has taken its messages; return its view.

        Waiting for the session too means a message sent right after goes to an idle session
        (a `reject` session would otherwise refuse it as busy).
        """
        await self.get_run(run_id, caller=caller)  # ownership and existence
        with self.registry.watch(run_id):  # raises the log's error if it refuses the run's end
            async for _ in follow_run(self.log, run_id):
                pass
        view = await self.get_run(run_id, caller=caller)
        await self._wait_settled(view.session_key, run_id)
        return view

    async def wait_sent(self, sent: Sent) -> RunView:
        """`wait_run` for a run the caller has just been given by `send`: the run's view is
        folded from the events followed (which the wait reads anyway) and the session is read
        from the version the message went in at, so no actor is asked anything.

        Returns the view as far as the log got if subscriptions end first (a server stopping).
        """
        state = RunState()
        version = 0
        with self.registry.watch(sent.run_id):  # the log's error if it refuses the run's end
            # A plain loop over the subscription, closed here: no generator around it, and
            # none left for the garbage collector to finish in a task of its own.
            records = self.log.subscribe_stream(run_stream(sent.run_id))
            async with aclosing(records):  # type: ignore[type-var]
                async for record in records:
                    event = decode_event(record)
                    if event is not None:
                        state = fold_run(state, event)
                    version = record.version
                    if record.type in TERMINAL_EVENTS:
                        break
        view = run_view(sent.run_id, state, version)
        if view.status in TERMINAL:
            if sent.session_version:
                await self._wait_settled_after(sent.session_key, sent.run_id, sent.session_version)
            else:  # a repeated request: the run may have settled long ago
                await self._wait_settled(sent.session_key, sent.run_id)
        return await self.resolved(view)

    async def _wait_settled(self, session_key: str, run_id: str) -> None:
        try:
            session = await self.get_session(session_key)
        except NotFound:
            return  # deleted: nobody will read its history
        if session.current_run != run_id:
            return
        await self._wait_settled_after(session_key, run_id, session.version)

    async def _wait_settled_after(self, session_key: str, run_id: str, version: int) -> None:
        """Until the session records `RunSettled` for the run (or is deleted) after `version`."""
        stream = session_stream(session_key)
        # Usually the commit that ended the run settled it: one read finds it, no subscription.
        for record in self.log.read_stream(stream, version + 1, limit=_SETTLED_READ):
            if _settles(record, run_id):
                return
            version = record.version
        records = self.log.subscribe_stream(stream, version)
        async with aclosing(records):  # type: ignore[type-var]
            async for record in records:
                if _settles(record, run_id):
                    return

    async def cancel_run(
        self, run_id: str, *, caller: Caller = ADMIN, reason: str = "cancelled"
    ) -> RunView:
        view: RunView = await self.system.ref(RUN, run_id).ask(CancelRun(reason, caller))
        return await self.resolved(view)

    async def decide_approval(
        self,
        approval_id: str,
        *,
        approve: bool,
        args_digest: str,
        by: str | None = None,
        reason: str = "",
        caller: Caller = ADMIN,
    ) -> RunView:
        run_id = approval_id.rpartition(".")[0]
        if not run_id:
            raise NotFound(f"no approval {approval_id!r}")
        view: RunView = await self.system.ref(RUN, run_id).ask(
            DecideApproval(
                approval_id=approval_id,
                approve=approve,
                args_digest=args_digest,
                by=by,
                reason=reason,
                caller=caller,
            )
        )
        return await self.resolved(view)

    async def approval_detail(
        self, approval_id: str, *, caller: Caller = ADMIN
    ) -> dict[str, Any] | None:
        """What an approval is for: its run, tool call, arguments digest and state."""
        run_id = approval_id.rpartition(".")[0]
        if not run_id:
            return None
        view = await self.get_run(run_id, caller=caller)
        for record in self.log.read_stream(run_stream(run_id)):
            if record.type != APPROVAL_REQUESTED:
                continue
            event = DOMAIN_CODEC.decode(record.type, record.data)
            assert isinstance(event, ApprovalRequested)
            if event.approval_id == approval_id:
                return {
                    "id": approval_id,
                    "object": "approval",
                    "run_id": run_id,
                    "session_key": view.session_key,
                    "agent_id": view.agent_id,
                    "tool": event.call.name,
                    "arguments": event.call.arguments,
                    "call_id": event.call.id,
                    "args_digest": event.args_digest,
                    "status": "pending" if approval_id in view.pending_approvals else "decided",
                    "requested_seq": record.seq,
                    "requested_at": record.ts // 1_000_000,
                }
        return None

    async def invoke_tool(
        self,
        name: str,
        args: dict[str, Any],
        *,
        caller: Caller = ADMIN,
        approval: ApprovalPolicy = "ask",
    ) -> RunView:
        """Run one tool call in a run of its own, recorded like any other, under `approval`
        (the invoke policy, not any agent's). No agent is read or changed: the run's definition
        travels with its message, under the agent id `tools`.

        Returns once the run ends or waits for an approval.
        """
        spec = AgentSpec(
            name=INVOKE_AGENT,
            provider="echo",
            model="echo-1",
            tools=[name],
            approval=approval,
            max_steps=2,
        )
        line = f"/tool {name} {msgspec.json.encode(args).decode()}"
        sent = await self.send(
            INVOKE_AGENT, [ChatMessage(role="user", content=line)], caller=caller, spec=spec
        )
        with self.registry.watch(sent.run_id):
            async for item in follow_run(self.log, sent.run_id):
                if isinstance(item.event, ApprovalRequested):
                    break
        return await self.get_run(sent.run_id, caller=caller)

    def pending_approvals(self) -> dict[str, str]:
        """approval id -> run id, for every approval waiting for a decision."""
        return dict(self.registry.pending_approvals)

    # -- sessions ------------------------------------------------------------------------------

    async def get_session(self, key: str, *, caller: Caller = ADMIN) -> SessionView:
        view: SessionView = await self.system.ref(SESSION, key).ask(GetSession(caller))
        if any(m.content_digest for m in view.messages):
            messages = await resolve_messages(view.messages, [self.log.content], strict=False)
            view = msgspec.structs.replace(view, messages=messages)
        return view

    async def reset_session(self, key: str, *, caller: Caller = ADMIN) -> SessionView:
        view: SessionView = await self.system.ref(SESSION, key).ask(ResetSession(caller))
        return view

    async def patch_session(
        self,
        key: str,
        *,
        caller: Caller = ADMIN,
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
        busy_policy: BusyPolicy | None = None,
    ) -> SessionView:
        view: SessionView = await self.system.ref(SESSION, key).ask(
            PatchSession(caller=caller, label=label, metadata=metadata, busy_policy=busy_policy)
        )
        return view

    async def delete_session(self, key: str, *, caller: Caller = ADMIN) -> None:
        await self.system.ref(SESSION, key).ask(DeleteSession(caller))

    async def list_sessions(
        self,
        *,
        caller: Caller = ADMIN,
        agent_id: str | None = None,
        after: str | None = None,
        limit: int = 50,
        scan: int | None = None,
        user_id: str | None = None,
    ) -> tuple[list[SessionView], str | None]:
        """A page of sessions the caller may see, and the cursor of the next page (or None).

        At most `scan` sessions are read per page and the event loop gets a turn between
        batches, so a caller who owns few of many sessions gets short (even empty) pages with a
        cursor instead of holding the server while the whole log is read. With the sessions
        catalog, only the sessions listed are read from the log.
        """
        if self.read_models is not None:
            rows, next_cursor = await self.read_models.list_sessions(
                caller=caller,
                agent_id=agent_id,
                user_id=user_id,
                after=after,
                limit=limit,
                scan=scan,
            )
            views = []
            for row in rows:  # the catalog may be a moment behind: the log has the last word
                state = self.session_state_at(row.key)
                if (
                    state.exists
                    and not state.deleted
                    and (caller.admin or state.owner == caller.owner)
                    and (agent_id is None or state.agent_id == agent_id)
                    and (user_id is None or state.metadata.get("user_id") == user_id)
                ):
                    stream = session_stream(row.key)
                    views.append(session_view(row.key, state, self.log.stream_version(stream)))
            return views, next_cursor

        async def pick(key: str) -> SessionView | None:
            state = self.session_state_at(key)
            if not state.exists or state.deleted:
                return None
            if not caller.admin and state.owner != caller.owner:
                return None
            if agent_id is not None and state.agent_id != agent_id:
                return None
            if user_id is not None and state.metadata.get("user_id") != user_id:
                return None
            # Built from the fold just read: listing spawns no actor per session.
            return session_view(key, state, self.log.stream_version(session_stream(key)))

        return await self._page(SESSION, pick, after=after, limit=limit, scan=scan)

    async def _page(
        self,
        kind: str,
        pick: Callable[[str], Awaitable[T | None]],
        *,
        after: str | None,
        limit: int,
        scan: int | None,
    ) -> tuple[list[T], str | None]:
        """The one pager of listings: up to `limit` of what `pick` keeps of the `kind` streams
        after `after`, in id order, and the cursor of the next page (None at the end). At most
        `scan` streams are looked at, `SCAN_BATCH` at a time with a checkpoint in between."""
        out: list[T] = []
        scan = SCAN_PER_PAGE if scan is None else scan
        prefix = stream_prefix(kind)
        cursor = f"{prefix}{after}" if after is not None else None
        scanned = 0
        exhausted = False
        while len(out) < limit and scanned < scan:
            names = self.log.list_streams(
                prefix, after=cursor, limit=min(SCAN_BATCH, scan - scanned)
            )
            if not names:
                exhausted = True
                break
            for name in names:
                cursor = name
                scanned += 1
                item = await pick(stream_id(name, kind))
                if item is not None:
                    out.append(item)
                    if len(out) >= limit:
                        break
            await trio.lowlevel.checkpoint()
        if not exhausted and cursor is not None:
            exhausted = not self.log.list_streams(prefix, after=cursor, limit=1)
        next_cursor = None if exhausted or cursor is None else stream_id(cursor, kind)
        return out, next_cursor

    def session_state_at(self, key: str, at_seq: int | None = None) -> SessionState:
        """The session's folded state as of `at_seq` (or now), straight from the log."""
        return session_state_at(self.log, key, at_seq)

    async def fork_session(
        self, key: str, at_seq: int, *, agent_id: str | None = None, caller: Caller = ADMIN
    ) -> SessionView:
        """A new session whose history is `key`'s at `at_seq`; its first event names the parent."""
        parent = await self.get_session(key, caller=caller)
        event = self.log.read_event(at_seq)
        if event is None:
            raise NotFound(f"no event at seq {at_seq}")
        state = self.session_state_at(key, at_seq)
        new_key = self._ids("sess")
        view: SessionView = await self.system.ref(SESSION, new_key).ask(
            ForkFrom(
                agent_id=agent_id or parent.agent_id,
                history=state.history,
                parent_session=key,
                parent_seq=at_seq,
                parent_hash=event.hash.hex(),
                caller=caller,
            )
        )
        return view

    # -- start-up and emergency stop -----------------------------------------------------------

    async def seed_agents(self, agents: dict[str, AgentSpec]) -> None:
        specs = {"default": AgentSpec(name="default", tools=["clock", "calculator"]), **agents}
        for agent_id, spec in specs.items():
            await self.create_agent(agent_id, spec, if_absent=True)

    async def recover(self) -> int:
        """Touch every session and run left in flight by a crash; return how many were found.

        With the open-runs catalog, that is what it lists once it has caught up with the log
        (the work since its last checkpoint); without, every run and session stream is read."""
        if self.read_models is not None:
            work = await self.read_models.open_work()
            if work is not None:
                found = await self._recover_open(work)
                if found:
                    logger.info("recovered interrupted work", count=found)
                return found
            logger.warning("the open-runs catalog is not available: recovering from the log")
        found = 0
        after: str | None = None
        while True:
            names = self.log.list_streams(stream_prefix(RUN), after=after, limit=500)
            if not names:
                break
            after = names[-1]
            for name in names:
                last = self._last_event(name)
                if last is None or last.type in TERMINAL_EVENTS:
                    continue
                found += 1
                run_id = stream_id(name, RUN)
                try:
                    view = await self.get_run(run_id)
                    await self.get_session(view.session_key)  # rehydrates: settles, starts next
                except (NotFound, ActorOwnedElsewhere):  # another node runs it
                    continue
        after = None
        while True:
            names = self.log.list_streams(stream_prefix(SESSION), after=after, limit=500)
            if not names:
                break
            after = names[-1]
            for name in names:
                key = stream_id(name, SESSION)
                state = self.session_state_at(key)
                if state.deleted:
                    continue
                for queued in state.inbox:  # so get_run reports them queued, not unknown
                    self._remember_queued(queued.run_id, key)
                if state.current_run is not None:
                    if not self.log.stream_version(run_stream(state.current_run)):
                        self._remember_queued(state.current_run, key)
                    found += 1
                    with suppress(ActorOwnedElsewhere):  # another node runs it
                        await self.get_session(key)
        if found:
            logger.info("recovered interrupted work", count=found)
        return found

    async def _recover_open(self, work: OpenWork) -> int:
        """`recover` from the catalog: the same steps, for the runs and sessions it lists."""
        found = 0
        for run_id, _ in work.runs:
            found += 1
            try:
                view = await self.get_run(run_id)
                await self.get_session(view.session_key)  # rehydrates: settles, starts next
            except (NotFound, ActorOwnedElsewhere):  # another node runs it
                continue
        for key, pending in work.sessions:
            for queued in pending.queued:  # so get_run reports them queued, not unknown
                self._remember_queued(queued, key)
            if pending.current_run is not None:
                if not self.log.stream_version(run_stream(pending.current_run)):
                    self._remember_queued(pending.current_run, key)
                found += 1
                with suppress(ActorOwnedElsewhere):  # another node runs it
                    await self.get_session(key)
        return found

    def _last_event(self, stream: str) -> RecordedEvent | None:
        version = self.log.stream_version(stream)
        if version == 0:
            return None
        events = self.log.read_stream(stream, version, limit=1)
        return events[0] if events else None

    def lease_statistics(self) -> LeaseStatistics | None:
        """This node's leases in cluster mode (None when the process runs alone)."""
        placement = self.system.placement
        return placement.statistics() if placement is not None else None

    @property
    def emergency_stopped(self) -> bool:
        return self.registry.stopped

    def restore_emergency_stop(self) -> bool:
        """Take up the last recorded emergency-stop change (at start); return whether it is on."""
        version = self.log.stream_version(SYSTEM_STREAM)
        for record in reversed(self.log.read_stream(SYSTEM_STREAM, max(version - 50, 1))):
            event = DOMAIN_CODEC.decode(record.type, record.data)
            if isinstance(event, EmergencyStopChanged):
                self.registry.stopped = event.stopped
                break
        return self.registry.stopped

    async def emergency_stop(self, *, by: str | None = None, hold: bool = True) -> int:
        """Cancel every active run; with `hold`, also refuse new runs until released. Return
        how many were cancelled."""
        self.registry.stopped = hold or self.registry.stopped
        active = list(self.registry.active)
        async with trio.open_nursery() as nursery:
            for run_id in active:
                nursery.start_soon(self._cancel_quietly, run_id)
        await self.log.append(
            SYSTEM_STREAM,
            [
                EmergencyStopChanged(
                    stopped=self.registry.stopped,
                    cancelled_runs=len(active),
                    node=self._node,
                    stop=True,
                )
            ],
            actor=by,
        )
        return len(active)

    async def _cancel_quietly(self, run_id: str) -> None:
        with suppress(NotFound):
            await self.cancel_run(run_id, reason="emergency stop")

    async def release_emergency_stop(self, *, by: str | None = None) -> None:
        """Allow new runs again."""
        self.registry.stopped = False
        await self.log.append(
            SYSTEM_STREAM, [EmergencyStopChanged(stopped=False, node=self._node)], actor=by
        )

    @property
    def _node(self) -> str | None:
        """This process's node name in cluster mode (None when it runs alone)."""
        placement = self.system.placement
        return placement.node if placement is not None else None

    # -- readers -------------------------------------------------------------------------------

    async def follow_run(
        self, run_id: str, *, caller: Caller | None = None
    ) -> AsyncIterator[RunEvent]:
        """The run's events from its first, then new ones until its last. With `caller`, its
        access is checked now, before the first event is read; without, the run is one the
        caller has just been given by `send`."""
        if caller is not None:
            await self.get_run(run_id, caller=caller)
        return self._follow_watched(run_id)

    async def _follow_watched(self, run_id: str) -> AsyncIterator[RunEvent]:
        """`follow_run`, raising the log's error if it refuses the run's end (see `watch`)."""
        events = follow_run(self.log, run_id)
        async with aclosing(events):
            while True:
                with self.registry.watch(run_id):
                    try:
                        item = await anext(events)
                    except StopAsyncIteration:
                        return
                yield item

    async def run_timeline(self, run_id: str, *, caller: Caller = ADMIN) -> list[TimelineRow]:
        await self.get_run(run_id, caller=caller)
        return run_timeline(self.log, run_id)

    async def run_trace(self, run_id: str, *, caller: Caller = ADMIN) -> Trace:
        """The run as a trace: its spans folded from its stream."""
        await self.get_run(run_id, caller=caller)
        trace = fold_trace(run_id, self.log.read_stream(run_stream(run_id)))
        if trace is None:
            raise NotFound(f"no run {run_id!r}")
        return trace

    async def session_events(
        self, key: str, *, after_seq: int = 0, limit: int = 100, caller: Caller = ADMIN
    ) -> list[RecordedEvent]:
        """Up to `limit` of the session's events after `after_seq`."""
        await self.get_session(key, caller=caller)
        return session_events(self.log, key, after_seq, limit)

    async def follow_session(
        self, key: str, *, after_seq: int = 0, caller: Caller = ADMIN
    ) -> AsyncIterator[RecordedEvent]:
        """The session's events after `after_seq`, then new ones (access checked now)."""
        await self.get_session(key, caller=caller)
        return follow_session(self.log, key, after_seq)


@asynccontextmanager
async def open_domain(
    log: EventLog,
    settings: RunSettings,
    *,
    registry: RunRegistry | None = None,
    config: ActorConfig | None = None,
    agents: dict[str, AgentSpec] | None = None,
    ids: Callable[[str], str] = random_id,
    recover: bool = True,
    cluster: ClusterConfig | None = None,
    projections: ProjectionStore | None = None,
    projector: ProjectorMode = "inline",
) -> AsyncIterator[Domain]:
    """Open the actor system, register the domain actors, seed agents, take up the emergency
    stop and recover interrupted work.

    With `cluster` (several processes on one PostgreSQL log), sessions and runs are leased to
    one node at a time, and this node takes over what dead nodes left in flight. With
    `projections`, the domain's read models run over that store until the block ends
    (`Domain.read_models`), and recovery and the session listing read their catalogs; with an
    LMDB store, `projector` says when a projector process keeps them (see `_projector`)."""
    async with AsyncExitStack() as stack:
        read_models = None
        if projections is not None:
            read_models = await stack.enter_async_context(
                open_read_models(log, projections, projector=projector)
            )
        placement = None
        if cluster is not None:
            placement = await stack.enter_async_context(open_leases(log, cluster, [SESSION, RUN]))
        system = await stack.enter_async_context(
            open_actor_system(log, config=config, placement=placement)
        )
        system.register(AGENT, AgentActor)
        system.register(SESSION, SessionActor)
        registry = registry or RunRegistry()
        system.register(RUN, run_factory(settings, registry))
        domain = Domain(system, log, settings, registry, ids)
        domain.read_models = read_models
        await domain.seed_agents(agents or {})
        if domain.restore_emergency_stop():
            logger.warning("emergency stop is on: new runs are refused until it is released")
        if recover:
            await domain.recover()
        if placement is None:
            yield domain
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take_over_orphans, domain, placement, name="failover")
            nursery.start_soon(follow_emergency_stop, domain, name="emergency stop")
            try:
                yield domain
            finally:
                nursery.cancel_scope.cancel()
