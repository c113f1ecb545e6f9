"""Re-execute recorded runs through the current actor code and name the first divergence.

Each recorded run is started again in a scratch log with the same inputs (agent spec and
messages). The model and the tools are replaced by their recorded outputs, approvals get their
recorded decisions, and every event the current code records is compared with the recorded one
at the same position (type and payload bytes; seq and time are not compared). A run that was
cancelled or interrupted is compared up to that point. Like Temporal's replayer: run it in CI
after changing `decide` or `evolve` code.

Deltas are replayed one recorded delta per chunk with coalescing set to flush every chunk, so
the comparison does not depend on timing.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import msgspec
import trio

from cuelog.actors._agent import AgentActor
from cuelog.actors._commands import CancelRun, StartRun
from cuelog.actors._content import DEFAULT_CONTENT_THRESHOLD, fetch_text
from cuelog.actors._errors import ToolError
from cuelog.actors._events import (
    DOMAIN_CODEC,
    RUN_STARTED,
    TERMINAL_EVENTS,
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    AssistantDelta,
    AssistantMessage,
    ModelRequested,
    RunCancelled,
    RunFailed,
    RunStarted,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
)
from cuelog.actors._messages import ToolCall, ToolSpec
from cuelog.actors._models import (
    Finished,
    ModelChunk,
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCallChunk,
)
from cuelog.actors._names import AGENT, RUN, SESSION, run_stream, stream_id, stream_prefix
from cuelog.actors._run import (
    DecideApproval,
    RunActor,
    RunRegistry,
    RunSettings,
)
from cuelog.actors._session import SessionActor
from cuelog.actors._tools_registry import ToolRegistry
from cuelog.runtime import (
    ActorConfig,
    ActorContext,
    ActorFailed,
    ActorSystem,
    ContentStore,
    EventLog,
    RecordedEvent,
    event_type,
    open_actor_system,
    open_event_log,
)

_canonical = msgspec.json.Encoder(order="sorted")
_generic = msgspec.msgpack.Decoder()
SKIPPED = frozenset({event_type(ActorFailed)})


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    """Where a re-run first differs from the record: both events side by side."""

    run_id: str
    position: int  # 1-based index among the run's compared events
    recorded_seq: int | None
    reason: str
    recorded: dict[str, Any] | None = None
    replayed: dict[str, Any] | None = None


def _describe(event: RecordedEvent) -> dict[str, Any]:
    try:
        data = _generic.decode(event.data)
    except msgspec.DecodeError:
        data = event.data.hex()
    return {"type": event.type, "data": data}


def _same_event(produced: RecordedEvent, recorded: RecordedEvent) -> bool:
    """The same bytes, or the same event once the recorded one is read with today's schema (a
    field added since, at its default, changes the bytes but not the event)."""
    if produced.type == recorded.type and produced.data == recorded.data:
        return True
    if not (DOMAIN_CODEC.knows(produced.type) and DOMAIN_CODEC.knows(recorded.type)):
        return False
    decoded = DOMAIN_CODEC.decode(produced.type, produced.data)
    expected = DOMAIN_CODEC.decode(recorded.type, recorded.data)
    if isinstance(decoded, ToolCallCompleted) and isinstance(expected, ToolCallCompleted):
        # The same output is the same event whether it went inline or to the content store
        # (a log recorded with another `log.content_threshold` than the rerun's).
        return _output_key(decoded) == _output_key(expected)
    return bool(decoded == expected)


def _output_key(event: ToolCallCompleted) -> tuple[str, str, str]:
    whole = event.output_digest or hashlib.sha256(event.output.encode()).hexdigest()
    return (event.call_id, event.name, whole)


def _args_key(name: str, args: Any) -> bytes:
    return name.encode() + b"\x00" + _canonical.encode(args)


class _Step(msgspec.Struct):
    deltas: list[str] = msgspec.field(default_factory=list)
    calls: list[ToolCall] = msgspec.field(default_factory=list)
    finished: Finished | None = None


class ReplayModel:
    """Streams what the recorded run's model said, step by step."""

    def __init__(self, name: str, steps: list[_Step]) -> None:
        self._name = name
        self._steps = deque(steps)

    @property
    def name(self) -> str:
        return self._name

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        if not self._steps:
            return  # the record has no more model output: the run ends without finishing
        step = self._steps.popleft()
        for text in step.deltas:
            await trio.lowlevel.checkpoint()
            yield TextDelta(text)
        for call in step.calls:
            yield ToolCallChunk(call)
        if step.finished is not None:
            yield step.finished


