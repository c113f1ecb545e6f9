"""The actor kernel: mailboxes, ask/tell, supervision, passivation and rehydration from the log.

Every actor has an address `(kind, id)` and a stream `f"{kind}:{id}"` in the event log. The
system spawns an actor on its first message, runs it as one trio task handling one message at a
time, passivates it when idle (it is forgotten; the next message rehydrates it from the latest
snapshot plus later events) and restarts it from its log state when a handler raises. How an
event-sourced actor's commands become events and its state is loaded is `cuelog.runtime._sourcing`.

Invariants the code relies on (trio is cooperative, so "synchronous" means "atomic"):

- A live actor is in `ActorSystem._live`; senders find it there and put into its queue without
  a checkpoint. An actor is removed from `_live` only by synchronous code that has just seen it
  idle (parked waiting, queue empty, no background task), so no message can land in the queue of
  an actor that is going away: a later message spawns a fresh incarnation.
- An actor parks only when its queue is empty; putting a message unparks it.
- With placement (several processes on one log, `cuelog.runtime._leases`), an actor of a leased
  kind with a history is rehydrated only after this node took its lease (a new one takes it
  before its first append); a lease held by another live node
  fails the messages with `ActorOwnedElsewhere`, and an actor whose lease was lost stops
  without recording a failure (the new owner has it): what it had not recorded fails with
  `LeaseLost`, which `ask` turns into the new owner (or sends again here when nobody took the
  lease). A retiring actor releases its lease.
- Each ask envelope is settled at most once; a cancelled asker marks it abandoned and the actor
  drops it (before handling) or discards the reply (after), never blocking.
- An ask to an event-sourced actor whose task is parked with nothing to do runs the command in
  the asker's task (`ActorSystem._ask_inline`): the actor is lent (`_Cell.lent`), nothing wakes
  its task meanwhile and it is not idle, so messages queue behind the command; handing it back
  wakes the task if anything arrived. The state changes only by a commit, and from the commit
  on the asker cannot be cancelled.
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeAlias, cast, final

import msgspec
import outcome
import structlog
import trio

from cuelog.runtime._actor_sourced import ActorFailed, EventSourcedActor
from cuelog.runtime._errors import (
    ActorOwnedElsewhere,
    ActorStopped,
    CommandRejected,
    LeaseLost,
    LogError,
    MailboxFull,
)
from cuelog.runtime._leases import LeaseTable
from cuelog.runtime._protocol import EventLog
from cuelog.runtime._sourcing import SourcingEngine

logger = structlog.get_logger("cuelog.actor")

Address: TypeAlias = tuple[str, str]
_ERROR_TEXT_LIMIT = 200
_MAX_STREAM_BYTES = 255


class ActorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the actor system sizes mailboxes, passivates, supervises and shuts down.

    Durations are seconds of trio's clock.
    """

    mailbox_size: int = 64
    passivate_after: float = 300.0
    max_live_actors: int | None = None
    max_failures: int = 5
    failure_window: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    snapshot_every: int = 100
    shutdown_deadline: float = 5.0

    def __post_init__(self) -> None:
        if self.mailbox_size < 1:
            raise ValueError("mailbox_size must be at least 1")
        if self.max_live_actors is not None and self.max_live_actors < 1:
            raise ValueError("max_live_actors must be at least 1 (or None for no limit)")
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if self.snapshot_every < 0:
            raise ValueError("snapshot_every must be 0 (never) or more")
        if min(self.passivate_after, self.backoff_initial, self.backoff_max) < 0:
            raise ValueError("durations must not be negative")


class ActorSystemStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for tests and metrics; totals count since the system opened."""

    live_actors: int
    spawned: int
    passivated: int
    stopped_actors: int
    mailbox_depth: int
    asks_in_flight: int
    failures: int
    restarts: int
    events_replayed: int
    snapshots_saved: int


class _GaveUp(msgspec.Struct):
    """An actor that failed too often: refused until `retry_at`, then tried once more.

    `failures` (times within the failure window) carry over to the next incarnation, so one
    more failure soon after gives up again at once, for twice as long (`strikes`)."""

    reason: str
    retry_at: float
    failures: list[float]
    strikes: int


class Actor(Protocol):
    """A plain actor: handles one message at a time; what it returns is the ask's reply."""

    async def handle(self, msg: Any) -> Any: ...


