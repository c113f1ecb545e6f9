"""Loops: scheduled runs, recorded in the log like everything else.

A loop (stream `loop:<id>`) sends a message to an agent on a trigger: a cron expression in a time
zone, a fixed interval or one time. Its scheduler records `LoopFired` for a slot *before* the run
starts, keyed by (loop, scheduled time): a slot with a `LoopFired` never fires again, and the run
is started under an idempotency claim named after the slot, so a crash between the fire and the
run, or several restarts in a row, still give one run per slot (the fire's run is started on the
next start-up if it had not been).

The scheduler sleeps on trio's clock and reads wall time through `now`, so tests drive it with
`trio.testing.MockClock` and a `now` derived from `trio.current_time()`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Final, final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import structlog
import trio
from croniter import CroniterBadCronError, croniter

from cuelog.actors._commands import Caller
from cuelog.actors._domain import Domain, IdempotencyKey
from cuelog.actors._errors import Conflict, Invalid, NotFound
from cuelog.actors._events import (
    DOMAIN_CODEC,
    LoopCreated,
    LoopDeleted,
    LoopFired,
    LoopFireFailed,
    LoopSpec,
    LoopToggled,
    LoopTrigger,
    LoopUpdated,
)
from cuelog.actors._idempotency import request_digest
from cuelog.actors._messages import ChatMessage
from cuelog.actors._names import LOOP, is_valid_id, loop_stream, run_stream, stream_prefix
from cuelog.actors._webhooks import Webhooks
from cuelog.runtime import NO_STREAM, CuelogError, EventLog, LeaseTable, WrongExpectedVersion

logger = structlog.get_logger("cuelog.loops")

RECENT_FIRES: Final = 20  # fires kept per loop for views and recovery
MAX_NAP: Final = 60.0  # the scheduler looks again at least this often (wall clock may jump)
MAX_LOOP_ID: Final = 64  # loop ids leave room for the slot in per-fire session keys
# A loop's fold is snapshotted every this many events, so a start-up reads at most this many
# events of a loop that has fired for years.
SNAPSHOT_EVERY: Final = 100


# -- triggers ------------------------------------------------------------------------------------


def _zone(trigger: LoopTrigger) -> ZoneInfo:
    try:
        return ZoneInfo(trigger.tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"unknown time zone {trigger.tz!r}", param="trigger.tz") from None


def check_trigger(trigger: LoopTrigger) -> None:
    """Refuse a trigger that is not exactly one valid kind."""
    kinds = [k for k in ("cron", "every", "at") if getattr(trigger, k) is not None]
    if len(kinds) != 1:
        raise Invalid("trigger must have exactly one of cron, every or at", param="trigger")
    if trigger.tz is not None and trigger.cron is None:
        raise Invalid("trigger.tz goes with trigger.cron only", param="trigger.tz")
    if trigger.cron is not None:
        _zone(trigger)
        if len(trigger.cron.split()) != 5 or not croniter.is_valid(trigger.cron):
            raise Invalid(
                f"trigger.cron {trigger.cron!r} is not a cron expression of 5 fields",
                param="trigger.cron",
            )
    if trigger.every is not None and trigger.every < 1:
        raise Invalid("trigger.every must be at least 1 second", param="trigger.every")


def next_slot(trigger: LoopTrigger, after: int, anchor: int) -> int | None:
    """The first slot strictly after `after` (seconds since the Unix epoch), or None.

    Interval slots are `anchor + k * every` (k >= 1). Cron slots are whole minutes in the
    trigger's time zone; in the hour a fall-back change repeats, a slot is taken once (the first
    pass), and a slot a spring-forward change skips over fires at the end of the gap.
    """
    if trigger.every is not None:
        if after < anchor:
            return anchor + trigger.every
        return anchor + ((after - anchor) // trigger.every + 1) * trigger.every
    if trigger.at is not None:
        return trigger.at if trigger.at > after else None
    assert trigger.cron is not None
    zone = _zone(trigger)
    try:
        it = croniter(trigger.cron, datetime.fromtimestamp(after, zone))
        for _ in range(1000):
            slot = int(it.get_next(float))
            if slot > after and not datetime.fromtimestamp(slot, zone).fold:
                return slot
    except CroniterBadCronError:
        return None
    return None


def latest_slot(trigger: LoopTrigger, at: int, anchor: int) -> int | None:
    """The last slot at or before `at` that is after `anchor`, or None."""
    if trigger.every is not None:
        if at < anchor + trigger.every:
            return None
        return anchor + (at - anchor) // trigger.every * trigger.every
    if trigger.at is not None:
        return trigger.at if anchor < trigger.at <= at else None
    assert trigger.cron is not None
    zone = _zone(trigger)
    it = croniter(trigger.cron, datetime.fromtimestamp(at + 1, zone))
    for _ in range(1000):
        slot = int(it.get_prev(float))
        if slot <= anchor:
            return None
        if not datetime.fromtimestamp(slot, zone).fold:
            return slot
    return None


# -- views ---------------------------------------------------------------------------------------


class FireView(msgspec.Struct, frozen=True, kw_only=True):
    """One fire: its slot, its run and that run's status (`failed` with `error` when the run
    could not start, `pending` while a recorded fire's run is being started)."""

    scheduled_at: int
    run_id: str
    session_key: str
    manual: bool
    status: str
    error: str | None = None