class ReplayTools(ToolRegistry):
    """Answers each tool call with the recorded output or error."""

    def __init__(self) -> None:
        super().__init__([], enabled=[])
        # (ok, text, digest): a stored output is read whole from `content` when it is replayed.
        self._outputs: dict[bytes, deque[tuple[bool, str, str | None]]] = defaultdict(deque)
        self.content: ContentStore | None = None  # the checked log's content store
        self._enabled_names: set[str] = set()

    def load(self, events: Sequence[Any]) -> None:
        self._outputs.clear()
        self._enabled_names.clear()
        calls: dict[str, ToolCall] = {}
        for event in events:
            if isinstance(event, ToolCallRequested):
                calls[event.call.id] = event.call
            elif isinstance(event, ToolCallCompleted | ToolCallFailed):
                call = calls.get(event.call_id)
                if call is None:
                    continue
                if isinstance(event, ToolCallFailed) and event.error.endswith(
                    "is not available to this agent"
                ):
                    continue
                self._enabled_names.add(call.name)
                outcome: tuple[bool, str, str | None]
                if isinstance(event, ToolCallCompleted):
                    outcome = (True, event.output, event.output_digest)
                else:
                    outcome = (False, event.error, None)
                self._outputs[self._key(call)].append(outcome)
            elif isinstance(event, ApprovalRequested):
                self._enabled_names.add(event.call.name)

    @staticmethod
    def _key(call: ToolCall) -> bytes:
        try:
            args = msgspec.json.decode(call.arguments or "{}")
        except msgspec.DecodeError:
            args = call.arguments
        return _args_key(call.name, args)

    def is_enabled(self, name: str) -> bool:
        return name in self._enabled_names

    def specs(self, allowed: Any = None) -> list[ToolSpec]:
        return [ToolSpec(name=name, description="") for name in sorted(self._enabled_names)]

    async def invoke(self, name: str, args: dict[str, Any]) -> str:
        outcomes = self._outputs.get(_args_key(name, args))
        if not outcomes:
            raise ToolError(f"{name}: the record has no output for these arguments")
        ok, text, digest = outcomes.popleft()
        if not ok:
            raise ToolError(text)
        if digest is not None:
            return await fetch_text(digest, [self.content])
        return text


def _steps(events: Sequence[Any]) -> list[_Step]:
    steps: list[_Step] = []
    current: _Step | None = None
    for event in events:
        if isinstance(event, ModelRequested):
            current = _Step()
            steps.append(current)
        elif current is None:
            continue
        elif isinstance(event, AssistantDelta):
            current.deltas.append(event.text)
        elif isinstance(event, AssistantMessage):
            current.calls = list(event.message.tool_calls or [])
            reason = (
                event.finish_reason
                if event.finish_reason in {"stop", "length", "tool_calls"}
                else "stop"
            )
            current.finished = Finished(reason, event.usage)  # type: ignore[arg-type]
    return steps