ActorFactory: TypeAlias = Callable[["ActorContext"], "Actor | EventSourcedActor[Any]"]


class _Envelope:
    """One message in a mailbox; `task` is the asker waiting for the reply (None for tell).

    An asker that runs its command itself (`ActorSystem._ask_inline`) is not parked: the answer
    waits in `value` or `error` until it parks (`inline` false), if it ever does."""

    __slots__ = ("abandoned", "error", "inline", "msg", "task", "value")

    def __init__(self, msg: Any, task: trio.lowlevel.Task | None, inline: bool = False) -> None:
        self.msg = msg
        self.task = task
        self.abandoned = False
        self.inline = inline
        self.value: Any = None
        self.error: BaseException | None = None

    def reply(self, value: Any) -> None:
        task = self.task
        if task is not None:
            self.task = None
            if self.inline:
                self.value = value
            elif not self.abandoned:
                trio.lowlevel.reschedule(task, outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        task = self.task
        if task is not None:
            self.task = None
            if self.inline:
                self.error = error
            elif not self.abandoned:
                trio.lowlevel.reschedule(task, outcome.Error(error))

    def answer(self) -> Any:
        """The answer an inline asker got (see `reply` and `fail`)."""
        if self.error is not None:
            raise self.error
        return self.value


@final
class TaskHandle:
    """A background task owned by an actor (see `ActorContext.start_task`)."""

    __slots__ = ("_done", "_incarnation", "_scope", "name")

    def __init__(self, name: str, incarnation: int) -> None:
        self.name = name
        self._scope = trio.CancelScope()
        self._incarnation = incarnation
        self._done = False

    def cancel(self) -> None:
        """Cancel the task (it sees `trio.Cancelled` at its next checkpoint)."""
        self._scope.cancel()

    @property
    def done(self) -> bool:
        return self._done


class _Cell:
    """One incarnation of an actor: mailbox, state of the task, supervision history."""

    __slots__ = (
        "actor",
        "address",
        "closed",
        "current",
        "failures",
        "incarnation",
        "last_active",
        "lent",
        "queue",
        "refusal",
        "retire_when_idle",
        "room",
        "snapshot_version",
        "sourced",
        "stop_reason",
        "stop_requested",
        "stream",
        "strikes",
        "task_error",
        "tasks",
        "waiter",
    )

    def __init__(self, system: ActorSystem, address: Address) -> None:
        self.address = address
        self.stream = f"{address[0]}:{address[1]}"
        self.actor: Actor | EventSourcedActor[Any] | None = None
        self.sourced = False  # the actor is an `EventSourcedActor`
        self.queue: deque[_Envelope] = deque()
        self.waiter: trio.lowlevel.Task | None = None  # the actor task, parked for a message
        # An asker runs a command in its own task (`ActorSystem._ask_inline`): the actor task
        # stays parked, and nothing wakes it until the asker hands the actor back.
        self.lent = False
        self.room: trio.lowlevel.ParkingLot | None = None  # senders waiting for room
        self.current: Sequence[_Envelope] = ()  # envelopes being handled
        self.tasks: set[TaskHandle] = set()
        self.task_error: Exception | None = None
        self.failures: deque[float] = deque()
        self.strikes = 0  # how many times this actor gave up and came back
        self.incarnation = 0
        self.snapshot_version = 0
        self.stop_requested = False
        self.retire_when_idle = False  # passivate as soon as it is idle (its work is done)
        self.stop_reason = ""
        # Why this node may not run the actor (its lease is elsewhere): every message fails so.
        self.refusal: ActorOwnedElsewhere | LeaseLost | None = None
        self.closed = False
        self.last_active = trio.current_time()

    def is_idle(self) -> bool:
        return self.waiter is not None and not self.lent and not self.tasks

    def can_lend(self) -> bool:
        """Whether an asker may run a command in its own task: an event-sourced actor whose
        task is parked with nothing to do (no message, no error or stop to act on)."""
        return (
            self.waiter is not None
            and self.sourced
            and not self.lent
            and not self.queue
            and self.task_error is None
            and self.refusal is None
            and not self.stop_requested
        )

    def put(self, env: _Envelope) -> None:
        self.queue.append(env)
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not self.lent:
            self.waiter = None
            trio.lowlevel.reschedule(waiter)

    def take(self) -> list[_Envelope]:
        """Everything queued, minus asks whose callers gave up; senders waiting get the room."""
        queue = self.queue
        taken = len(queue)
        envs = [env for env in queue if not env.abandoned]
        queue.clear()
        if self.room is not None:
            self.room.unpark(count=taken)
        return envs

    def take_one(self) -> _Envelope | None:
        env = self.queue.popleft()
        if self.room is not None:
            self.room.unpark()
        return None if env.abandoned else env

    def push_back(self, envs: Sequence[_Envelope]) -> None:
        self.queue.extendleft(reversed(envs))

    async def wait(self) -> None:
        self.waiter = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


@final
class ActorContext:
    """What an actor knows about where it lives: its address, ref, system and log."""

    __slots__ = ("_cell", "_system")

    def __init__(self, system: ActorSystem, cell: _Cell) -> None:
        self._system = system
        self._cell = cell

    @property
    def kind(self) -> str:
        return self._cell.address[0]

    @property
    def id(self) -> str:
        return self._cell.address[1]

    @property
    def address(self) -> Address:
        return self._cell.address

    @property
    def stream(self) -> str:
        """The actor's stream in the log: `f"{kind}:{id}"`."""
        return self._cell.stream

    @property
    def ref(self) -> ActorRef:
        return ActorRef(self._system, self._cell.address)

    @property
    def system(self) -> ActorSystem:
        return self._system

    @property
    def log(self) -> EventLog:
        return self._system.log

    def start_task(
        self, fn: Callable[..., Awaitable[object]], *args: object, name: str | None = None
    ) -> TaskHandle:
        """Run `fn(*args)` beside the actor until it returns, is cancelled, or the actor stops.

        While it runs the actor is not passivated. It talks to the actor by sending it messages
        (through `ctx.ref`); if it raises, the actor fails as if a handler had raised.
        """
        cell = self._cell
        if cell.closed:
            raise ActorStopped(f"actor {cell.stream} has stopped; it cannot start tasks")
        name = name or str(getattr(fn, "__qualname__", "task"))
        handle = TaskHandle(name, cell.incarnation)
        cell.tasks.add(handle)
        self._system._start_task(cell, handle, fn, args)
        return handle

    def passivate_when_idle(self) -> None:
        """Forget the actor as soon as its mailbox is empty and its tasks are done, instead of
        after `passivate_after` (for an actor whose work is over: a later message rehydrates
        it from the log as usual). Memory and collector time go to actors still at work."""
        cell = self._cell
        cell.retire_when_idle = True
        if cell.is_idle() and not cell.queue:
            cell.wake()


@final
class ActorRef:
    """A handle to the actor at `(kind, id)`, whether it is live, passivated or not yet spawned."""

    __slots__ = ("_system", "address")

    def __init__(self, system: ActorSystem, address: Address) -> None:
        self._system = system
        self.address = address

    @property
    def kind(self) -> str:
        return self.address[0]

    @property
    def id(self) -> str:
        return self.address[1]

    def __repr__(self) -> str:
        return f"ActorRef({self.address[0]!r}, {self.address[1]!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ActorRef)
            and other._system is self._system
            and other.address == self.address
        )

    def __hash__(self) -> int:
        return hash(self.address)

    async def tell(self, msg: Any) -> None:
        """Queue `msg` for the actor, waiting while its mailbox is full."""
        if not await self._system._send(self.address, _Envelope(msg, None)):
            await trio.lowlevel.cancel_shielded_checkpoint()

    def tell_nowait(self, msg: Any) -> None:
        """Queue `msg` for the actor; raise `MailboxFull` when there is no room."""
        system = self._system
        cell = system._cell_for(self.address)
        if len(cell.queue) >= system.config.mailbox_size:
            raise MailboxFull(
                f"mailbox of {cell.stream} is full ({system.config.mailbox_size} messages)"
            )
        cell.put(_Envelope(msg, None))

    async def ask(self, msg: Any) -> Any:
        """Send `msg` and wait for the reply; the handler's error is raised here.

        Cancelling the caller leaves nothing behind: a message not yet taken is dropped, and a
        reply to a message being handled is discarded.

        With placement, a message the actor could not record because this node lost its lease
        (`LeaseLost` for its own stream: nothing of it was written) goes where the actor is
        now: `ActorOwnedElsewhere` names the node that took it over, and when nobody did (the
        lease merely expired) it is sent once more here, where a new incarnation takes the
        lease back.
        """
        try:
            return await self._ask(msg)
        except LeaseLost as exc:
            placement = self._system.placement
            if placement is None or exc.stream != f"{self.address[0]}:{self.address[1]}":
                raise
            try:
                moved = await placement.owner(exc.stream)
            except LogError:
                raise exc from None
            if moved is not None:
                raise moved from None
        return await self._ask(msg)

    async def _ask(self, msg: Any) -> Any:
        system = self._system
        cell = system._live.get(self.address) if system._accepting else None
        if cell is not None and cell.can_lend():
            return await system._ask_inline(cell, msg)
        env = _Envelope(msg, trio.lowlevel.current_task())
        system._asks += 1
        try:
            # Fast path: a live actor with room. No checkpoint is needed before parking: if the
            # caller is already cancelled, the park aborts at once and the message is dropped.
            if cell is not None and len(cell.queue) < system.config.mailbox_size:
                cell.put(env)
            else:
                await system._send(self.address, env)

            return await _wait_for_answer(env)
        finally:
            system._asks -= 1