class LoopView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    spec: LoopSpec
    enabled: bool
    version: int
    fires_count: int
    next_fire_at: int | None
    fires: list[FireView]  # newest first


class _Fire(msgspec.Struct, kw_only=True):
    event: LoopFired
    error: str | None = None


class _Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A loop's fold as of a version (kept beside the log, not in the chain)."""

    spec: LoopSpec | None
    enabled: bool
    deleted: bool
    anchor: int
    scheduled: int
    last_slot: int
    fires: list[LoopFired]
    errors: list[str | None]


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)


class _Loop:
    """A loop folded from its stream, plus the scheduler's memory of slots it skipped."""

    def __init__(self, loop_id: str) -> None:
        self.id = loop_id
        self.spec: LoopSpec | None = None
        self.enabled = False
        self.deleted = False
        self.anchor = 0
        self.version = 0
        self.scheduled = 0  # scheduled fires so far (max_fires counts these)
        self.last_slot = 0  # the latest scheduled slot that fired
        self.skipped_to = 0  # slots up to here were missed and skipped (not recorded)
        self.fires: deque[_Fire] = deque(maxlen=RECENT_FIRES)

    def apply(self, event: object) -> None:
        match event:
            case LoopCreated(spec=spec, enabled=enabled, anchor=anchor):
                self.spec, self.enabled, self.anchor = spec, enabled, anchor
            case LoopUpdated(spec=spec, anchor=anchor):
                self.spec, self.anchor = spec, anchor
            case LoopToggled(enabled=enabled, anchor=anchor):
                self.enabled, self.anchor = enabled, anchor
            case LoopDeleted():
                self.deleted = True
            case LoopFired(scheduled_at=slot, manual=manual):
                self.fires.append(_Fire(event=event))
                if not manual:
                    self.scheduled += 1
                    self.last_slot = max(self.last_slot, slot)
            case LoopFireFailed(run_id=run_id, reason=reason):
                for fire in self.fires:
                    if fire.event.run_id == run_id:
                        fire.error = reason
        self.version += 1

    @property
    def exists(self) -> bool:
        return self.spec is not None and not self.deleted

    def snapshot(self) -> bytes:
        return _snapshot_encoder.encode(
            _Snapshot(
                spec=self.spec,
                enabled=self.enabled,
                deleted=self.deleted,
                anchor=self.anchor,
                scheduled=self.scheduled,
                last_slot=self.last_slot,
                fires=[f.event for f in self.fires],
                errors=[f.error for f in self.fires],
            )
        )

    def restore(self, version: int, data: bytes) -> None:
        snap = _snapshot_decoder.decode(data)
        self.spec, self.enabled, self.deleted = snap.spec, snap.enabled, snap.deleted
        self.anchor, self.scheduled, self.last_slot = snap.anchor, snap.scheduled, snap.last_slot
        self.fires.extend(
            _Fire(event=event, error=error)
            for event, error in zip(snap.fires, snap.errors, strict=True)
        )
        self.version = version

    def next_fire(self) -> int | None:
        """The next slot to fire, or None when the loop is off, done or deleted."""
        spec = self.spec
        if spec is None or self.deleted or not self.enabled:
            return None
        if spec.max_fires is not None and self.scheduled >= spec.max_fires:
            return None
        after = max(self.anchor, self.last_slot, self.skipped_to)
        slot = next_slot(spec.trigger, after, self.anchor)
        if slot is None or (spec.end_at is not None and slot > spec.end_at):
            return None
        return slot


# -- the loops and their scheduler ------------------------------------------------------------


