"""The event-sourcing engine: decide -> append -> evolve, load from snapshot + log, snapshot.

The kernel (`cuelog.runtime._actor`) owns mailboxes, supervision and passivation; for an
`EventSourcedActor` it hands each batch of queued commands and each (re)start to the engine here.
What an actor author writes lives in `cuelog.runtime._actor_sourced`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, final

import msgspec
import structlog
import trio

from cuelog.runtime._actor_sourced import ACTOR_FAILED, EventSourcedActor, Handed
from cuelog.runtime._codec import Event
from cuelog.runtime._envelope import AppendPart
from cuelog.runtime._errors import CommandRejected, LogError, WrongExpectedVersion
from cuelog.runtime._leases import LeaseTable
from cuelog.runtime._protocol import EventLog
from cuelog.runtime._records import RecordedEvent

if TYPE_CHECKING:
    from cuelog.runtime._actor import _Cell, _Envelope

logger = structlog.get_logger("cuelog.actor")

_REPLAY_PAGE = 1000
_state_encoder = msgspec.msgpack.Encoder()

# One command's outcome within a batch: its envelope, its events, the state after them, and the
# rejection that refused it (then it has no events).
_Decided: TypeAlias = "tuple[_Envelope, Sequence[Event], Any, CommandRejected | None]"
# Other actors' parts of a commit: those written before the actor's own events, and after.
_Parts: TypeAlias = "tuple[Sequence[AppendPart], Sequence[AppendPart]]"
_NONE: _Parts = ((), ())


@final
class SourcingEngine:
    """Runs event-sourced actors for one actor system: one per system, shared by its actors."""

    def __init__(
        self, log: EventLog, snapshot_every: int, placement: LeaseTable | None = None
    ) -> None:
        self.log = log
        self.snapshot_every = snapshot_every
        self.placement = placement
        self.events_replayed = 0
        self.snapshots_saved = 0
        # Streams with records another actor committed for their owner, not yet folded by it:
        # the first such version (see `Handed`).
        self._handed: dict[str, int] = {}

    async def rehydrate(self, cell: _Cell, actor: EventSourcedActor[Any]) -> None:
        """Load the actor's state, then record the repairs `on_rehydrated` asks for."""
        self.load(cell, actor)
        if cell.stream in self._handed:
            # Another actor of this process committed records for this one and is handing them
            # over: they are the live start of its work, not what a crash left to repair.
            await self._maybe_snapshot(cell, actor)
            return
        repairs = await actor.on_rehydrated(actor.state)
        if repairs:
            await self._record(cell, actor, repairs)
        await self._maybe_snapshot(cell, actor)

    async def run_commands(
        self, cell: _Cell, actor: EventSourcedActor[Any], asked: _Envelope | None = None
    ) -> None:
        """Decide every queued command in order against the evolving state, append all their
        events in one write, then run each command's effects and reply: one commit per batch
        instead of one per command.

        `asked`: instead of the queued commands, the one an asker runs in its own task
        (`ActorSystem._ask_inline`). The asker may be cancelled, but only where nothing is
        written: while deciding, or by an append the log withdraws (a cancelled append writes
        nothing); `trio.Cancelled` then propagates and the state is as before. Whatever else
        writes (another actor committing a part, a lease, a snapshot) is shielded, and after
        the commit nothing awaits but the snapshot."""
        inline = asked is not None
        envs = [asked] if asked is not None else cell.take()
        if not envs:
            return
        # A command handed with records goes first in a batch: they are folded before it.
        for index in range(1, len(envs)):
            if isinstance(envs[index].msg, Handed):
                cell.push_back(envs[index:])
                envs = envs[:index]
                break
        cell.current = envs  # whatever fails from here on fails them
        handed: Sequence[RecordedEvent] = ()
        first = envs[0].msg
        if isinstance(first, Handed):
            # Records another actor wrote for this one: it owns its stream from here on.
            await self._lease(cell, inline)
            handed = first.records
            self._fold_handed(cell, actor, handed)
            envs[0].msg = first.command
        # One append records one actor (who caused the events): a batch stops where it changes.
        who = actor.actor_of(envs[0].msg)
        for index in range(1, len(envs)):
            if actor.actor_of(envs[index].msg) != who:
                cell.push_back(envs[index:])
                envs = envs[:index]
                break
        cell.current = envs
        retried = False
        while True:
            decided, failure, parts = await self._decide(actor, envs)
            if failure is not None or len(decided) < len(envs):
                stop = failure[0] + 1 if failure is not None else len(decided)
                cell.push_back(envs[stop:])
                envs = envs[:stop]
                cell.current = envs
            events = [event for _, events_, _, _ in decided for event in events_]
            recorded: list[RecordedEvent] = []
            extra: tuple[list[RecordedEvent], list[RecordedEvent]] = ([], [])
            if events or parts[0] or parts[1]:
                if events and self.placement is not None:
                    # A new actor runs unleased until its first write: take the lease now (a
                    # node that got there first refuses it; the version check catches a race).
                    await self._lease(cell, inline)
                # Any other append error fails the actor and every command in `cell.current`.
                try:
                    recorded, extra = await self._commit(
                        cell, actor, who, events, decided, parts, inline
                    )
                except WrongExpectedVersion as exc:
                    # Someone else wrote to the stream: catch up and decide again, once.
                    self.load(cell, actor)
                    if not retried:
                        retried = True
                        continue
                    for env, _, _, _ in decided:
                        env.fail(exc)
                    decided = []
            break
        if decided and recorded:
            actor._state = decided[-1][2]
            actor._version = recorded[-1].version
        position = 0
        last = len(decided) - 1
        for index, (env, events_, state, rejected) in enumerate(decided):
            mine = recorded[position : position + len(events_)]
            position += len(events_)
            if index == 0 and handed:
                mine = [*handed, *mine]
            if index == last and (extra[0] or extra[1]):
                mine = [*extra[0], *mine, *extra[1]]
            if rejected is not None:
                if env.task is None:
                    logger.debug("command rejected", actor=cell.stream, reason=str(rejected))
                env.fail(rejected)
                continue
            told = env.task is None
            try:
                actor.after_commit(state, env.msg, mine)
                value = None if told else actor.reply(state, env.msg, mine)
            except Exception as exc:
                if told:
                    # Nobody waits for a tell: the log is the only place this failure shows.
                    logger.error(
                        "effect of a told command failed",
                        actor=cell.stream,
                        command=type(env.msg).__qualname__,
                        exc_info=exc,
                    )
                env.fail(exc)
            else:
                env.reply(value)
        cell.current = ()
        if actor._version - cell.snapshot_version >= self.snapshot_every > 0:
            with trio.CancelScope(shield=inline):
                await self._maybe_snapshot(cell, actor)
        if failure is not None:
            cell.current = envs[-1:]
            raise failure[1]

    async def _lease(self, cell: _Cell, shield: bool = False) -> None:
        """In cluster mode, take the lease of an actor that has none yet (a new actor)."""
        await self._lease_stream(cell.stream, shield)

    async def _lease_stream(self, stream: str, shield: bool = False) -> None:
        placement = self.placement
        if placement is not None and placement.covers(stream) and not placement.holds(stream):
            with trio.CancelScope(shield=shield):
                await placement.acquire(stream)

    async def _commit(
        self,
        cell: _Cell,
        actor: EventSourcedActor[Any],
        who: str | None,
        events: list[Event],
        decided: list[_Decided],
        parts: _Parts,
        shield: bool,
    ) -> tuple[list[RecordedEvent], tuple[list[RecordedEvent], list[RecordedEvent]]]:
        """Append a batch's events: alone, with other actors' parts, or as another actor's part
        (`commit_with`). Returns the batch's own records and those of the parts before and after
        them. `shield`: the caller may be cancelled; only a withdrawn append may be."""
        own = AppendPart(cell.stream, events, expected_version=actor._version, actor=who)
        before, after = parts
        if not before and not after:
            committing = actor.commit_with(decided[-1][2], own)
            if committing is not None:
                with trio.CancelScope(shield=shield):
                    recorded = await committing
                if recorded is not None:
                    self._handed.pop(cell.stream, None)  # folded here, as they come back
                    return list(recorded), ([], [])
            return await self.log.append(
                cell.stream, events, expected_version=actor._version, actor=who
            ), ([], [])
        # Records written for another actor are folded by it when handed over; one that loads
        # before that takes them as its live start, not a crash's leftovers (see `Handed`).
        for part in (*before, *after):
            await self._lease_stream(part.stream, shield)  # in cluster mode, before a load
        marked = [
            part.stream
            for part in (*before, *after)
            if part.expected_version is not None and part.stream not in self._handed
        ]
        for part in (*before, *after):
            if part.stream in marked:
                assert part.expected_version is not None
                self._handed[part.stream] = part.expected_version + 1
        try:
            written = await self.log.append_many(
                [*before, *([own] if events else []), *after], actor=who
            )
        except BaseException:
            for stream in marked:
                self._handed.pop(stream, None)
            raise
        recorded = written[len(before)] if events else []
        return recorded, (
            [r for records in written[: len(before)] for r in records],
            [r for records in written[len(written) - len(after) :] for r in records],
        )

    def _fold_handed(
        self, cell: _Cell, actor: EventSourcedActor[Any], records: Sequence[RecordedEvent]
    ) -> None:
        """Fold records another actor committed for this one (see `Handed`)."""
        self._handed.pop(cell.stream, None)
        fresh = [record for record in records if record.version > actor._version]
        if not fresh:
            return
        if fresh[0].version != actor._version + 1:
            self.load(cell, actor)  # a gap: read what is missing from the log
            return
        state = actor._state
        codec = type(actor).codec
        for record in fresh:
            if record.type != ACTOR_FAILED:
                state = actor.evolve(state, codec.decode(record.type, record.data))
        actor._state = state
        actor._version = fresh[-1].version

    async def _decide(
        self, actor: EventSourcedActor[Any], envs: list[_Envelope]
    ) -> tuple[list[_Decided], tuple[int, Exception] | None, _Parts]:
        """Each command's events and the state after them; stop at the first failure, and after
        the first command with other actors' parts (see `EventSourcedActor.parts`)."""
        state = actor._state
        version = actor._version
        decided: list[_Decided] = []
        for index, env in enumerate(envs):
            try:
                events = await actor.decide(state, env.msg)
                after = state
                for event in events:
                    after = actor.evolve(after, event)
                parts = actor.parts(after, env.msg, events, version + len(events))
            except CommandRejected as exc:
                decided.append((env, (), state, exc))
                continue
            except Exception as exc:
                return decided, (index, exc), _NONE
            decided.append((env, events, after, None))
            state = after
            version += len(events)
            if parts[0] or parts[1]:
                return decided, None, (list(parts[0]), list(parts[1]))
        return decided, None, _NONE

    async def _record(
        self, cell: _Cell, actor: EventSourcedActor[Any], events: Sequence[Event]
    ) -> None:
        state = actor.state
        for event in events:
            state = actor.evolve(state, event)
        recorded = await self.log.append(cell.stream, events, expected_version=actor._version)
        actor._state = state
        actor._version = recorded[-1].version

    # -- state from the log ---------------------------------------------------------------------

    def load(self, cell: _Cell, actor: EventSourcedActor[Any]) -> None:
        """Fold the actor's stream from its latest snapshot into `actor.state`."""
        cls = type(actor)
        if not hasattr(cls, "codec") or not hasattr(cls, "_state_decoder"):
            raise TypeError(
                f"{cls.__qualname__} must declare `codec` and a state type "
                "(EventSourcedActor[StateStruct] or `state_type`)"
            )
        state: Any = None
        version = 0
        snapshot = self.log.load_snapshot(cell.stream)
        if snapshot is not None:
            try:
                state = cls._state_decoder.decode(snapshot[1])
                version = snapshot[0]
            except (msgspec.DecodeError, msgspec.ValidationError):
                # The state's shape changed since the snapshot: replay the whole stream.
                logger.warning("snapshot unreadable, replaying", actor=cell.stream)
                state = None
        if state is None:
            state = actor.initial_state()
        cell.snapshot_version = version
        self._fold_from(cell, actor, state, version)

    def catch_up(self, cell: _Cell, actor: EventSourcedActor[Any]) -> None:
        """Fold the events appended to the actor's stream since its state's version (by another
        process sharing the log): one read, usually empty."""
        self._fold_from(cell, actor, actor._state, actor._version)

    def _fold_from(
        self, cell: _Cell, actor: EventSourcedActor[Any], state: Any, version: int
    ) -> None:
        """Fold the stream's events after `version` into `state`; that is the actor's state."""
        codec = type(actor).codec
        while True:
            page = self.log.read_stream(cell.stream, version + 1, limit=_REPLAY_PAGE)
            for record in page:
                if record.type != ACTOR_FAILED:
                    state = actor.evolve(state, codec.decode(record.type, record.data))
                version = record.version
            self.events_replayed += len(page)
            if len(page) < _REPLAY_PAGE:
                break
        actor._state = state
        actor._version = version

    async def _maybe_snapshot(self, cell: _Cell, actor: EventSourcedActor[Any]) -> None:
        every = self.snapshot_every
        version = actor._version
        if not every or version - cell.snapshot_version < every:
            return
        try:
            await self.log.save_snapshot(cell.stream, version, _state_encoder.encode(actor.state))
        except LogError as exc:
            logger.warning("snapshot not saved", actor=cell.stream, error=str(exc))
            return
        cell.snapshot_version = version
        self.snapshots_saved += 1
