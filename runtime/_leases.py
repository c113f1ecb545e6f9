"""Actor placement for several processes on one PostgreSQL log: leases, fencing, node registry.

Each process is a node with a name. Before a node rehydrates an actor of a leased kind (the
domain leases sessions and runs) that has a history, it takes the actor's lease (a new actor,
with nothing to load, takes it before its first append): a row of `cuelog_leases` naming the
node, an epoch and an expiry. The lease key is the actor's stream name (`<kind>:<id>`), so an
append maps to the actor it writes for without asking anyone: every stream of a leased kind is
one actor's stream.

    cuelog_leases  key -> node, epoch, expiry   (expiry '-infinity': released)
    cuelog_nodes   node -> internal address, heartbeat

- **Taking** is one statement: insert the row, or take it over (epoch + 1) when it is this
  node's own or has expired; otherwise the owner and its address are read and the caller gets
  `ActorOwnedElsewhere`. Two nodes taking one key at once queue on the row: one wins.
- **Fencing**: while this node holds leases, every group commit of the log reads the lease rows of
  the leased streams it writes, `FOR SHARE`, in the commit's transaction. A part whose lease is
  not this node's at the epoch it took (or has expired) fails that append with `LeaseLost` and
  writes nothing; the group's other appends go on. The share lock makes a takeover wait for the
  commit, and the new owner rehydrates after it: no write can slip in behind a takeover.
  A stream of a leased kind this node holds no lease for may be written only while no other live
  node holds it (a session creating its next run's stream, say).
- **Renewing**: one statement every `renew_interval` extends every held lease and the node's
  heartbeat; a lease that no longer matches (taken over while this process was paused) is
  reported lost, and the actor system drops the actor.
- **Services**: a process-wide service (the webhook sender, the loop scheduler, trace export)
  runs on one node at a time, the holder of its singleton lease `service:<name>` (`run_service`).
  The others try to take it every `renew_interval`, so a dead holder's service moves within
  `lease_ttl + renew_interval`. A node whose renewal finds the lease taken over, or that could not
  renew it for `lease_ttl`, stops the service at once.
- **Releasing**: a passivated actor's lease is released (expiry '-infinity') in a batch shortly
  after, as are idle actors' on a clean shutdown. A lease that expired without being released is
  an orphan: its node died with the actor live, or shut down while the actor was at work (those
  leases are handed over: they expire at once). Any node may take an orphan over (`orphaned`).

Expiry is PostgreSQL's clock (`clock_timestamp()`), never a node's, so nodes' clocks need not
agree. Lock order: the commit locks the head row, then lease rows in key order; renewals lock
their rows in key order too, so the two never deadlock.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import msgspec
import structlog
import trio

from cuelog.runtime._errors import ActorOwnedElsewhere, LeaseLost, LogError, LogUnavailable

if TYPE_CHECKING:
    import psycopg  # imported where used: a server without cluster mode never loads it

    from cuelog.runtime._pending import PendingAppend

log = structlog.get_logger("cuelog.leases")
T = TypeVar("T")

# The schema migration that adds the tables (see cuelog.runtime._postgres).
CREATE_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS cuelog_leases (
        key text COLLATE "C" PRIMARY KEY,
        node text NOT NULL,
        epoch bigint NOT NULL,
        expiry timestamptz NOT NULL)""",
    # Orphans (expired, not released) are found without reading every lease ever taken.
    """CREATE INDEX IF NOT EXISTS cuelog_leases_expiring ON cuelog_leases (expiry)
        WHERE expiry > '-infinity'""",
    """CREATE TABLE IF NOT EXISTS cuelog_nodes (
        node text PRIMARY KEY,
        address text NOT NULL,
        heartbeat timestamptz NOT NULL)""",
)

