"""The run actor: model call → streamed deltas → tool calls → approvals → tool results → model …

The run's driver is a background task of the actor. It reads the actor's state, does the next
piece of work (a model call, a tool call, waiting for an approval) and records what happened by
asking its own actor, so every output is in the log before it counts. The run's first event is
written by its session's commit and handed to it; its last events go into the commit of the
session settling it (`commit_with`), so a run costs two commits besides its coalesced deltas.
Because the driver always starts from the recorded state, a run waiting for an approval resumes
after a restart, and a run caught mid-model-call by a crash is closed as
`RunFailed(reason="interrupted")`.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager, suppress
from typing import Any, final

import msgspec
import structlog
import trio

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
    with_system_prompt,
)
from cuelog.actors._content import DEFAULT_CONTENT_THRESHOLD, preview, resolve_messages
from cuelog.actors._errors import Conflict, Invalid, ModelError, NotFound, ToolError
from cuelog.actors._events import (
    DOMAIN_CODEC,
    RUN_STARTED,
    TERMINAL_EVENTS,
    AgentSpec,
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    AssistantDelta,
    AssistantMessage,
    ModelRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
)
from cuelog.actors._messages import ChatMessage, ToolCall, ToolSpec, Usage
from cuelog.actors._models import Finished, ModelProvider, ModelRequest, TextDelta, ToolCallChunk
from cuelog.actors._names import SESSION, TERMINAL, agent_stream
from cuelog.actors._session_fold import answered_only, history_at
from cuelog.actors._tools import parse_tool_arguments
from cuelog.actors._tools_registry import ToolRegistry, granted
from cuelog.runtime import (
    ActorContext,
    ActorError,
    ActorOwnedElsewhere,
    ActorStopped,
    ActorSystem,
    AppendPart,
    ContentMissing,
    ContentStore,
    Event,
    EventLog,
    EventSourcedActor,
    LogError,
    RecordedEvent,
    StorageFull,
    TaskHandle,
    WrongExpectedVersion,
)

logger = structlog.get_logger("cuelog.run")

_STOPPED = "emergency stop: new runs are refused"

# Runs whose end the log refused, remembered for the waiters that come later (oldest forgotten).
UNRECORDED_ENDS = 1024

_canonical = msgspec.json.Encoder(order="sorted")


def refuses_writes(error: LogError) -> bool:
    """Whether a failed append means the log takes no writes just now (full, or a commit that
    failed in the store), rather than something about the append itself: a moved stream or
    lease, an event over the limit, a closing log."""
    return isinstance(error, StorageFull) or type(error) is LogError


def args_digest(call: ToolCall) -> str:
    """sha256 of the call's canonical arguments: what an approval is bound to."""
    try:
        parsed: Any = msgspec.json.decode(call.arguments or "{}")
        canonical = _canonical.encode({"name": call.name, "arguments": parsed})
    except msgspec.DecodeError:
        canonical = _canonical.encode({"name": call.name, "raw": call.arguments})
    return hashlib.sha256(canonical).hexdigest()


class RunSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How every run works: its model providers, tools, approval settings and delta coalescing."""

    providers: dict[str, ModelProvider]
    tools: ToolRegistry
    auto_approve: bool = False
    approval_timeout: float = 3600.0  # seconds an approval may wait before it is denied
    delta_interval: float = 0.05  # seconds between two recorded deltas of a streaming model
    delta_chars: int = 64  # or this many characters, whichever comes first
    # Where runs read the session history they continue (None: the log they record to). The
    # replay checker records to a scratch log and reads history from the log it checks.
    history_log: EventLog | None = None
    # A tool output over this many bytes goes to the log's content store, recorded by digest.
    content_threshold: int = DEFAULT_CONTENT_THRESHOLD

    def provider(self, spec: AgentSpec) -> ModelProvider:
        provider = self.providers.get(spec.provider)
        if provider is None:
            raise ModelError(f"model provider {spec.provider!r} is not configured on this server")
        return provider


class RunRegistryStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for health and metrics."""

    active_runs: int
    finished: dict[str, int]  # runs ended since the process started, by status
    pending_approvals: int
    emergency_stop: bool


