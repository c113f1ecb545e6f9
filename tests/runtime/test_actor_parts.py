"""Shared commits: an actor carries another actor's part in its own commit and hands it over."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from cuelog.runtime import (
    AppendPart,
    Event,
    EventCodec,
    EventSourcedActor,
    Handed,
    RecordedEvent,
)
from tests.runtime.actor_models import running


class Spawned(Event, frozen=True, tag="Spawned"):
    child: str


class Born(Event, frozen=True, tag="Born"):
    pass


class Finished(Event, frozen=True, tag="Finished"):
    pass


class Noted(Event, frozen=True, tag="Noted"):
    child: str


class Tally(msgspec.Struct, frozen=True):
    types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spawn:
    child: str
    hand_over: bool = True


@dataclass(frozen=True)
class Note:
    child: str
    part: AppendPart


@dataclass(frozen=True)
class Hello:
    pass


@dataclass(frozen=True)
class Finish:
    pass


@dataclass(frozen=True)
class Look:
    pass


CODEC = EventCodec([Spawned, Born, Finished, Noted])


class Tallying(EventSourcedActor[Tally]):
    codec = CODEC

    def initial_state(self) -> Tally:
        return Tally()

    def evolve(self, state: Tally, event: Event) -> Tally:
        return Tally((*state.types, type(event).__name__))


class Parent(Tallying):
    """Starts children in its own commit and commits their ends with a note of its own."""

    async def decide(self, state: Tally, command: Any) -> Sequence[Event]:
        if isinstance(command, Spawn):
            return [Spawned(child=command.child)]
        if isinstance(command, Note):
            return [Noted(child=command.child)]
        return []

    def parts(
        self, state: Tally, command: Any, events: Sequence[Event], version: int
    ) -> tuple[Sequence[AppendPart], Sequence[AppendPart]]:
        if isinstance(command, Spawn):
            return (), [AppendPart(f"child:{command.child}", [Born()], expected_version=0)]
        if isinstance(command, Note):
            return [command.part], ()
        return (), ()

    def after_commit(self, state: Tally, command: Any, recorded: Sequence[RecordedEvent]) -> None:
        if isinstance(command, Spawn) and command.hand_over:
            mine = [r for r in recorded if r.stream == f"child:{command.child}"]
            self.ctx.system.ref("child", command.child).tell_nowait(Handed(mine, Hello()))

    def reply(self, state: Tally, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        if isinstance(command, Note):
            return [r for r in recorded if r.stream == command.part.stream]
        return list(recorded)


class Child(Tallying):
    """Notes what it saw at load and what each command's effects were handed."""

    loaded: list[tuple[str, ...]] = []
    effects: list[list[str]] = []

    async def on_rehydrated(self, state: Tally) -> Sequence[Event]:
        Child.loaded.append(state.types)
        return ()

    async def decide(self, state: Tally, command: Any) -> Sequence[Event]:
        return [Finished()] if isinstance(command, Finish) else []

    def commit_with(
        self, state: Tally, part: AppendPart
    ) -> Awaitable[Sequence[RecordedEvent] | None] | None:
        return self.ctx.system.ref("parent", "p").ask(Note(child=self.ctx.id, part=part))

    def after_commit(self, state: Tally, command: Any, recorded: Sequence[RecordedEvent]) -> None:
        Child.effects.append([r.type for r in recorded])

    def reply(self, state: Tally, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        return (state.types, self.version)


async def test_a_started_stream_is_handed_to_its_actor_and_its_end_rides_back(
    tmp_path: Path,
) -> None:
    """The parent's commit starts the child's stream; the child, loaded for the hand-over,
    takes those records as its live start (no repairs) and folds nothing twice; its end is
    committed by the parent with its note, one commit each way, and the child folds the records
    it gets back."""
    Child.loaded, Child.effects = [], []
    async with running(tmp_path, parent=Parent, child=Child) as (log, system):
        before = log.statistics()
        await system.ref("parent", "p").ask(Spawn("c"))
        assert log.statistics().batches == before.batches + 1
        assert [(r.stream, r.type) for r in log.read_all(before.head_seq)] == [
            ("parent:p", "Spawned"),
            ("child:c", "Born"),
        ]
        assert await system.ref("child", "c").ask(Look()) == (("Born",), 1)
        assert Child.loaded == []  # never taken for what a crash left: no repairs asked for
        assert Child.effects[0] == ["Born"]  # the hand-over's effects saw the handed records

        middle = log.statistics()
        assert await system.ref("child", "c").ask(Finish()) == (("Born", "Finished"), 2)
        assert log.statistics().batches == middle.batches + 1
        assert [(r.stream, r.type, r.version) for r in log.read_all(middle.head_seq)] == [
            ("child:c", "Finished", 2),
            ("parent:p", "Noted", 2),
        ]
        assert Child.effects[-1] == ["Finished"]


async def test_a_load_before_the_hand_over_takes_the_handed_records_as_its_live_start(
    tmp_path: Path,
) -> None:
    """Asked before its records are handed over, the child reads them from the log without
    taking them for a crash's leftovers (no `on_rehydrated` repairs); the hand-over then folds
    nothing twice, and its command's effects still see the handed records."""
    Child.loaded, Child.effects = [], []
    async with running(tmp_path, parent=Parent, child=Child) as (log, system):
        recorded = await system.ref("parent", "p").ask(Spawn("c", hand_over=False))
        child = system.ref("child", "c")
        assert await child.ask(Look()) == (("Born",), 1)
        assert Child.loaded == []
        handed = [r for r in recorded if r.stream == "child:c"]
        assert await child.ask(Handed(handed, Look())) == (("Born",), 1)
        assert Child.effects[-1] == ["Born"]
        assert log.stream_version("child:c") == 1
