"""Small actors the actor-kernel tests drive: an event-sourced counter and plain helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from cuelog.runtime import (
    ActorConfig,
    ActorContext,
    ActorFactory,
    ActorSystem,
    CommandRejected,
    Event,
    EventCodec,
    EventLog,
    EventSourcedActor,
    RecordedEvent,
    open_actor_system,
    open_event_log,
)

# -- the counter --------------------------------------------------------------------------------


class Counted(Event, frozen=True, tag="Counted"):
    by: int


class Repaired(Event, frozen=True, tag="Repaired"):
    pass


class CounterState(msgspec.Struct, frozen=True):
    total: int = 0
    history: tuple[int, ...] = ()
    repairs: int = 0


@dataclass(frozen=True)
class Add:
    by: int


@dataclass(frozen=True)
class Fail:
    message: str = "boom"


@dataclass(frozen=True)
class Get:
    pass


class Counter(EventSourcedActor[CounterState]):
    """Adds positive numbers; `Fail` raises in decide; `Get` records nothing."""

    codec = EventCodec([Counted, Repaired])

    def initial_state(self) -> CounterState:
        return CounterState()

    def evolve(self, state: CounterState, event: Event) -> CounterState:
        if isinstance(event, Repaired):
            return msgspec.structs.replace(state, repairs=state.repairs + 1)
        assert isinstance(event, Counted)
        return CounterState(state.total + event.by, (*state.history, event.by), state.repairs)

    async def decide(self, state: CounterState, command: Any) -> Sequence[Event]:
        if isinstance(command, Add):
            if command.by <= 0:
                raise CommandRejected(f"cannot add {command.by}")
            return [Counted(by=command.by)]
        if isinstance(command, Fail):
            raise RuntimeError(command.message)
        return []

    def reply(self, state: CounterState, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        return state


class RepairingCounter(Counter):
    """Records a `Repaired` event each time it is (re)loaded with a non-zero total."""

    async def on_rehydrated(self, state: CounterState) -> Sequence[Event]:
        return [Repaired()] if state.total else []


@dataclass(frozen=True)
class Noted:
    """What `EffectfulCounter.after_commit` saw: the total, and whether its events were durable."""

    total: int
    versions: tuple[int, ...]
    durable: bool


class EffectfulCounter(Counter):
    """A counter whose effect notes each accepted command in `effects`; `Add(13)` makes it fail."""

    def __init__(self, ctx: ActorContext, effects: list[Noted]) -> None:
        super().__init__(ctx)
        self.effects = effects

    def after_commit(
        self, state: CounterState, command: Any, recorded: Sequence[RecordedEvent]
    ) -> None:
        if command == Add(13):
            raise LookupError("unlucky effect")
        versions = tuple(r.version for r in recorded)
        durable = not versions or self.ctx.log.stream_version(self.ctx.stream) >= versions[-1]
        self.effects.append(Noted(state.total, versions, durable))


# -- plain actors -------------------------------------------------------------------------------


@dataclass
class Probe:
    """What plain test actors share with the test: what they handled, and a gate to block on."""

    handled: list[Any] = field(default_factory=list)
    gate: trio.Event = field(default_factory=trio.Event)
    started: trio.Event = field(default_factory=trio.Event)


class Gated:
    """Records each message; a message "block" waits for the probe's gate first."""

    def __init__(self, ctx: ActorContext, probe: Probe) -> None:
        self.ctx = ctx
        self.probe = probe

    async def handle(self, msg: Any) -> Any:
        if msg == "block":
            self.probe.started.set()
            await self.probe.gate.wait()
        if msg == "raise":
            raise ValueError("plain handler failed")
        self.probe.handled.append(msg)
        return ("done", msg)


# -- harness ------------------------------------------------------------------------------------


@asynccontextmanager
async def running(
    path: Path, config: ActorConfig | None = None, **kinds: ActorFactory
) -> AsyncIterator[tuple[EventLog, ActorSystem]]:
    """A real LMDB log (commits inline, no fsync: fast and deterministic) and a system on it."""
    async with (
        open_event_log(path / "log", sync=False, commit_in_thread=False) as log,
        open_actor_system(log, config=config) as system,
    ):
        for kind, factory in kinds.items():
            system.register(kind, factory)
        yield log, system