@final
class RunRegistry:
    """What the runs of one process share while they run: which are active, how many ended,
    the approvals waiting, and the emergency stop that refuses new runs."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.finished: collections.Counter[str] = collections.Counter()
        self.pending_approvals: dict[str, str] = {}  # approval id -> run id
        self.stopped = False
        # Runs whose end the log refused (full, or failing): the error, for their waiters.
        self.unrecorded: dict[str, LogError] = {}
        self._watching: dict[str, set[trio.CancelScope]] = {}

    def end_unrecorded(self, run_id: str, error: LogError) -> None:
        """The log refused the run's end: its waiters (`watch`) stop waiting and raise `error`.

        The run is closed as interrupted once the log takes writes again (its actor restarts,
        or the next process loads it), like a run a crash cut short."""
        self.unrecorded.pop(run_id, None)
        self.unrecorded[run_id] = error
        while len(self.unrecorded) > UNRECORDED_ENDS:
            del self.unrecorded[next(iter(self.unrecorded))]
        for scope in self._watching.pop(run_id, ()):
            scope.cancel()

    def end_recorded(self, run_id: str) -> None:
        """The run's end is in the log after all: waiters follow it there."""
        self.unrecorded.pop(run_id, None)

    @contextmanager
    def watch(self, run_id: str) -> Iterator[None]:
        """Wait for the run inside: if the log refuses its end (or did already), the body is
        cancelled and the log's error raised, instead of waiting for an end that never comes."""
        scope = trio.CancelScope()
        scopes = self._watching.setdefault(run_id, set())
        scopes.add(scope)
        try:
            with scope:
                if run_id in self.unrecorded:
                    scope.cancel()
                yield
        finally:
            scopes.discard(scope)
            if not scopes and self._watching.get(run_id) is scopes:
                del self._watching[run_id]
        error = self.unrecorded.get(run_id)
        if scope.cancelled_caught and error is not None:
            raise error.with_traceback(None) from None

    def statistics(self) -> RunRegistryStatistics:
        return RunRegistryStatistics(
            active_runs=len(self.active),
            finished=dict(self.finished),
            pending_approvals=len(self.pending_approvals),
            emergency_stop=self.stopped,
        )


class Approval(msgspec.Struct, frozen=True):
    call: ToolCall
    digest: str
    status: str = "pending"  # pending | granted | denied
    reason: str = ""


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    status: str = "new"
    session_key: str = ""
    agent_id: str = ""
    owner: str | None = None
    spec: AgentSpec | None = None
    # The messages after the referenced history: the run's own input, then what it produced.
    messages: list[ChatMessage] = msgspec.field(default_factory=list)
    produced: list[ChatMessage] = msgspec.field(default_factory=list)
    step: int = 0
    text: str = ""
    pending_calls: list[ToolCall] = msgspec.field(default_factory=list)
    approvals: dict[str, Approval] = msgspec.field(default_factory=dict)
    usage: Usage = msgspec.field(default_factory=Usage)
    content: str = ""
    error: str | None = None
    history_stream: str | None = None  # the session whose history the run continues
    history_version: int = 0  # ... as of this version of its stream
    # Calls of the client's own functions from the last model step: the run ends with them
    # once its server tools are done.
    client_calls: list[ToolCall] = msgspec.field(default_factory=list)
    finish_reason: str = "stop"


def fold_run(state: RunState, event: Event) -> RunState:
    """Apply one run event; also what replay uses to rebuild a run at any seq."""
    replace = msgspec.structs.replace
    match event:
        case RunStarted():
            return RunState(
                status="running",
                session_key=event.session_key,
                agent_id=event.agent_id,
                owner=event.owner,
                spec=event.spec,
                messages=list(event.messages),
                history_stream=event.history_stream,
                history_version=event.history_version,
            )
        case ModelRequested(step=step):
            return replace(state, step=step, text="")
        case AssistantDelta(text=text):
            return replace(state, text=state.text + text)
        case AssistantMessage(message=message, usage=usage):
            return replace(
                state,
                messages=[*state.messages, message],
                produced=[*state.produced, message],
                text="",
                usage=state.usage + usage,
                client_calls=client_calls(state.spec, message.tool_calls or []),
            )
        case ToolCallRequested(call=call):
            return replace(state, pending_calls=[*state.pending_calls, call])
        case ApprovalRequested(approval_id=approval_id, call=call, args_digest=digest):
            approvals = {**state.approvals, approval_id: Approval(call, digest)}
            return replace(state, approvals=approvals, status="waiting_approval")
        case ApprovalGranted(approval_id=approval_id):
            return _settle_approval(state, approval_id, "granted", "")
        case ApprovalDenied(approval_id=approval_id, reason=reason):
            return _settle_approval(state, approval_id, "denied", reason)
        case ToolCallCompleted(call_id=call_id, name=name, output=output, output_digest=digest):
            return _tool_answered(state, call_id, name, output, digest)
        case ToolCallFailed(call_id=call_id, name=name, error=error):
            return _tool_answered(state, call_id, name, f"error: {error}")
        case RunCompleted(content=content, finish_reason=finish_reason):
            return replace(state, status="completed", content=content, finish_reason=finish_reason)
        case RunFailed(reason=reason):
            return replace(state, status="failed", error=reason)
        case RunCancelled(reason=reason):
            return replace(state, status="cancelled", error=reason)
    return state


