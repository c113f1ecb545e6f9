"""Event-sourced actors: decide -> append -> evolve, state folded from the actor's stream.

    class Counted(Event, tag="Counted"):
        by: int

    class CounterState(msgspec.Struct, frozen=True):
        total: int = 0

    class Counter(EventSourcedActor[CounterState]):
        codec = EventCodec([Counted])

        def initial_state(self) -> CounterState:
            return CounterState()

        def evolve(self, state: CounterState, event: Event) -> CounterState:
            assert isinstance(event, Counted)
            return CounterState(state.total + event.by)

        async def decide(self, state: CounterState, command: Any) -> Sequence[Event]:
            if command <= 0:
                raise CommandRejected("count by a positive number")
            return [Counted(by=command)]

    system.register("counter", Counter)

The kernel (`cuelog.runtime._actor`) owns mailboxes and supervision, the engine
(`cuelog.runtime._sourcing`) the loading, deciding, appending and snapshotting;
this module only declares what an actor author writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar, get_args, get_origin

import msgspec

from cuelog.runtime._codec import Event, EventCodec, event_type
from cuelog.runtime._envelope import AppendPart
from cuelog.runtime._records import RecordedEvent

if TYPE_CHECKING:
    from cuelog.runtime._actor import ActorContext

S = TypeVar("S")


class ActorFailed(Event, frozen=True, tag="ActorFailed"):
    """Recorded by the kernel when a handler raised: the error's type and a truncated message.

    Nothing else (no traceback, no locals, no arguments) so no secret reaches the log.
    """

    error_type: str
    message: str


ACTOR_FAILED: Final = event_type(ActorFailed)


class Handed(msgspec.Struct, frozen=True):
    """`command` for an actor together with records of its stream that another actor committed
    for it (the actor's part of that actor's commit, see `EventSourcedActor.parts`).

    The engine folds the records into the state (they are in the log already: they are neither
    read back nor appended again), then handles `command` as usual; `after_commit` and `reply`
    see the records before the command's own (records it folded already are not folded twice).
    An actor that loads its stream in this process before the hand-over arrives reads them from
    the log and skips `on_rehydrated`, so a first event written for an actor (a run its session
    started) never looks to it like work a crash interrupted. In cluster mode the committing
    node takes the other actor's lease before the commit, so no other node loads it meanwhile.
    """

    records: Sequence[RecordedEvent]
    command: Any


class EventSourcedActor(ABC, Generic[S]):
    """An actor whose state is a fold of its stream `f"{kind}:{id}"` from the latest snapshot.

    Subclasses declare `codec` (an `EventCodec` knowing every event type they record) and get
    `state_type` from the generic parameter (or set it) so snapshots can be decoded. The state
    should be a msgspec Struct (snapshots are its msgpack encoding).
    """

    codec: ClassVar[EventCodec]
    state_type: ClassVar[type[Any]]
    _state_decoder: ClassVar[msgspec.msgpack.Decoder[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "state_type" not in cls.__dict__:
            for base in cls.__dict__.get("__orig_bases__", ()):
                if get_origin(base) is EventSourcedActor:
                    (arg,) = get_args(base)
                    if isinstance(arg, type):
                        cls.state_type = arg
        if "state_type" in cls.__dict__:
            cls._state_decoder = msgspec.msgpack.Decoder(cls.state_type)

    def __init__(self, ctx: ActorContext) -> None:
        self.ctx = ctx
        self._state: S | None = None
        self._version = 0

    @property
    def state(self) -> S:
        """The state as of `version` (set by the kernel before the first command)."""
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__} has not been loaded yet")
        return self._state

    @property
    def version(self) -> int:
        """The version of the actor's stream that `state` reflects."""
        return self._version

    @abstractmethod
    def initial_state(self) -> S:
        """The state of an actor whose stream is empty."""

    @abstractmethod
    def evolve(self, state: S, event: Event) -> S:
        """Apply one recorded event; pure, never fails for an event `decide` produced."""

    @abstractmethod
    async def decide(self, state: S, command: Any) -> Sequence[Event]:
        """The events a command produces (may be none); raise `CommandRejected` to refuse it."""

    def actor_of(self, command: Any) -> str | None:
        """Who caused the events a command records (the envelope's `actor`); None by default."""
        return None

    def parts(
        self, state: S, command: Any, events: Sequence[Event], version: int
    ) -> tuple[Sequence[AppendPart], Sequence[AppendPart]]:
        """Other actors' parts of this command's commit: written before and after the actor's
        own events in one atomic append (`EventLog.append_many`); `events` are the command's
        own, `state` and `version` the actor's after them. None by default.

        A stream is appended to only by its own actor, except that an actor may put another
        actor's part in its own commit when that actor asked it to, at the version it gave, or
        when it starts that actor's stream (expected version 0). The other actor then folds the
        records it is handed (`Handed`, or the reply to its ask) and never reads or appends them
        again. Their records follow the command's own in `after_commit` and `reply`. A command
        with parts ends its batch.
        """
        return (), ()

    def commit_with(
        self, state: S, part: AppendPart
    ) -> Awaitable[Sequence[RecordedEvent] | None] | None:
        """Have another actor commit this batch's events, as a part of its own commit, instead
        of appending them alone: an awaitable asking it (the answer is the part's records, or
        None when it could not take the part: then the actor appends them itself). `state` is
        the state after the events, `part` the events at the actor's version. None by default.
        """
        return None

    def after_commit(self, state: S, command: Any, recorded: Sequence[RecordedEvent]) -> None:
        """Start the command's effects on the world (other actors, tasks) now that its events are
        durable; `state` is the state right after them and `recorded` are its records (maybe none).

        Called for every accepted command, asked or told, in mailbox order, in the actor's task,
        before `reply`; never for a rejected one. Synchronous so a batch's effects cannot
        interleave with other messages: start a task (`ctx.start_task`) for anything that waits.
        An error fails the ask (as from `reply`); for a tell it is logged as an error.
        """

    def reply(self, state: S, command: Any, recorded: Sequence[RecordedEvent]) -> Any:
        """What `ask` returns once the command's events are durable; by default the records.

        Only computes the answer (it is not called for a tell): effects go in `after_commit`.
        """
        return list(recorded)

    async def on_rehydrated(self, state: S) -> Sequence[Event]:
        """Called after every (re)load, before the next command; the events returned are recorded
        first (e.g. close a run that a crash interrupted). Background tasks may be started here."""
        return ()