@final
class Loops:
    """Every loop, folded from the `loop:*` streams, and the writes that change them."""

    def __init__(
        self,
        domain: Domain,
        *,
        now: Callable[[], float] = time.time,
        misfire_grace: float = 60.0,
        ids: Callable[[str], str] | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        self.domain = domain
        self.webhooks = webhooks
        self.log: EventLog = domain.log
        self._now = now
        self.misfire_grace = misfire_grace
        self._ids = ids or domain._ids
        self._loops: dict[str, _Loop] = {}
        self._lock = trio.Lock()
        self._changed = trio.Event()
        after: str | None = None
        while names := self.log.list_streams(stream_prefix(LOOP), after=after, limit=500):
            after = names[-1]
            for name in names:
                self._reload(name.removeprefix(stream_prefix(LOOP)))

    def now(self) -> int:
        return int(self._now())

    def _reload(self, loop_id: str) -> _Loop:
        stream = loop_stream(loop_id)
        state = _Loop(loop_id)
        snapshot = self.log.load_snapshot(stream)
        if snapshot is not None and snapshot[0] <= self.log.stream_version(stream):
            try:
                state.restore(*snapshot)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                state = _Loop(loop_id)  # unreadable (an older shape): fold from the start
        for record in self.log.read_stream(stream, state.version + 1):
            state.apply(DOMAIN_CODEC.decode(record.type, record.data))
        self._loops[loop_id] = state
        return state

    async def _applied(self, state: _Loop, event: object) -> None:
        """Apply an appended event to the fold, snapshotting it now and then."""
        state.apply(event)
        if state.version % SNAPSHOT_EVERY == 0:
            await self.log.save_snapshot(loop_stream(state.id), state.version, state.snapshot())

    def _get(self, loop_id: str) -> _Loop:
        state = self._loops.get(loop_id)
        if state is None or not state.exists:
            raise NotFound(f"no loop {loop_id!r}")
        return state

    async def _append(
        self,
        state: _Loop,
        event: LoopCreated | LoopUpdated | LoopToggled | LoopDeleted | LoopFired,
        actor: str | None,
    ) -> None:
        """Append to the loop's stream at the version this process folded; a write from
        elsewhere (another process on the same log) makes it a conflict, never a double."""
        expected = state.version if state.version else NO_STREAM
        try:
            await self.log.append(
                loop_stream(state.id), [event], expected_version=expected, actor=actor
            )
        except WrongExpectedVersion:
            self._reload(state.id)
            raise Conflict(f"loop {state.id!r} changed meanwhile; try again") from None
        await self._applied(state, event)
        self._changed.set()

    # -- writes ------------------------------------------------------------------------------

    async def _check(self, spec: LoopSpec) -> None:
        check_trigger(spec.trigger)
        if not spec.message.strip():
            raise Invalid("message must not be empty", param="message")
        if spec.max_fires is not None and spec.max_fires < 1:
            raise Invalid("max_fires must be at least 1", param="max_fires")
        await self.domain.get_agent(spec.agent_id)  # NotFound names the agent
        now = self.now()
        if spec.trigger.at is not None and spec.trigger.at <= now:
            raise Invalid("trigger.at must be in the future", param="trigger.at")
        if spec.end_at is not None and spec.end_at <= now:
            raise Invalid("end_at must be in the future", param="end_at")
        if spec.callback_url is not None:
            if self.webhooks is None:
                raise Invalid("webhooks are off on this server", param="callback_url")
            await self.webhooks.check_target(spec.callback_url, agent_id=spec.agent_id)

    async def create(
        self, loop_id: str | None, spec: LoopSpec, *, enabled: bool = True, actor: str | None = None
    ) -> LoopView:
        loop_id = loop_id or self._ids("loop")
        if not is_valid_id(loop_id) or len(loop_id) > MAX_LOOP_ID:
            raise Invalid(f"id must be at most {MAX_LOOP_ID} letters, digits or ._:@-", "id")
        await self._check(spec)
        async with self._lock:
            if self.log.stream_version(loop_stream(loop_id)):
                raise Conflict(f"loop {loop_id!r} already exists (ids are not reused)")
            state = _Loop(loop_id)
            event = LoopCreated(loop_id=loop_id, spec=spec, enabled=enabled, anchor=self.now())
            await self._append(state, event, actor)
            self._loops[loop_id] = state
        return await self.get(loop_id)

    async def update(self, loop_id: str, spec: LoopSpec, *, actor: str | None = None) -> LoopView:
        """Replace the loop's spec; a changed trigger counts its slots from now."""
        await self._check(spec)
        async with self._lock:
            state = self._get(loop_id)
            assert state.spec is not None
            anchor = state.anchor if spec.trigger == state.spec.trigger else self.now()
            await self._append(state, LoopUpdated(spec=spec, anchor=anchor), actor)
        return await self.get(loop_id)

    async def toggle(
        self, loop_id: str, enabled: bool | None = None, *, actor: str | None = None
    ) -> LoopView:
        """Turn the loop on or off (`enabled` None flips it). Turned on, its slots count from
        now: the slots it was off for are not made up."""
        async with self._lock:
            state = self._get(loop_id)
            value = not state.enabled if enabled is None else enabled
            if value != state.enabled:
                anchor = self.now() if value else state.anchor
                await self._append(state, LoopToggled(enabled=value, anchor=anchor), actor)
        return await self.get(loop_id)

    async def delete(self, loop_id: str, *, actor: str | None = None) -> None:
        async with self._lock:
            state = self._get(loop_id)
            await self._append(state, LoopDeleted(), actor)

    async def run_now(self, loop_id: str, *, actor: str | None = None) -> FireView:
        """Fire the loop now, outside its schedule (enabled or not); return the fire."""
        state = self._get(loop_id)
        fire = await self._fire(state, self.now(), manual=True, actor=actor)
        if fire is None:
            raise Conflict(f"loop {loop_id!r} changed meanwhile; try again")
        return (await self._fire_views(state, [fire]))[0]

    # -- reads -------------------------------------------------------------------------------

    async def get(self, loop_id: str) -> LoopView:
        state = self._get(loop_id)
        assert state.spec is not None
        return LoopView(
            id=state.id,
            spec=state.spec,
            enabled=state.enabled,
            version=state.version,
            fires_count=state.scheduled,
            next_fire_at=state.next_fire(),
            fires=await self._fire_views(state, list(reversed(state.fires))),
        )

    async def list_loops(
        self, *, after: str | None = None, limit: int = 50
    ) -> tuple[list[LoopView], str | None]:
        """A page of loops in id order, and the cursor of the next page (or None)."""
        ids = sorted(i for i, s in self._loops.items() if s.exists and (after is None or i > after))
        page = [await self.get(i) for i in ids[:limit]]
        return page, (ids[limit - 1] if len(ids) > limit else None)

    async def _fire_views(self, state: _Loop, fires: list[_Fire]) -> list[FireView]:
        out = []
        for fire in fires:
            event = fire.event
            status = "failed" if fire.error is not None else "pending"
            if fire.error is None:
                with suppress(NotFound):
                    status = (await self.domain.get_run(event.run_id)).status
            out.append(
                FireView(
                    scheduled_at=event.scheduled_at,
                    run_id=event.run_id,
                    session_key=event.session_key,
                    manual=event.manual,
                    status=status,
                    error=fire.error,
                )
            )
        return out

    # -- firing ------------------------------------------------------------------------------

    def _caller(self, loop_id: str) -> Caller:
        return Caller(owner=f"loop:{loop_id}", admin=True)

    async def _fire(
        self, state: _Loop, slot: int, *, manual: bool, actor: str | None = None
    ) -> _Fire | None:
        """Record the fire, then start its run. None when the slot was taken meanwhile."""
        assert state.spec is not None
        run_id = self._ids("run")
        if state.spec.session == "per_loop":
            session_key = f"loop-{state.id}"
        else:
            session_key = f"loop-{state.id}-{run_id if manual else slot}"
        event = LoopFired(scheduled_at=slot, run_id=run_id, session_key=session_key, manual=manual)
        async with self._lock:
            if not manual and slot <= state.last_slot:
                return None  # fired already (by this process or, after a reload, another)
            try:
                await self._append(state, event, actor or f"loop:{state.id}")
            except Conflict:
                return None
        fire = state.fires[-1]
        logger.info("loop fired", loop_id=state.id, scheduled_at=slot, run_id=run_id)
        await self._start(state, fire)
        return fire

    async def _start(self, state: _Loop, fire: _Fire) -> None:
        """Start the fire's run under a claim named after the slot, so a repeat (recovery after
        a crash) attaches to the run if it was started, and starts it if not."""
        assert state.spec is not None
        event = fire.event
        key = f"manual:{event.run_id}" if event.manual else f"slot:{event.scheduled_at}"
        try:
            if state.spec.callback_url is not None and self.webhooks is not None:
                # Before the run exists, so its outcome goes here, not to the agent's default.
                await self.webhooks.request(
                    event.run_id, state.spec.callback_url, actor=f"loop:{state.id}"
                )
            await self.domain.send(
                state.spec.agent_id,
                [ChatMessage(role="user", content=state.spec.message)],
                session_key=event.session_key,
                caller=self._caller(state.id),
                run_id=event.run_id,
                idempotency=IdempotencyKey(
                    scope=f"loop:{state.id}",
                    key=key,
                    route="loop",
                    digest=request_digest(event.run_id.encode()),
                ),
            )
        except CuelogError as exc:
            reason = str(exc) or type(exc).__name__
            logger.warning("loop fire failed", loop_id=state.id, run_id=event.run_id, reason=reason)
            async with self._lock:
                failed = LoopFireFailed(run_id=event.run_id, reason=reason)
                await self.log.append(loop_stream(state.id), [failed], actor=f"loop:{state.id}")
                await self._applied(state, failed)

    async def recover(self) -> int:
        """Start the runs of recorded fires that never started (a crash came between); return
        how many there were."""
        found = 0
        for state in list(self._loops.values()):
            if state.spec is None:
                continue
            for fire in list(state.fires):
                if fire.error is not None:
                    continue
                if self.log.stream_version(run_stream(fire.event.run_id)):
                    continue
                found += 1
                await self._start(state, fire)
        if found:
            logger.info("started the runs of interrupted loop fires", count=found)
        return found

    async def follow(self) -> None:
        """Keep the fold current with loops changed by other processes on the log (cluster
        mode), from the log's head on."""
        prefix = stream_prefix(LOOP)
        async for record in self.log.subscribe(self.log.head().seq, prefix):
            state = self._loops.get(record.stream.removeprefix(prefix))
            if state is None or state.version < record.version:
                async with self._lock:
                    self._reload(record.stream.removeprefix(prefix))
                self._changed.set()

    async def run_as_owner(self) -> None:
        """The scheduler, while this node holds the loops' service lease (cluster mode): read
        every loop again first, as another node may have fired since."""
        async with self._lock:
            after: str | None = None
            while names := self.log.list_streams(stream_prefix(LOOP), after=after, limit=500):
                after = names[-1]
                for name in names:
                    self._reload(name.removeprefix(stream_prefix(LOOP)))
        await self.run()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler: fire what is due, then sleep until the next slot or a change."""
        await self.recover()
        task_status.started()
        while True:
            self._changed = trio.Event()
            wake_at = self._now() + MAX_NAP
            for state in list(self._loops.values()):
                try:
                    due = await self._tick(state)
                except CuelogError as exc:  # one loop's trouble must not stop the others
                    logger.warning("loop tick failed", loop_id=state.id, error=str(exc))
                    due = int(self._now()) + 1
                if due is not None:
                    wake_at = min(wake_at, due)
            with trio.move_on_after(max(0.0, wake_at - self._now())):
                await self._changed.wait()

    async def _tick(self, state: _Loop) -> int | None:
        """Fire the loop if a slot is due; return its next slot (None: nothing scheduled)."""
        due = state.next_fire()
        if due is None:
            return None
        now = self.now()
        if due > now:
            return due
        spec = state.spec
        assert spec is not None
        until = now if spec.end_at is None else min(now, spec.end_at)
        latest = latest_slot(spec.trigger, until, state.anchor) or due
        latest = max(latest, due)
        if now - latest <= self.misfire_grace or spec.missed == "run_once":
            # Several slots due at once (the server was down or busy) make one run, the latest.
            await self._fire(state, latest, manual=False)
        else:
            state.skipped_to = latest
            logger.info("loop slots missed and skipped", loop_id=state.id, up_to=latest)
        return state.next_fire()


@asynccontextmanager
async def open_loops(
    domain: Domain,
    *,
    now: Callable[[], float] = time.time,
    misfire_grace: float = 60.0,
    schedule: bool = True,
    webhooks: Webhooks | None = None,
    leases: LeaseTable | None = None,
) -> AsyncIterator[Loops]:
    """Fold the loops and, with `schedule`, run their scheduler until the block ends. With
    `leases` (cluster mode) the fold follows the log, and the scheduler runs only while this
    node holds the service lease `service:loops`."""
    loops = Loops(domain, now=now, misfire_grace=misfire_grace, webhooks=webhooks)
    async with trio.open_nursery() as nursery:
        if leases is not None:
            nursery.start_soon(loops.follow)
            if schedule:
                nursery.start_soon(leases.run_service, "loops", loops.run_as_owner)
        elif schedule:
            await nursery.start(lambda task_status: loops.run(task_status=task_status))
        yield loops
        nursery.cancel_scope.cancel()