def client_calls(spec: AgentSpec | None, calls: list[ToolCall]) -> list[ToolCall]:
    """The calls that name one of the request's client functions (the client runs those)."""
    request = spec.request if spec is not None else None
    if request is None or not request.client_tools:
        return []
    return [call for call in calls if request.is_client_tool(call.name)]


def offered_tools(settings_tools: ToolRegistry, spec: AgentSpec) -> list[ToolSpec]:
    """The agent's server tools and the request's client functions; a client function shadows
    a server tool of the same name for this request."""
    request = spec.request
    client = request.client_tools if request is not None else []
    names = {tool.name for tool in client}
    server = [tool for tool in settings_tools.specs(spec.tools) if tool.name not in names]
    return [*server, *client]


def run_view(run_id: str, state: RunState, version: int) -> RunView:
    """What callers see of a run's state at a version (of its actor, or of a fold)."""
    return RunView(
        id=run_id,
        status=state.status,
        session_key=state.session_key,
        agent_id=state.agent_id,
        owner=state.owner,
        step=state.step,
        content=state.content,
        usage=state.usage,
        error=state.error,
        pending_approvals=[k for k, a in state.approvals.items() if a.status == "pending"],
        messages=state.produced,
        version=version,
        finish_reason=state.finish_reason,
        tool_calls=state.client_calls if state.status == "completed" else [],
    )


def _pending(state: RunState, approval_id: str) -> bool:
    approval = state.approvals.get(approval_id)
    return approval is not None and approval.status == "pending"


def _settle_approval(state: RunState, approval_id: str, status: str, reason: str) -> RunState:
    approval = state.approvals.get(approval_id)
    if approval is None:
        return state
    approvals = {
        **state.approvals,
        approval_id: msgspec.structs.replace(approval, status=status, reason=reason),
    }
    waiting = any(a.status == "pending" for a in approvals.values())
    run_status = state.status
    if run_status == "waiting_approval" and not waiting:
        run_status = "running"
    return msgspec.structs.replace(state, approvals=approvals, status=run_status)


def _tool_answered(
    state: RunState, call_id: str, name: str, content: str, digest: str | None = None
) -> RunState:
    message = ChatMessage(
        role="tool", content=content, tool_call_id=call_id, name=name, content_digest=digest
    )
    return msgspec.structs.replace(
        state,
        pending_calls=[c for c in state.pending_calls if c.id != call_id],
        messages=[*state.messages, message],
        produced=[*state.produced, message],
    )


# -- commands ----------------------------------------------------------------------------------


class Record(msgspec.Struct, frozen=True):
    """Sent by the run's own driver: outputs to record."""

    events: list[Event]


class DecideApproval(msgspec.Struct, frozen=True, kw_only=True):
    approval_id: str
    approve: bool
    args_digest: str
    by: str | None = None
    reason: str = ""
    caller: Caller = ADMIN