class Checker:
    """Replays runs one after another in a scratch actor system."""

    def __init__(
        self,
        system: ActorSystem,
        scratch: EventLog,
        providers: dict[str, ModelProvider],
        tools: ReplayTools,
    ) -> None:
        self._system = system
        self._scratch = scratch
        self._providers = providers  # the runs' settings hold this dict: each check refills it
        self._tools = tools

    async def check(
        self, source: EventLog, run_id: str, *, timeout: float = 30.0
    ) -> Divergence | None:
        recorded = [e for e in source.read_stream(run_stream(run_id)) if e.type not in SKIPPED]
        if not recorded or recorded[0].type != RUN_STARTED:
            return Divergence(
                run_id=run_id, position=1, recorded_seq=None, reason="the run has no RunStarted"
            )
        decoded = [
            DOMAIN_CODEC.decode(e.type, e.data) if DOMAIN_CODEC.knows(e.type) else None
            for e in recorded
        ]
        started = decoded[0]
        assert isinstance(started, RunStarted)
        stop = len(recorded)
        for index, payload in enumerate(decoded):
            if isinstance(payload, RunCancelled) or (
                isinstance(payload, RunFailed) and payload.reason == "interrupted"
            ):
                stop = index
                break
        self._providers.clear()
        self._providers[started.spec.provider] = ReplayModel(started.spec.provider, _steps(decoded))
        self._tools.load(decoded)
        self._tools.content = source.content
        decisions = {
            e.approval_id: e for e in decoded if isinstance(e, ApprovalGranted | ApprovalDenied)
        }
        error = None
        if len(decoded) > 1 and isinstance(decoded[1], RunFailed):
            error = decoded[1].reason
        ref = self._system.ref(RUN, run_id)
        await ref.ask(
            StartRun(
                session_key=started.session_key,
                agent_id=started.agent_id,
                owner=started.owner,
                spec=started.spec,
                messages=started.messages,
                error=error,
                history_stream=started.history_stream,
                history_version=started.history_version,
            )
        )
        position = 0
        with trio.move_on_after(timeout):
            async for produced in self._scratch.subscribe_stream(run_stream(run_id)):
                if produced.type in SKIPPED:
                    continue
                if position >= stop:
                    break
                mine = recorded[position]
                position += 1
                if not _same_event(produced, mine):
                    await self._stop(run_id)
                    return Divergence(
                        run_id=run_id,
                        position=position,
                        recorded_seq=mine.seq,
                        reason="the re-run recorded a different event",
                        recorded=_describe(mine),
                        replayed=_describe(produced),
                    )
                replayed = decoded[position - 1]
                if isinstance(replayed, ApprovalRequested):
                    decision = decisions.get(replayed.approval_id)
                    if decision is not None:
                        await ref.ask(
                            DecideApproval(
                                approval_id=replayed.approval_id,
                                approve=isinstance(decision, ApprovalGranted),
                                args_digest=replayed.args_digest,
                                by=decision.by,
                                reason=getattr(decision, "reason", ""),
                            )
                        )
                if position >= stop or produced.type in TERMINAL_EVENTS:
                    break
        await self._stop(run_id)
        if position < stop:
            missing = recorded[position]
            return Divergence(
                run_id=run_id,
                position=position + 1,
                recorded_seq=missing.seq,
                reason="the re-run stopped before this recorded event",
                recorded=_describe(missing),
            )
        return None

    async def _stop(self, run_id: str) -> None:
        await self._system.ref(RUN, run_id).ask(CancelRun(reason="replay finished"))


async def check_runs(
    source: EventLog,
    run_ids: Sequence[str],
    *,
    progress: Callable[[int, int], None] | None = None,
    run_actor: Callable[[ActorContext, RunSettings, RunRegistry], RunActor] = RunActor,
    content_threshold: int = DEFAULT_CONTENT_THRESHOLD,
) -> list[Divergence]:
    """Re-run each recorded run; return the divergences found (empty when all match).

    `run_actor` builds the run actor to check (a changed one, to see what a change would do);
    `content_threshold` decides which rerun outputs go to the scratch log's content store; an
    output compares equal stored or inline, so it need not be the one the log was recorded with.
    """
    divergences: list[Divergence] = []
    tools = ReplayTools()
    providers: dict[str, ModelProvider] = {}
    settings = RunSettings(
        providers=providers,
        tools=tools,
        delta_chars=1,
        delta_interval=0.0,
        history_log=source,
        content_threshold=content_threshold,
    )
    registry = RunRegistry()
    with tempfile.TemporaryDirectory(prefix="cuelog-replay-") as scratch_dir:
        async with (
            open_event_log(scratch_dir, sync=False) as scratch,
            open_actor_system(scratch, config=ActorConfig(snapshot_every=0)) as system,
        ):
            system.register(AGENT, AgentActor)
            system.register(SESSION, SessionActor)
            system.register(RUN, lambda ctx: run_actor(ctx, settings, registry))
            checker = Checker(system, scratch, providers, tools)
            for index, run_id in enumerate(run_ids, start=1):
                found = await checker.check(source, run_id)
                if found is not None:
                    divergences.append(found)
                if progress is not None:
                    progress(index, len(run_ids))
    return divergences


def recorded_runs(log: EventLog) -> list[str]:
    """Every run id in the log, in stream-name order."""
    out: list[str] = []
    after: str | None = None
    while True:
        names = log.list_streams(stream_prefix(RUN), after=after, limit=1000)
        if not names:
            return out
        out.extend(stream_id(name, RUN) for name in names)
        after = names[-1]