def _start_without_context(
    nursery: trio.Nursery, fn: Callable[..., Awaitable[object]], *args: object, name: str
) -> None:
    """Start `fn(*args)` in `nursery` with no context variables. An actor, and a task it
    starts, outlive the request whose message spawned them: started in its context they would
    hold that request (Quart's request and app contexts, the body, the connection) in memory
    for as long as they live."""
    contextvars.Context().run(lambda: nursery.start_soon(fn, *args, name=name))


@final
class ActorSystem:
    """Spawns, supervises and passivates actors. Open it with `open_actor_system`."""

    def __init__(
        self,
        log: EventLog,
        config: ActorConfig,
        nursery: trio.Nursery,
        placement: LeaseTable | None = None,
    ) -> None:
        self.log = log
        self.config = config
        self.placement = placement
        self._nursery = nursery
        self._factories: dict[str, ActorFactory] = {}
        # Ordered by when each actor last went idle: the front is least recently used.
        self._live: OrderedDict[Address, _Cell] = OrderedDict()
        self._stopped: dict[Address, _GaveUp] = {}
        self._accepting = True
        self._all_stopped = trio.Event()
        self._sweeper_wakeup = trio.Event()
        # counters
        self._asks = 0
        self._spawned = 0
        self._passivated = 0
        self._failures = 0
        self._sourcing = SourcingEngine(log, config.snapshot_every, placement)
        self._restarts = 0

    # -- public ---------------------------------------------------------------------------------

    def register(self, kind: str, factory: ActorFactory) -> None:
        """Declare how to build actors of `kind`: `factory(ctx)` returns a fresh actor."""
        if not kind or ":" in kind or "\x00" in kind:
            raise ValueError(f"actor kind {kind!r} must be non-empty without ':' or NUL")
        if kind in self._factories:
            raise ValueError(f"actor kind {kind!r} is already registered")
        self._factories[kind] = factory

    def ref(self, kind: str, id: str) -> ActorRef:
        """The ref of actor `(kind, id)`; it is spawned by its first message."""
        if kind not in self._factories:
            raise LookupError(f"no actor kind {kind!r} is registered")
        stream = f"{kind}:{id}".encode()
        if not id or len(stream) > _MAX_STREAM_BYTES or b"\x00" in stream:
            raise ValueError(
                f"actor id {id!r} must be non-empty, without NUL, and make a stream name of "
                f"at most {_MAX_STREAM_BYTES} bytes"
            )
        return ActorRef(self, (kind, id))

    def restart(self, kind: str, id: str) -> bool:
        """Let an actor that gave up after repeated failures take messages again now, with a
        clean record (without it, the next message after its hold tries it once more).

        Returns whether it was stopped. The next message rehydrates it from the log.
        """
        return self._stopped.pop((kind, id), None) is not None

    def is_live(self, kind: str, id: str) -> bool:
        """Whether the actor is in memory now (not passivated, stopped or never spawned)."""
        return (kind, id) in self._live

    def statistics(self) -> ActorSystemStatistics:
        return ActorSystemStatistics(
            live_actors=len(self._live),
            spawned=self._spawned,
            passivated=self._passivated,
            stopped_actors=len(self._stopped),
            mailbox_depth=sum(len(cell.queue) for cell in self._live.values()),
            asks_in_flight=self._asks,
            failures=self._failures,
            restarts=self._restarts,
            events_replayed=self._sourcing.events_replayed,
            snapshots_saved=self._sourcing.snapshots_saved,
        )

    # -- delivery -------------------------------------------------------------------------------

    def _cell_for(self, address: Address) -> _Cell:
        if not self._accepting:
            raise ActorStopped(
                f"the actor system is shutting down; {address[0]}:{address[1]} takes no messages"
            )
        cell = self._live.get(address)
        if cell is None:
            gave_up = self._stopped.get(address)
            if gave_up is not None:
                now = trio.current_time()
                if now < gave_up.retry_at:
                    raise ActorStopped(
                        f"{gave_up.reason}; it takes messages again in "
                        f"{gave_up.retry_at - now:.1f}s"
                    )
                del self._stopped[address]
            if address[0] not in self._factories:
                raise LookupError(f"no actor kind {address[0]!r} is registered")
            cell = self._spawn(address)
            if gave_up is not None:
                cell.failures.extend(gave_up.failures)
                cell.strikes = gave_up.strikes
        return cell

    async def _send(self, address: Address, env: _Envelope) -> bool:
        """Put `env` in the actor's mailbox, waiting for room; return whether it waited."""
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = self.config.mailbox_size
        waited = False
        while True:
            cell = self._cell_for(address)
            if len(cell.queue) < limit:
                cell.put(env)
                return waited
            if cell.room is None:
                cell.room = trio.lowlevel.ParkingLot()
            waited = True
            await cell.room.park()

    # -- lifecycle ------------------------------------------------------------------------------

    def _spawn(self, address: Address) -> _Cell:
        limit = self.config.max_live_actors
        if limit is not None and len(self._live) >= limit:
            for candidate in self._live.values():
                if candidate.is_idle():
                    self._passivate(candidate)
                    break
        cell = _Cell(self, address)
        self._live[address] = cell
        self._spawned += 1
        _start_without_context(self._nursery, self._run, cell, name=cell.stream)
        if len(self._live) == 1:
            self._sweeper_wakeup.set()
        return cell

    def _passivate(self, cell: _Cell) -> None:
        """Forget an idle actor. Synchronous: the idle check and the removal are one step."""
        assert cell.is_idle() and not cell.queue
        del self._live[cell.address]
        self._passivated += 1
        cell.stop_requested = True
        cell.wake()

    def _went_idle(self, cell: _Cell) -> None:
        cell.last_active = trio.current_time()
        if self._live.get(cell.address) is cell:
            self._live.move_to_end(cell.address)

    async def _sweep(self) -> None:
        """Passivate actors idle for `passivate_after`, oldest first."""
        while True:
            due = self._passivate_idle(trio.current_time())
            if not self._live:
                self._sweeper_wakeup = trio.Event()
                await self._sweeper_wakeup.wait()
                continue
            await trio.sleep_until(due)

    def _passivate_idle(self, now: float) -> float:
        """Passivate every actor idle since `now - passivate_after`; return when to look again.

        A separate function so the sweeper holds no reference to a passivated actor meanwhile.
        """
        after = self.config.passivate_after
        due = now + after
        idle: list[_Cell] = []
        for cell in self._live.values():
            if cell.last_active + after > now:
                due = cell.last_active + after
                break
            if cell.is_idle():
                idle.append(cell)
        for cell in idle:
            self._passivate(cell)
        return due

    async def _run(self, cell: _Cell) -> None:
        """The actor's task: (re)start, serve messages, and on failure back off and restart."""
        try:
            while True:
                error: Exception
                try:
                    await self._start(cell)
                    await self._serve(cell)
                    return
                except (ActorOwnedElsewhere, LeaseLost) as exc:
                    if _lease_key(exc) != cell.stream:
                        error = exc  # about another actor this one talked to: a failure
                    else:
                        # Not a failure of the actor: another node runs it (or may, once it
                        # takes the expired lease). Nothing is recorded; `_retire` answers.
                        cell.refusal = exc
                        if self.placement is not None:
                            self.placement.forget(cell.stream)
                        return
                except Exception as exc:
                    error = exc
                cell.incarnation += 1
                cell.task_error = None
                for handle in cell.tasks:
                    handle.cancel()
                delay = await self._record_failure(cell, error)
                # The failing asks hear of it once the failure is durable.
                failed, cell.current = cell.current, ()
                for env in failed:
                    env.fail(error)
                if delay is None:
                    return
                await trio.sleep(delay)
                self._restarts += 1
                logger.info("actor restarting", actor=cell.stream)
        finally:
            self._retire(cell)

    async def _start(self, cell: _Cell) -> None:
        placement = self.placement
        if (
            placement is not None
            and placement.covers(cell.stream)
            and not placement.holds(cell.stream)
            and self.log.stream_version(cell.stream)
        ):
            # An actor with a history is loaded only under its lease. A new one (nothing to
            # load: a read of a run not started yet) takes it at its first write instead, so a
            # read never keeps the lease from the node that goes on to create the actor.
            await placement.acquire(cell.stream)
        actor = self._factories[cell.address[0]](ActorContext(self, cell))
        cell.actor = actor
        cell.sourced = isinstance(actor, EventSourcedActor)
        if cell.sourced:
            await self._sourcing.rehydrate(cell, actor)  # type: ignore[arg-type]

    async def _serve(self, cell: _Cell) -> None:
        actor = cell.actor
        assert actor is not None
        sourced = isinstance(actor, EventSourcedActor)
        queue = cell.queue
        while True:
            if cell.task_error is not None:
                raise cell.task_error
            if cell.refusal is not None:
                raise cell.refusal
            if not queue:
                if cell.stop_requested:
                    return
                if cell.retire_when_idle and not cell.tasks:
                    # Synchronous from the idle check to `_retire`: nothing can be queued.
                    self._passivated += 1
                    return
                self._went_idle(cell)
                await cell.wait()
                continue
            if sourced:
                if self.placement is not None and not self.placement.covers(cell.stream):
                    # Unleased (an agent): other nodes may have written since; read what they did.
                    self._sourcing.catch_up(cell, actor)  # type: ignore[arg-type]
                await self._sourcing.run_commands(cell, actor)  # type: ignore[arg-type]
            else:
                await self._run_message(cell, actor)  # type: ignore[arg-type]

    def _retire(self, cell: _Cell) -> None:
        """The incarnation is over: nobody waits on it any longer. Synchronous."""
        cell.closed = True
        busy = bool(cell.tasks or cell.current or cell.queue)
        # The actor refers to its cell (through its context): let go of it here, so a retired
        # actor is freed by reference counting, not left for a full collection to find.
        cell.actor = None
        if self._live.get(cell.address) is cell:
            del self._live[cell.address]
        for handle in cell.tasks:
            handle.cancel()
        if (
            self.placement is not None
            and cell.refusal is None
            and cell.address not in self._live  # a newer incarnation keeps using the lease
            and (self._accepting or not busy)  # work cut short by shutdown is handed over
        ):
            self.placement.release_soon(cell.stream)
        reason = cell.stop_reason or (
            f"actor {cell.stream} stopped before handling the message (the system shut down)"
        )
        error: Exception = cell.refusal or ActorStopped(reason)
        if cell.refusal is not None and any(env.task is None for env in cell.queue):
            # Nobody waits for a tell: the log is the only place the refusal shows.
            logger.warning("told messages refused", actor=cell.stream, error=str(cell.refusal))
        for env in cell.current:
            env.fail(error)
        for env in cell.queue:
            env.fail(error)
        cell.queue.clear()
        if cell.room is not None:
            cell.room.unpark_all()
        if not self._accepting and not self._live:
            self._all_stopped.set()

    async def _record_failure(self, cell: _Cell, error: Exception) -> float | None:
        """Record `ActorFailed`; return the backoff before restarting, or None to give up."""
        self._failures += 1
        error_type = type(error).__qualname__
        message = str(error)[:_ERROR_TEXT_LIMIT]
        now = trio.current_time()
        failures = cell.failures
        failures.append(now)
        while failures[0] <= now - self.config.failure_window:
            failures.popleft()
        logger.warning("actor failed", actor=cell.stream, error_type=error_type)
        try:
            await self.log.append(
                cell.stream, [ActorFailed(error_type=error_type, message=message)]
            )
        except LogError as exc:
            logger.error("cannot record actor failure", actor=cell.stream, error=str(exc))
        if len(failures) >= self.config.max_failures:
            cell.stop_reason = (
                f"actor {cell.stream} stopped after {len(failures)} failures within "
                f"{self.config.failure_window:g}s (last: {error_type}: {message})"
            )
            # Held off, then tried again by the next message: a passing cause (a full disk, a
            # peer that was down) heals without an operator; a lasting one costs one failure
            # per hold, each hold twice the last.
            hold = min(
                self.config.backoff_max * 2**cell.strikes,
                max(self.config.backoff_max, self.config.failure_window),
            )
            self._stopped[cell.address] = _GaveUp(
                cell.stop_reason, now + hold, list(failures), cell.strikes + 1
            )
            cell.stop_reason += f"; it takes messages again in {hold:.1f}s"
            logger.error("actor gave up", actor=cell.stream, failures=len(failures), retry_in=hold)
            return None
        return float(
            min(self.config.backoff_max, self.config.backoff_initial * 2 ** (len(failures) - 1))
        )

    # -- handling -------------------------------------------------------------------------------

    async def _ask_inline(self, cell: _Cell, msg: Any) -> Any:
        """Run an ask to an idle event-sourced actor in the asker's task (see `_Cell.can_lend`):
        no hop through the actor's task and back.

        The actor is lent to the asker: its task stays parked, and messages arriving meanwhile
        queue behind the command, so it is still one command at a time in mailbox order. The
        command's decision may be cancelled with the asker (nothing is written; the command is
        dropped, as a message not yet taken); from its commit on it is shielded, so the state,
        the log and the effects stay in step. A command that fails is handed to the actor's
        task, which records the failure and restarts the actor as for any other command; the
        asker hears of it once the failure is durable.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        actor = cast("EventSourcedActor[Any]", cell.actor)  # `can_lend`: a sourced actor
        env = _Envelope(msg, trio.lowlevel.current_task(), inline=True)
        version = actor._version
        cell.lent = True
        self._asks += 1
        try:
            if self.placement is not None and not self.placement.covers(cell.stream):
                try:
                    self._sourcing.catch_up(cell, actor)
                except Exception as exc:
                    # As in the actor's task: it fails, and takes the command once restarted.
                    cell.queue.appendleft(env)
                    return await self._hand_over_failure(cell, env, exc)
            try:
                await self._sourcing.run_commands(cell, actor, env)
            except Exception as exc:
                return await self._hand_over_failure(cell, env, exc)
            except BaseException:
                # Cancelled while deciding: nothing was written, the command is dropped.
                if env.task is not None:
                    env.task = None
                    env.abandoned = True
                cell.current = ()
                self._give_back(cell)
                raise
            self._give_back(cell)
            if env.task is not None:  # not answered yet: wait like any asker
                env.inline = False
                return await _wait_for_answer(env)
            if actor._version == version:
                # Nothing was written (so nothing checkpointed): let other tasks run.
                await trio.lowlevel.cancel_shielded_checkpoint()
            return env.answer()
        finally:
            self._asks -= 1

    async def _hand_over_failure(self, cell: _Cell, env: _Envelope, error: Exception) -> Any:
        """A command run in the asker's task failed: the actor fails as if its own task had run
        it (the failure is recorded, the commands in `cell.current` fail, it restarts); the
        asker waits for its answer like any other."""
        cell.task_error = error
        env.inline = False
        self._give_back(cell)
        if env.task is None:
            return env.answer()  # answered before the failure (e.g. by a later snapshot)
        return await _wait_for_answer(env)

    def _give_back(self, cell: _Cell) -> None:
        """An asker is done with the actor it ran a command for: wake the actor's task if there
        is work (messages queued meanwhile, an error, a stop), else it is idle from now."""
        cell.lent = False
        if cell.waiter is None:
            return  # its task was cancelled meanwhile (the system is shutting down)
        if (
            cell.queue
            or cell.stop_requested
            or cell.task_error is not None
            or cell.refusal is not None
            or (cell.retire_when_idle and not cell.tasks)
        ):
            cell.wake()
        else:
            self._went_idle(cell)

    async def _run_message(self, cell: _Cell, actor: Actor) -> None:
        env = cell.take_one()
        if env is None:
            return
        cell.current = (env,)  # any other error fails it once the failure is recorded
        try:
            value = await actor.handle(env.msg)
        except CommandRejected as exc:
            env.fail(exc)
        else:
            env.reply(value)
        cell.current = ()

    # -- background tasks -----------------------------------------------------------------------

    def _start_task(
        self,
        cell: _Cell,
        handle: TaskHandle,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
    ) -> None:
        # Not in the context of the task that started it (the asker's, when the handler ran
        # inline).
        _start_without_context(
            self._nursery, self._run_task, cell, handle, fn, args, name=handle.name
        )

    async def _run_task(
        self,
        cell: _Cell,
        handle: TaskHandle,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
    ) -> None:
        try:
            with handle._scope:
                await fn(*args)
        except Exception as exc:
            if not self._accepting or cell.closed or handle._incarnation != cell.incarnation:
                logger.debug("background task failed after its actor", actor=cell.stream)
            elif cell.task_error is None:
                cell.task_error = exc
                cell.wake()
        finally:
            handle._done = True
            cell.tasks.discard(handle)
            if not cell.tasks:
                self._went_idle(cell)
                if cell.retire_when_idle and not cell.queue:
                    cell.wake()

    # -- placement ------------------------------------------------------------------------------

    def _leases_lost(self, keys: list[str]) -> None:
        """Another node took these actors' leases (this process was paused or cut off): stop
        them here; their messages fail with `LeaseLost`, and nothing more is appended for them."""
        for key in keys:
            kind, _, id_ = key.partition(":")
            cell = self._live.get((kind, id_))
            if cell is not None and cell.refusal is None:
                cell.refusal = LeaseLost(key, None)
                cell.wake()

    # -- shutdown -------------------------------------------------------------------------------

    def _close(self) -> None:
        """Stop accepting messages; every actor stops once its mailbox is drained."""
        self._accepting = False
        if not self._live:
            self._all_stopped.set()
        for cell in list(self._live.values()):
            cell.stop_requested = True
            cell.wake()
            if cell.room is not None:
                cell.room.unpark_all()


async def _wait_for_answer(env: _Envelope) -> Any:
    """Park the asker of `env` until it is answered; cancelling it abandons the envelope."""

    def abort(_: Any) -> trio.lowlevel.Abort:
        env.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED

    return await trio.lowlevel.wait_task_rescheduled(abort)


def _lease_key(error: ActorOwnedElsewhere | LeaseLost) -> str:
    return error.key if isinstance(error, ActorOwnedElsewhere) else error.stream


@asynccontextmanager
async def open_actor_system(
    log: EventLog, *, config: ActorConfig | None = None, placement: LeaseTable | None = None
) -> AsyncIterator[ActorSystem]:
    """Run an actor system over `log` until the block exits.

    With `placement` (see `open_leases`), actors of its leased kinds run only where their lease is.

    On exit: stop accepting (tell and ask raise `ActorStopped`), let actors drain their mailboxes
    for up to `config.shutdown_deadline` seconds, then cancel whatever is left.
    """
    config = config or ActorConfig()
    async with trio.open_nursery() as nursery:
        system = ActorSystem(log, config, nursery, placement)
        if placement is not None:
            placement.on_lost = system._leases_lost
        nursery.start_soon(system._sweep, name="actor passivation")
        try:
            yield system
        finally:
            system._close()
            try:
                with trio.move_on_after(config.shutdown_deadline):
                    await system._all_stopped.wait()
            finally:
                nursery.cancel_scope.cancel()