class RunActor(EventSourcedActor[RunState]):
    codec = DOMAIN_CODEC

    def __init__(self, ctx: ActorContext, settings: RunSettings, registry: RunRegistry) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.registry = registry
        self._driver: TaskHandle | None = None
        self._wakeup = trio.Event()
        self._history: list[ChatMessage] | None = None  # the referenced history, once read
        # Events that need not be durable on their own, recorded with the driver's next ones.
        self._unrecorded: list[Event] = []
        self._settled = False  # the session committed the run's end with its settlement

    def initial_state(self) -> RunState:
        return RunState()

    def evolve(self, state: RunState, event: Event) -> RunState:
        return fold_run(state, event)

    def actor_of(self, command: Any) -> str | None:
        if isinstance(command, Record):
            return agent_stream(self.state.agent_id)  # the driver records for the run's agent
        if isinstance(command, StartRun):
            return command.owner or "local"
        return caller_actor(command)

    def _check_access(self, state: RunState, caller: Caller) -> None:
        if state.status == "new" or (not caller.admin and state.owner != caller.owner):
            raise NotFound(f"no run {self.ctx.id!r}")

    async def decide(self, state: RunState, command: Any) -> Sequence[Event]:
        match command:
            case StartRun(started=True):
                # Its session's commit recorded the start: an emergency stop since refuses it.
                if state.status == "running" and self.registry.stopped and self._driver is None:
                    return [RunFailed(reason=_STOPPED)]
                return []
            case StartRun():
                if state.status != "new":
                    return []
                return start_events(
                    self.ctx.id, command, _STOPPED if self.registry.stopped else None
                )
            case Record(events=events):
                if state.status in TERMINAL:
                    raise Conflict(f"run {self.ctx.id} has already ended ({state.status})")
                # A timeout's denial loses to a decision recorded just before it.
                return [
                    e
                    for e in events
                    if not isinstance(e, ApprovalDenied) or _pending(state, e.approval_id)
                ]
            case CancelRun(reason=reason, caller=caller):
                self._check_access(state, caller)
                if state.status in TERMINAL:
                    return []
                return [RunCancelled(reason=reason)]
            case DecideApproval():
                self._check_access(state, command.caller)
                approval = state.approvals.get(command.approval_id)
                if approval is None or state.status in TERMINAL:
                    raise NotFound(f"no pending approval {command.approval_id!r}")
                if approval.status != "pending":
                    raise Conflict(f"approval {command.approval_id!r} is already {approval.status}")
                if command.args_digest != approval.digest:
                    raise Invalid(
                        "args_digest does not match the arguments awaiting approval; "
                        "read the approval again and send its args_digest"
                    )
                if command.approve:
                    return [ApprovalGranted(approval_id=command.approval_id, by=command.by)]
                return [
                    ApprovalDenied(
                        approval_id=command.approval_id, by=command.by, reason=command.reason
                    )
                ]
            case GetRun(caller=caller):
                self._check_access(state, caller)
                return []
        raise TypeError(f"run actor cannot handle {type(command).__name__}")

    def reply(self, state: RunState, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        if isinstance(command, Record):
            return None
        return self.view(state)

    def view(self, state: RunState) -> RunView:
        return run_view(self.ctx.id, state, self.version)

    def commit_with(
        self, state: RunState, part: AppendPart
    ) -> Awaitable[Sequence[RecordedEvent] | None] | None:
        """The run's end goes into its session's commit, with the session's settlement: one
        commit for both instead of one each. Its other commits are its own, appended here so
        that a log refusing one (full) fails the run's waiters too (`RunRegistry.watch`)."""
        if not state.session_key:
            return None
        if state.status not in TERMINAL:
            return self._append_alone(part)
        return self._settle_with_session(state, part)

    async def _append_alone(self, part: AppendPart) -> Sequence[RecordedEvent]:
        try:
            return await self.ctx.log.append(
                part.stream, part.events, expected_version=part.expected_version, actor=part.actor
            )
        except LogError as exc:
            if refuses_writes(exc):
                self._end_unrecorded(exc)
            raise

    async def _settle_with_session(
        self, state: RunState, part: AppendPart
    ) -> Sequence[RecordedEvent] | None:
        done = RunDone(run_id=self.ctx.id, status=state.status, messages=state.produced, part=part)
        try:
            recorded: Sequence[RecordedEvent] = await self.ctx.system.ref(
                SESSION, state.session_key
            ).ask(done)
        except WrongExpectedVersion:
            raise  # the run's stream moved: the engine catches up and decides again
        except LogError as exc:
            if not refuses_writes(exc):  # the session's own trouble (e.g. its lease moved)
                logger.info("run end recorded without its session", run_id=self.ctx.id)
                return None
            self._end_unrecorded(exc)  # the end alone would fare no better
            raise
        except Exception as exc:  # the session cannot take it: record the end alone, then tell
            logger.info("run end recorded without its session", run_id=self.ctx.id, error=str(exc))
            return await self._append_alone(part)
        self._settled = True
        return recorded

    def _end_unrecorded(self, error: LogError) -> None:
        """A commit of the run failed, so its end will not come as the driver meant it: its
        waiters hear the error now rather than wait; the actor fails, and its restart closes the
        run as interrupted once the log takes writes again (as after a crash)."""
        logger.warning("run end not recorded", run_id=self.ctx.id, error=str(error))
        self.registry.active.discard(self.ctx.id)
        self.registry.end_unrecorded(self.ctx.id, error)

    def after_commit(
        self, state: RunState, command: Any, recorded: Sequence[RecordedEvent]
    ) -> None:
        """Effects once events are durable: drive, wake the driver, or tell the session."""
        if not recorded:
            return
        if isinstance(command, StartRun) and recorded[0].type == RUN_STARTED:
            self._history = command.history
        self._track_approvals(state)
        if state.status in TERMINAL:
            self.registry.active.discard(self.ctx.id)
            self.registry.end_recorded(self.ctx.id)
            if self._driver is not None and not self._driver.done:
                self._driver.cancel()
            if any(r.type in TERMINAL_EVENTS for r in recorded):
                self.registry.finished[state.status] += 1
            if self._settled:
                self._settled = False  # the session settled it in the same commit
            elif any(r.type in TERMINAL_EVENTS for r in recorded):
                done = RunDone(run_id=self.ctx.id, status=state.status, messages=state.produced)
                try:  # straight into the session's mailbox: no task, no waiting
                    self.ctx.system.ref(SESSION, state.session_key).tell_nowait(done)
                except ActorError:  # a full mailbox or shutting down: wait for room, or log
                    self.ctx.start_task(_notify_session, self.ctx.system, self.ctx.id, state)
            # An ended run only answers reads now: it leaves memory once its session is told.
            self.ctx.passivate_when_idle()
            return
        if recorded[0].type == RUN_STARTED:
            self._start_driver()
        self._wakeup.set()

    def _track_approvals(self, state: RunState) -> None:
        """Keep the registry's list of pending approvals in step with this run's state."""
        for approval_id, approval in state.approvals.items():
            if approval.status == "pending" and state.status not in TERMINAL:
                self.registry.pending_approvals[approval_id] = self.ctx.id
            else:
                self.registry.pending_approvals.pop(approval_id, None)

    def _start_driver(self) -> None:
        if self._driver is None or self._driver.done:
            self.registry.active.add(self.ctx.id)
            self._driver = self.ctx.start_task(self._drive, name=f"run {self.ctx.id}")

    async def on_rehydrated(self, state: RunState) -> Sequence[Event]:
        if state.status == "running":
            # A crash, or a restart after the driver died: close the run, then tell the session
            # (the task asks this actor first, so it runs once the RunFailed is durable).
            self.registry.active.discard(self.ctx.id)
            self.ctx.start_task(_notify_session_when_closed, self.ctx)
            return [RunFailed(reason="interrupted")]
        if state.status in TERMINAL or state.status == "new":
            # Read once, e.g. by GET /v1/runs/{id}; a run not started yet is also forgotten at
            # once so that (in cluster mode) the node whose session starts it can take its lease.
            self.ctx.passivate_when_idle()
        if state.status == "waiting_approval":
            # A restart lost the in-memory list of pending approvals; rebuild it from the log.
            self._track_approvals(state)
            self._start_driver()
        return ()

    # -- the driver ----------------------------------------------------------------------------

    async def _record(self, *events: Event) -> None:
        unrecorded, self._unrecorded = self._unrecorded, []
        await self.ctx.ref.ask(Record([*unrecorded, *events]))

    def conversation(self, state: RunState) -> list[ChatMessage]:
        """What the model is sent: the prompt, the referenced history, then the run's messages."""
        spec = state.spec or AgentSpec()
        if self._history is None:
            stream = state.history_stream
            log = self.settings.history_log or self.ctx.log
            self._history = history_at(log, stream, state.history_version) if stream else []
        # Client function calls the client never answered would make an upstream refuse the
        # whole conversation; they are left out (answered ones stay, whenever the answer came).
        return with_system_prompt(spec, answered_only([*self._history, *state.messages]))

    async def _drive(self) -> None:
        try:
            while True:
                state = self.state
                if state.status in TERMINAL:
                    return
                spec = state.spec or AgentSpec()
                pending = [a for a in state.approvals.items() if a[1].status == "pending"]
                if pending:
                    await self._await_decision(*pending[0])
                elif state.pending_calls:
                    await self._run_tool(state, spec, state.pending_calls[0])
                elif state.client_calls:
                    await self._record(
                        self._completed_run(state, Usage(), "", "tool_calls", state.client_calls)
                    )
                elif state.step >= spec.max_steps:
                    await self._record(
                        RunFailed(
                            reason=f"step limit of {spec.max_steps} reached", usage=state.usage
                        )
                    )
                else:
                    await self._model_step(state, spec)
        except Conflict:
            return  # the run ended (cancelled) while the driver was working
        except ActorError:
            return  # the system is shutting down; the log has everything recorded so far

    async def _await_decision(self, approval_id: str, approval: Approval) -> None:
        with trio.move_on_after(self.settings.approval_timeout) as scope:
            while self.state.approvals[approval_id].status == "pending":
                self._wakeup = trio.Event()
                await self._wakeup.wait()
        if scope.cancelled_caught:
            await self._record(ApprovalDenied(approval_id=approval_id, reason="approval timed out"))

    async def _run_tool(self, state: RunState, spec: AgentSpec, call: ToolCall) -> None:
        tools = self.settings.tools
        decided = next(
            (a for a in state.approvals.values() if a.call.id == call.id and a.status != "pending"),
            None,
        )
        if not granted(call.name, spec.tools) or not tools.is_enabled(call.name):
            await self._record(
                ToolCallFailed(
                    call_id=call.id,
                    name=call.name,
                    error=f"tool {call.name!r} is not available to this agent",
                )
            )
            return
        policy = spec.tool_approval.get(call.name, spec.approval)
        if policy == "ask" and self.settings.auto_approve:
            policy = "auto"
        if policy == "reject":
            await self._record(
                ToolCallFailed(call_id=call.id, name=call.name, error="denied by approval policy")
            )
            return
        if policy == "ask" and decided is None:
            number = len(state.approvals) + 1
            await self._record(
                ApprovalRequested(
                    approval_id=f"{self.ctx.id}.{number}", call=call, args_digest=args_digest(call)
                )
            )
            return
        if decided is not None and decided.status == "denied":
            reason = (
                f"denied by approver: {decided.reason}" if decided.reason else "denied by approver"
            )
            await self._record(ToolCallFailed(call_id=call.id, name=call.name, error=reason))
            return
        try:
            output = await tools.invoke(call.name, parse_tool_arguments(call.name, call.arguments))
        except ToolError as exc:
            await self._record(ToolCallFailed(call_id=call.id, name=call.name, error=str(exc)))
        else:
            await self._record(await self._completed(call, output))

    async def _completed(self, call: ToolCall, output: str) -> ToolCallCompleted:
        """The event for a tool's output; a large one is put in the content store first (durably,
        so the event never names a blob a crash lost)."""
        store = self.ctx.log.content
        data = output.encode()
        if store is None or len(data) <= self.settings.content_threshold:
            return ToolCallCompleted(call_id=call.id, name=call.name, output=output)
        digest = await store.put(data)
        return ToolCallCompleted(
            call_id=call.id,
            name=call.name,
            output=preview(output),
            output_digest=digest,
            output_size=len(data),
        )

    def content_stores(self) -> list[ContentStore | None]:
        """Where stored contents are found: this log's store, then the history's log's."""
        stores = [self.ctx.log.content]
        if self.settings.history_log is not None:
            stores.append(self.settings.history_log.content)
        return stores

    async def _model_step(self, state: RunState, spec: AgentSpec) -> None:
        step = state.step + 1
        try:
            messages = await resolve_messages(self.conversation(state), self.content_stores())
        except ContentMissing as exc:
            await self._record(RunFailed(reason=str(exc), usage=state.usage))
            return
        # Recorded with the model's first output (its first coalesced delta, or its answer):
        # a crash before that closes the run as interrupted either way, and an instant model's
        # step costs one commit instead of two.
        self._unrecorded.append(
            ModelRequested(step=step, message_count=len(messages), model=spec.model)
        )
        try:
            provider = self.settings.provider(spec)
        except ModelError as exc:
            await self._record(RunFailed(reason=str(exc), usage=state.usage))
            return
        options = spec.request
        request = ModelRequest(
            model=spec.model,
            messages=messages,
            tools=offered_tools(self.settings.tools, spec),
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            tool_choice=options.tool_choice if options is not None else None,
            options=options.upstream if options is not None else {},
        )
        text: list[str] = []
        buffered: list[str] = []
        calls: list[ToolCall] = []
        last_flush = trio.current_time()
        try:
            async with aclosing(provider.stream(request)) as chunks:
                async for chunk in chunks:
                    if isinstance(chunk, TextDelta):
                        text.append(chunk.text)
                        buffered.append(chunk.text)
                        now = trio.current_time()
                        size = sum(map(len, buffered))
                        if (
                            size >= self.settings.delta_chars
                            or now - last_flush >= self.settings.delta_interval
                        ):
                            await self._record(AssistantDelta(step=step, text="".join(buffered)))
                            buffered.clear()
                            last_flush = now
                    elif isinstance(chunk, ToolCallChunk):
                        calls.append(chunk.call)
                    elif isinstance(chunk, Finished):
                        await self._finish_step(step, text, buffered, calls, chunk)
                        return
        except ModelError as exc:
            await self._record(RunFailed(reason=f"model error: {exc}", usage=self.state.usage))
            return
        await self._record(
            RunFailed(reason="model stream ended without finishing", usage=self.state.usage)
        )

    async def _finish_step(
        self,
        step: int,
        text: list[str],
        buffered: list[str],
        calls: list[ToolCall],
        finished: Finished,
    ) -> None:
        content = "".join(text)
        message = ChatMessage(role="assistant", content=content or None, tool_calls=calls or None)
        events: list[Event] = []
        if buffered:
            events.append(AssistantDelta(step=step, text="".join(buffered)))
        events.append(
            AssistantMessage(
                step=step,
                message=message,
                finish_reason=finished.finish_reason,
                usage=finished.usage,
            )
        )
        for_client = client_calls(self.state.spec, calls)
        server_calls = [call for call in calls if call not in for_client]
        events.extend(ToolCallRequested(step=step, call=call) for call in server_calls)
        if not server_calls:
            reason = "tool_calls" if for_client else finished.finish_reason
            events.append(
                self._completed_run(self.state, finished.usage, content, reason, for_client)
            )
        await self._record(*events)

    def _completed_run(
        self,
        state: RunState,
        usage: Usage,
        content: str,
        finish_reason: str,
        calls: list[ToolCall],
    ) -> RunCompleted:
        """The run's end after its last step (`usage` and `content`: that step's, when it is not
        recorded yet). The answer is all the assistant text, so a streamed read joins to the
        same; `calls` are the client functions the run ends calling."""
        earlier = "".join(m.content or "" for m in state.produced if m.role == "assistant")
        return RunCompleted(
            usage=state.usage + usage,
            content=earlier + content,
            finish_reason=finish_reason,
            tool_calls=calls or None,
        )


# -- telling the session ----------------------------------------------------------------------


async def _notify_session(system: ActorSystem, run_id: str, state: RunState) -> None:
    try:
        await system.ref(SESSION, state.session_key).ask(
            RunDone(run_id=run_id, status=state.status, messages=state.produced)
        )
    except ActorStopped as exc:  # shutting down: the session settles the run when it rehydrates
        logger.info("session not told of run end", run_id=run_id, error=str(exc))
    except ActorError as exc:
        logger.warning("session not told of run end", run_id=run_id, error=str(exc))


async def _notify_session_when_closed(ctx: ActorContext) -> None:
    view: RunView = await ctx.ref.ask(GetRun())
    if view.status in TERMINAL:
        # Owned by another node (cluster mode), the session settles the run when it next loads.
        with suppress(NotFound, ActorOwnedElsewhere):
            await ctx.system.ref(SESSION, view.session_key).ask(
                RunDone(run_id=view.id, status=view.status, messages=view.messages)
            )


RunFactory = Callable[[ActorContext], RunActor]


def run_factory(settings: RunSettings, registry: RunRegistry) -> RunFactory:
    return lambda ctx: RunActor(ctx, settings, registry)
