"""Helpers for the domain tests: a runtime over a real LMDB log, test models, event readers."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from cuelog.actors import (
    DOMAIN_CODEC,
    AgentSpec,
    ChatMessage,
    Domain,
    EchoModel,
    ModelProvider,
    ToolCall,
    ToolRegistry,
    open_domain,
)
from cuelog.actors._messages import Usage
from cuelog.actors._models import Finished, ModelChunk, ModelRequest, TextDelta, ToolCallChunk
from cuelog.actors._run import RunSettings
from cuelog.runtime import (
    Event,
    EventLog,
    RecordedEvent,
    event_type,
    open_event_log,
    open_projection_store,
)

CALCULATOR: Final = AgentSpec(name="calc", tools=["calculator"])


def as_record(event: Event, *, seq: int = 1, stream: str = "run:r") -> RecordedEvent:
    """`event` as the record at `seq` of `stream`, unchained (for code that reads one record)."""
    return RecordedEvent(
        seq=seq,
        stream=stream,
        version=1,
        type=event_type(type(event)),
        ts=0,
        causation=None,
        correlation=None,
        actor=None,
        data=msgspec.msgpack.encode(event),
        prev=b"",
        hash=b"",
    )


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def tool_line(name: str, args: str) -> ChatMessage:
    return user(f"/tool {name} {args}")


def make_settings(provider: ModelProvider | None = None, **settings: Any) -> RunSettings:
    """Echo (or `provider` under the name echo, so agents need no change) and the built-ins."""
    return RunSettings(
        providers={"echo": provider or EchoModel()}, tools=ToolRegistry.builtins(), **settings
    )


@asynccontextmanager
async def runtime_at(
    path: Path,
    settings: RunSettings,
    *,
    agents: dict[str, AgentSpec] | None = None,
    **log_options: Any,
) -> AsyncIterator[Domain]:
    """A log in `path` and an agent runtime over it, with its projections (so recovery and the
    session listing read the catalogs, as a server's do), all closed on exit."""
    async with (
        open_event_log(path, **log_options) as log,
        open_projection_store(path, sync=log_options.get("sync", True)) as projections,
        open_domain(log, settings, agents=agents, projections=projections) as rt,
    ):
        yield rt


def events_of(log: EventLog, stream: str) -> list[RecordedEvent]:
    return log.read_stream(stream)


def types_of(log: EventLog, stream: str) -> list[str]:
    return [r.type for r in log.read_stream(stream)]


def decoded(log: EventLog, stream: str, kind: type[Event] | None = None) -> list[Any]:
    """The stream's domain events, decoded, optionally only those of one type."""
    out = []
    for record in log.read_stream(stream):
        if not DOMAIN_CODEC.knows(record.type):
            continue
        event = DOMAIN_CODEC.decode(record.type, record.data)
        if kind is None or isinstance(event, kind):
            out.append(event)
    return out


async def wait_for_event(log: EventLog, stream: str, type_: str) -> RecordedEvent:
    """The first event of `type_` in `stream`, waiting for it to be committed."""
    async for record in log.subscribe_stream(stream):
        if record.type == type_:
            return record
    raise AssertionError("unreachable: subscriptions do not end")


def task_names() -> list[str]:
    """Every live trio task's name, walking the task tree from the root."""
    names: list[str] = []
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo = [root]
    while todo:
        task = todo.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return names


class SlowModel:
    """Streams `words` word chunks, sleeping `delay` seconds of trio's clock before each.

    `streaming` is set once the first chunk is out; `chunks_sent` and `closed` show how far it
    got, so tests can check that a cancel stopped it.
    """

    name = "slow"

    def __init__(self, *, words: int = 40, delay: float = 1.0, word: str = "word") -> None:
        self.words = words
        self.delay = delay
        self.word = word
        self.streaming = trio.Event()
        self.called = trio.Event()  # set once the model was asked
        self.chunks_sent = 0
        self.closed = False
        self.calls = 0

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        self.calls += 1
        self.called.set()
        try:
            for _ in range(self.words):
                await trio.sleep(self.delay)
                self.chunks_sent += 1
                yield TextDelta(f"{self.word} ")
                self.streaming.set()
            yield Finished("stop", Usage(completion_tokens=self.words, total_tokens=self.words))
        finally:
            self.closed = True


class ScriptedModel:
    """Calls `calls` on its first step (whatever the agent offers), then answers with text."""

    name = "scripted"

    def __init__(self, calls: list[ToolCall], answer: str = "done") -> None:
        self._calls = calls
        self._answer = answer

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        await trio.lowlevel.checkpoint()
        if request.messages[-1].role != "tool":
            for call in self._calls:
                yield ToolCallChunk(call)
            yield Finished("tool_calls", Usage(completion_tokens=1, total_tokens=1))
            return
        yield TextDelta(self._answer)
        yield Finished("stop", Usage(completion_tokens=1, total_tokens=1))


Predicate = Callable[[], bool]


async def eventually(check: Predicate, *, step: float = 0.01, limit: int = 2000) -> None:
    """Wait (by checkpoints and short sleeps) until `check()` holds; fail after `limit` tries."""
    for _ in range(limit):
        if check():
            return
        await trio.sleep(step)
    raise AssertionError("condition never held")
