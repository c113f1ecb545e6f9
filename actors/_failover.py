"""Failover in cluster mode: take over the runs and sessions of a node that died.

A node that dies leaves its leases to expire unreleased (orphans). Every node looks for orphans
once per renew interval and touches each one, as start-up recovery touches what a crash left in
flight: the run actor rehydrates here under a new lease epoch, a run that was running is closed
as `interrupted` and its session is told (so its queued successor runs), and a run waiting for
approval keeps waiting. Nodes race for an orphan; its lease goes to one of them, the others are
refused and move on.

Every node also follows the emergency stop other nodes record: a stop cancels this node's active
runs too, and its hold (or release) applies here from then on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
import trio

from cuelog.actors._errors import NotFound
from cuelog.actors._events import DOMAIN_CODEC, EmergencyStopChanged, RunStarted
from cuelog.actors._names import RUN, SESSION, SYSTEM_STREAM, run_stream, stream_id
from cuelog.runtime import ActorError, CuelogError, LeaseTable, LogError

if TYPE_CHECKING:
    from cuelog.actors._domain import Domain

logger = structlog.get_logger("cuelog.failover")

_BATCH = 100
_AT_ONCE = 8  # orphans taken over at once


async def take_over_orphans(domain: Domain, leases: LeaseTable) -> None:
    """Forever: every renew interval, take over what dead nodes left (see the module)."""
    while True:
        await trio.sleep(leases.config.renew_interval)
        try:
            await take_over_once(domain, leases)
        except LogError as exc:
            logger.warning("cannot look for orphaned actors", error=str(exc))


async def take_over_once(domain: Domain, leases: LeaseTable) -> int:
    """Touch every orphaned run, then every orphaned session, `_AT_ONCE` at a time; return how
    many this node took."""
    taken = 0

    async def take_run(key: str) -> None:
        nonlocal taken
        run_id = stream_id(key, RUN)
        try:
            # The session first: a run and its session must land on one node, or the run's end
            # would be told to a session elsewhere that never hears of it. While the session's
            # lease has not expired yet, this is refused and tried again next round.
            session_key = _session_of(domain, run_id)
            if session_key is not None:
                await domain.get_session(session_key)
            await domain.get_run(run_id)  # closes it if it was running, tells the session
        except (NotFound, ActorError, LogError) as exc:
            logger.info("orphaned run not taken", key=key, error=str(exc))
            return
        taken += 1

    async def take_session(key: str) -> None:
        nonlocal taken
        try:
            await domain.get_session(stream_id(key, SESSION))
        except (NotFound, ActorError, LogError) as exc:
            logger.info("orphaned session not taken", key=key, error=str(exc))
            return
        taken += 1

    await _each(await leases.orphaned(RUN, _BATCH), take_run)
    await _each(await leases.orphaned(SESSION, _BATCH), take_session)
    if taken:
        logger.info("took over actors of a dead node", count=taken, node=leases.node)
    return taken


async def _each(keys: list[str], take: Callable[[str], Awaitable[None]]) -> None:
    """`take` every key, at most `_AT_ONCE` at a time: each waits on its own reads and commit."""
    limit = trio.CapacityLimiter(_AT_ONCE)

    async def one(key: str) -> None:
        async with limit:
            await take(key)

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(one, key)


def _session_of(domain: Domain, run_id: str) -> str | None:
    """The session a run belongs to, from its first event (None before it started)."""
    first = domain.log.read_stream(run_stream(run_id), 1, limit=1)
    if not first:
        return None
    event = DOMAIN_CODEC.decode(first[0].type, first[0].data)
    return event.session_key if isinstance(event, RunStarted) else None


async def follow_emergency_stop(domain: Domain) -> None:
    """Take up the emergency-stop changes other nodes record from now on (see the module)."""
    log = domain.log
    node = domain.lease_statistics()
    here = node.node if node is not None else None
    async for record in log.subscribe_stream(SYSTEM_STREAM, log.stream_version(SYSTEM_STREAM)):
        if record.type != "EmergencyStopChanged":
            continue
        event = DOMAIN_CODEC.decode(record.type, record.data)
        if not isinstance(event, EmergencyStopChanged) or event.node == here:
            continue
        domain.registry.stopped = event.stopped
        if not event.stop:
            logger.info("emergency stop changed on another node", stopped=event.stopped)
            continue
        active = list(domain.registry.active)
        logger.warning(
            "emergency stop on another node: cancelling this node's runs",
            node=event.node,
            runs=len(active),
            hold=event.stopped,
        )
        async with trio.open_nursery() as nursery:
            for run_id in active:
                nursery.start_soon(_cancel, domain, run_id)


async def _cancel(domain: Domain, run_id: str) -> None:
    try:
        await domain.cancel_run(run_id, reason="emergency stop")
    except CuelogError as exc:  # moved or ended meanwhile
        logger.info("run not cancelled", run_id=run_id, error=str(exc))