NODE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_RELEASE_DELAY: Final = 0.05  # passivations this close together are released in one statement
_RETRY_SECONDS: Final = 0.5
SERVICE: Final = "service"  # the kind of singleton leases: `service:<name>`


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """This process as a node of a cluster sharing one PostgreSQL log. Durations in seconds."""

    node: str
    lease_ttl: float = 10.0
    renew_interval: float = 3.0
    advertise: str = ""  # the internal address other nodes forward requests to

    def __post_init__(self) -> None:
        if NODE_RE.fullmatch(self.node) is None:
            raise ValueError(
                f"node name {self.node!r} must be 1-63 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
        if not 0 < self.renew_interval < self.lease_ttl:
            raise ValueError("renew_interval must be above 0 and below lease_ttl")


class LeaseStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for health and metrics; totals count since the node started."""

    node: str
    held: int
    acquired: int
    takeovers: int
    refused: int
    released: int
    lost: int
    fenced: int
    renewals: int
    renew_failures: int
    services: tuple[str, ...] = ()  # process-wide services running here (their leases held)


_ACQUIRE: Final = """
WITH prev AS (SELECT node FROM cuelog_leases WHERE key = %(key)s)
INSERT INTO cuelog_leases AS l (key, node, epoch, expiry)
VALUES (%(key)s, %(node)s, 1, clock_timestamp() + %(ttl)s * interval '1 second')
ON CONFLICT (key) DO UPDATE SET node = EXCLUDED.node, epoch = l.epoch + 1, expiry = EXCLUDED.expiry
WHERE l.node = EXCLUDED.node OR l.expiry <= clock_timestamp()
RETURNING l.epoch, (SELECT node FROM prev)
"""

_OWNER: Final = """
SELECT l.node, coalesce(n.address, ''), l.expiry > clock_timestamp() FROM cuelog_leases l
LEFT JOIN cuelog_nodes n ON n.node = l.node WHERE l.key = %s
"""

_RENEW: Final = """
WITH beat AS (
    INSERT INTO cuelog_nodes (node, address, heartbeat) VALUES (%(node)s, %(address)s,
    clock_timestamp()) ON CONFLICT (node) DO UPDATE SET address = EXCLUDED.address,
    heartbeat = EXCLUDED.heartbeat),
mine AS (
    SELECT l.key FROM cuelog_leases l
    JOIN unnest(%(keys)s::text[], %(epochs)s::bigint[]) AS h(key, epoch)
    ON l.key = h.key AND l.epoch = h.epoch
    WHERE l.node = %(node)s ORDER BY l.key FOR UPDATE OF l)
UPDATE cuelog_leases SET expiry = clock_timestamp() + %(ttl)s * interval '1 second'
WHERE key IN (SELECT key FROM mine) RETURNING key
"""

_RELEASE: Final = """
WITH mine AS (
    SELECT l.key FROM cuelog_leases l
    JOIN unnest(%(keys)s::text[], %(epochs)s::bigint[]) AS h(key, epoch)
    ON l.key = h.key AND l.epoch = h.epoch
    WHERE l.node = %(node)s ORDER BY l.key FOR UPDATE OF l)
UPDATE cuelog_leases SET expiry = '-infinity' WHERE key IN (SELECT key FROM mine)
"""

_HAND_OVER: Final = """
WITH mine AS (
    SELECT l.key FROM cuelog_leases l
    JOIN unnest(%(keys)s::text[], %(epochs)s::bigint[]) AS h(key, epoch)
    ON l.key = h.key AND l.epoch = h.epoch
    WHERE l.node = %(node)s ORDER BY l.key FOR UPDATE OF l)
UPDATE cuelog_leases SET expiry = clock_timestamp() WHERE key IN (SELECT key FROM mine)
"""

_ORPHANS: Final = """
SELECT key FROM cuelog_leases WHERE expiry > '-infinity' AND expiry <= clock_timestamp()
AND key LIKE %s ORDER BY expiry LIMIT %s
"""

_FENCE: Final = """
SELECT key, node, epoch, expiry > clock_timestamp() FROM cuelog_leases
WHERE key = ANY(%s) ORDER BY key FOR SHARE
"""


@final
class LeaseTable:
    """This node's leases. Open it with `open_leases`; the actor system takes and releases
    leases through it, the log's commits fence through it."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        config: ClusterConfig,
        kinds: Iterable[str],
    ) -> None:
        self.config = config
        self.node = config.node
        self.kinds = frozenset(kinds)
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._limiter = trio.CapacityLimiter(1)
        # key -> the epoch this node holds it at. Read by the log's writer thread (one `get`
        # per key, atomic under the GIL), changed only on the trio thread.
        self.held: dict[str, int] = {}
        self._releases: dict[str, int] = {}
        self._release_wanted = trio.Event()
        # Set by the actor system: called with the keys a renewal found taken over.
        self.on_lost: Callable[[list[str]], None] | None = None
        # Service key -> the scope its service runs in while this node holds its lease.
        self._services: dict[str, trio.CancelScope] = {}
        self._renewed_at = 0.0  # trio time when the last renewal that worked began
        self._acquired = 0
        self._takeovers = 0
        self._refused = 0
        self._released = 0
        self._lost = 0
        self._fenced = 0
        self._renewals = 0
        self._renew_failures = 0

    # -- what the actor system calls -----------------------------------------------------------

    def covers(self, key: str) -> bool:
        """Whether `key` (a stream name) is the stream of an actor of a leased kind."""
        kind, colon, _ = key.partition(":")
        return bool(colon) and kind in self.kinds

    def holds(self, key: str) -> bool:
        return key in self.held

    async def acquire(self, key: str) -> int:
        """Take the lease on `key` for this node (a new epoch); raise `ActorOwnedElsewhere`
        when another node holds it and has not let it expire."""
        self._releases.pop(key, None)
        row = await self._run(self._acquire_sync, key)
        if isinstance(row, ActorOwnedElsewhere):
            self._refused += 1
            raise row
        epoch, previous = row
        self.held[key] = epoch
        self._acquired += 1
        if previous is not None and previous != self.node:
            self._takeovers += 1
            log.info("lease taken over", key=key, previous_node=previous, epoch=epoch)
        return epoch

    async def owner(self, key: str) -> ActorOwnedElsewhere | None:
        """Another node that holds `key`'s lease now, with its address; None when nobody else
        does (the lease expired, was released, or is this node's)."""
        row = await self._run(self._owner_sync, key)
        if row is None or row.node == self.node:
            return None
        return row

    def release_soon(self, key: str) -> None:
        """Give the lease on `key` up (the actor passivated): forgotten now, released in the
        next batch. Synchronous, so the actor system can call it while retiring an actor."""
        epoch = self.held.pop(key, None)
        if epoch is not None:
            self._releases[key] = epoch
            self._release_wanted.set()

    def forget(self, key: str) -> None:
        """Drop a lease this node lost, without releasing it: if it merely expired, it stays an
        orphan so a node recovers what the actor left in flight."""
        if self.held.pop(key, None) is not None:
            self._lost += 1

    async def orphaned(self, kind: str, limit: int = 100) -> list[str]:
        """Keys of `kind` whose lease expired without being released (its node died), oldest
        first, except those this node holds."""
        keys = await self._run(self._orphans_sync, f"{kind}:%", limit)
        return [key for key in keys if key not in self.held]

    def services(self) -> list[str]:
        """The services (by name) running on this node because it holds their lease."""
        return sorted(key.removeprefix(f"{SERVICE}:") for key in self._services)

    async def run_service(self, name: str, service: Callable[[], Awaitable[object]]) -> None:
        """Run `service` whenever this node holds the singleton lease `service:<name>`, until
        cancelled: take the lease (or try again every `renew_interval`), run the service while
        the lease is held (it is renewed with the others), and cancel it at once when the lease
        is lost. A service that returns by itself keeps its lease until the node stops; cancelled,
        it releases the lease."""
        key = f"{SERVICE}:{name}"
        interval = self.config.renew_interval
        while True:
            try:
                await self.acquire(key)
            except ActorOwnedElsewhere:
                await trio.sleep(interval)
                continue
            except LogError as exc:
                log.warning("cannot take a service lease", service=name, error=str(exc))
                await trio.sleep(interval)
                continue
            log.info("service runs on this node", service=name, node=self.node)
            with trio.CancelScope() as scope:
                self._services[key] = scope
                try:
                    await service()
                    await trio.sleep_forever()
                finally:
                    self._services.pop(key, None)
                    self.release_soon(key)  # stopped here (not lost): others may take it now
            log.warning("service stopped: its lease was lost", service=name, node=self.node)
            await trio.sleep(interval)

    def _lose_services(self, keys: Iterable[str]) -> None:
        for key in keys:
            scope = self._services.pop(key, None)
            if scope is not None:
                self.forget(key)
                scope.cancel()

    def statistics(self) -> LeaseStatistics:
        return LeaseStatistics(
            node=self.node,
            held=len(self.held),
            acquired=self._acquired,
            takeovers=self._takeovers,
            refused=self._refused,
            released=self._released,
            lost=self._lost,
            fenced=self._fenced,
            renewals=self._renewals,
            renew_failures=self._renew_failures,
            services=tuple(self.services()),
        )

    # -- what the log's commit calls (in its writer thread) ------------------------------------

    def fence(
        self, cur: psycopg.Cursor[Any], batch: Sequence[PendingAppend]
    ) -> dict[str, LeaseLost]:
        """Lock the lease rows of the leased streams `batch` writes and return the streams this
        node may not write now, each with its error."""
        keys = sorted(
            {part[0] for request in batch for part in request.parts if self.covers(part[0])}
        )
        if not keys:
            return {}
        cur.execute(_FENCE, [keys])
        rows = {str(key): (str(node), int(epoch), bool(live)) for key, node, epoch, live in cur}
        bad: dict[str, LeaseLost] = {}
        held = self.held
        for key in keys:
            row = rows.get(key)
            epoch = held.get(key)
            if epoch is not None:
                if row is None or row[0] != self.node or row[1] != epoch or not row[2]:
                    owner = row[0] if row is not None and row[2] and row[0] != self.node else None
                    bad[key] = LeaseLost(key, owner)
            elif row is not None and row[2] and row[0] != self.node:
                bad[key] = LeaseLost(key, row[0])
        self._fenced += len(bad)
        return bad

    # -- the statements ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _execute(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """One statement on the lease connection (autocommit); reconnect once if it was lost."""
        import psycopg

        for attempt in (1, 2):
            conn = self._conn or self._connect()
            self._conn = conn
            try:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError as exc:
                with suppress(psycopg.Error):
                    conn.close()
                self._conn = None
                if attempt == 2:
                    raise LogUnavailable(f"the lease table is unreachable: {exc}") from None
            except psycopg.Error as exc:
                raise LogError(f"lease statement failed: {exc}") from None
        raise AssertionError("unreachable")

    def _acquire_sync(self, key: str) -> tuple[int, str | None] | ActorOwnedElsewhere:
        rows = self._execute(
            _ACQUIRE, {"key": key, "node": self.node, "ttl": self.config.lease_ttl}
        )
        if rows:
            return int(rows[0][0]), rows[0][1]
        return self._owner_sync(key, live=False) or ActorOwnedElsewhere(key, "?", "")

    def _owner_sync(self, key: str, *, live: bool = True) -> ActorOwnedElsewhere | None:
        """The lease's node and its address; None without a row, or (`live`) when it expired."""
        rows = self._execute(_OWNER, [key])
        if not rows or (live and not rows[0][2]):
            return None
        return ActorOwnedElsewhere(key, str(rows[0][0]), str(rows[0][1]))

    def _orphans_sync(self, pattern: str, limit: int) -> list[str]:
        return [str(key) for (key,) in self._execute(_ORPHANS, [pattern, limit])]

    def _renew_sync(self, held: dict[str, int]) -> set[str]:
        keys = sorted(held)
        rows = self._execute(
            _RENEW,
            {
                "node": self.node,
                "address": self.config.advertise,
                "keys": keys,
                "epochs": [held[key] for key in keys],
                "ttl": self.config.lease_ttl,
            },
        )
        return {str(key) for (key,) in rows}

    def _release_sync(self, releases: dict[str, int], sql: str = _RELEASE) -> None:
        keys = sorted(releases)
        self._execute(
            sql, {"node": self.node, "keys": keys, "epochs": [releases[key] for key in keys]}
        )

    def _leave_sync(self) -> None:
        self._execute("DELETE FROM cuelog_nodes WHERE node = %s", [self.node])

    # -- the maintenance task ------------------------------------------------------------------

    async def _renew(self) -> None:
        held = dict(self.held)
        started = trio.current_time()
        try:
            renewed = await self._run(self._renew_sync, held)
        except LogError as exc:
            self._renew_failures += 1
            log.warning("cannot renew leases", error=str(exc), held=len(held))
            if self._services and trio.current_time() - self._renewed_at >= self.config.lease_ttl:
                # Unrenewed for a whole TTL: another node may hold them now.
                log.warning("services stopped: their leases could not be renewed")
                self._lose_services(list(self._services))
            return
        self._renewals += 1
        self._renewed_at = started
        # Lost: held when the renewal started, still held at that epoch, and not renewed.
        lost = [k for k, e in held.items() if k not in renewed and self.held.get(k) == e]
        if lost:
            services = [key for key in lost if key in self._services]
            self._lose_services(services)
            lost = [key for key in lost if key not in services]
        if lost:
            for key in lost:
                self.forget(key)
            log.warning("leases lost to other nodes", count=len(lost), first=lost[0])
            if self.on_lost is not None:
                self.on_lost(lost)

    async def _flush_releases(self) -> None:
        releases, self._releases = self._releases, {}
        if not releases:
            return
        try:
            await self._run(self._release_sync, releases)
        except LogError as exc:
            # They expire by themselves; other nodes then see them as orphans and look.
            log.warning("cannot release leases", error=str(exc), count=len(releases))
            return
        self._released += len(releases)

    async def _maintain(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        interval = self.config.renew_interval
        next_renew = trio.current_time() + interval
        task_status.started()
        while True:
            with trio.move_on_at(next_renew):
                await self._release_wanted.wait()
                await trio.sleep(_RELEASE_DELAY)
            self._release_wanted = trio.Event()
            await self._flush_releases()
            if trio.current_time() >= next_renew:
                await self._renew()
                next_renew = trio.current_time() + interval

    async def _start(self) -> None:
        """Register the node (its address and a first heartbeat)."""
        self._renewed_at = trio.current_time()
        await self._run(self._renew_sync, {})

    async def _stop(self) -> None:
        """Release the leases of actors that passivated, hand over the rest (actors the shutdown
        cut short: their leases expire now, so other nodes take their work over at once), and
        leave the node registry."""
        await self._flush_releases()
        held, self.held = self.held, {}
        if held:
            try:
                await self._run(self._release_sync, held, _HAND_OVER)
            except LogError as exc:
                log.warning("cannot hand leases over", error=str(exc), count=len(held))
            else:
                log.info("leases handed over", count=len(held))
        with suppress(LogError):
            await self._run(self._leave_sync)
        conn, self._conn = self._conn, None
        if conn is not None:
            import psycopg

            with suppress(psycopg.Error):
                conn.close()


@asynccontextmanager
async def open_leases(
    log_: object, config: ClusterConfig, kinds: Iterable[str]
) -> AsyncIterator[LeaseTable]:
    """Run this process as node `config.node` of the cluster sharing the PostgreSQL log `log_`,
    leasing actors of `kinds`, until the block exits (then every lease is released).

    While open, the log fences its appends through the table (see the module docstring).
    """
    from cuelog.runtime._postgres import PostgresEventLog, connect_writer

    if not isinstance(log_, PostgresEventLog):
        raise LogError("cluster mode needs the PostgreSQL log (--log postgresql://…)")
    if log_.readonly:
        raise LogError("cluster mode needs the log opened for writing")
    table = LeaseTable(lambda: connect_writer(log_.url), config, kinds)
    await table._start()
    log_.fence = table
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(table._maintain)
            try:
                yield table
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await table._stop()
        log_.fence = None
