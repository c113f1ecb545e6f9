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

from cuelog.runtime._actor_sourced import ACTOR_FAILED, EventSourcedActor
from cuelog.runtime._codec import Event
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

    async def rehydrate(self, cell: _Cell, actor: EventSourcedActor[Any]) -> None:
        """Load the actor's state, then record the repairs `on_rehydrated` asks for."""
        self.load(cell, actor)
        repairs = await actor.on_rehydrated(actor.state)
        if repairs:
            await self._record(cell, actor, repairs)
        await self._maybe_snapshot(cell, actor)

    async def run_commands(self, cell: _Cell, actor: EventSourcedActor[Any]) -> None:
        """Decide every queued command in order against the evolving state, append all their
        events in one write, then run each command's effects and reply: one commit per batch
        instead of one per command."""
        envs = cell.take()
        if not envs:
            return
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
            decided, failure = await self._decide(actor, envs)
            if failure is not None:
                cell.push_back(envs[failure[0] + 1 :])
                envs = envs[: failure[0] + 1]
                cell.current = envs
            events = [event for _, events_, _, _ in decided for event in events_]
            recorded: list[RecordedEvent] = []
            if events:
                placement = self.placement
                if (
                    placement is not None
                    and placement.covers(cell.stream)
                    and not placement.holds(cell.stream)
                ):
                    # A new actor runs unleased until its first write: take the lease now (a
                    # node that got there first refuses it; the version check catches a race).
                    await placement.acquire(cell.stream)
                # Any other append error fails the actor and every command in `cell.current`.
                try:
                    recorded = await self.log.append(
                        cell.stream, events, expected_version=actor._version, actor=who
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
        for env, events_, state, rejected in decided:
            mine = recorded[position : position + len(events_)]
            position += len(events_)
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
            await self._maybe_snapshot(cell, actor)
        if failure is not None:
            cell.current = envs[-1:]
            raise failure[1]

    async def _decide(
        self, actor: EventSourcedActor[Any], envs: list[_Envelope]
    ) -> tuple[list[_Decided], tuple[int, Exception] | None]:
        """Each command's events and the state after them; stop at the first failure."""
        state = actor._state
        decided: list[_Decided] = []
        for index, env in enumerate(envs):
            try:
                events = await actor.decide(state, env.msg)
                after = state
                for event in events:
                    after = actor.evolve(after, event)
            except CommandRejected as exc:
                decided.append((env, (), state, exc))
                continue
            except Exception as exc:
                return decided, (index, exc)
            decided.append((env, events, after, None))
            state = after
        return decided, None

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
        codec = cls.codec
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

    def catch_up(self, cell: _Cell, actor: EventSourcedActor[Any]) -> None:
        """Fold the events appended to the actor's stream since its state's version (by another
        process sharing the log): one read, usually empty."""
        state = actor._state
        version = actor._version
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
