"""Actor placement on the PostgreSQL log: leases, fencing, renewal and release, two nodes on one
database (two logs and two actor systems in one process, each a node of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from cuelog.runtime import (
    ActorConfig,
    ActorContext,
    ActorOwnedElsewhere,
    ActorSystem,
    ClusterConfig,
    Event,
    LeaseLost,
    LeaseTable,
    LogError,
    LogFormatError,
    open_actor_system,
    open_event_log,
    open_leases,
)
from cuelog.runtime._postgres import PostgresEventLog
from tests.postgres import fresh_database, run_sql
from tests.runtime.actor_models import Add, Counted, Counter, CounterState, Get

GUARD = 20


class LoadedCounter(Counter):
    """A counter that notes, per node, each time it is loaded from the log."""

    def __init__(self, ctx: ActorContext, node: str, loads: list[tuple[str, str]]) -> None:
        super().__init__(ctx)
        self.node = node
        self.loads = loads

    async def on_rehydrated(self, state: CounterState) -> list[Event]:
        self.loads.append((self.node, self.ctx.id))
        return []


class Node:
    def __init__(self, log: PostgresEventLog, leases: LeaseTable, system: ActorSystem) -> None:
        self.log = log
        self.leases = leases
        self.system = system


@asynccontextmanager
async def node(
    url: str,
    name: str,
    loads: list[tuple[str, str]],
    *,
    ttl: float = 10.0,
    renew: float = 3.0,
    passivate_after: float = 300.0,
) -> AsyncIterator[Node]:
    cluster = ClusterConfig(
        node=name, lease_ttl=ttl, renew_interval=renew, advertise=f"http://{name}.internal"
    )
    async with (
        open_event_log(url) as log,
        open_leases(log, cluster, ["counter"]) as leases,
        open_actor_system(
            log, config=ActorConfig(passivate_after=passivate_after), placement=leases
        ) as system,
    ):
        assert isinstance(log, PostgresEventLog)
        system.register("counter", lambda ctx: LoadedCounter(ctx, name, loads))
        system.register("shared", Counter)  # not leased: live on every node that uses it
        yield Node(log, leases, system)


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as created:
        yield created


async def eventually(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds (the test's guard stops a wait that never ends)."""
    while True:
        if check():
            return
        await trio.sleep(0.05)


def expire(url: str, key: str) -> None:
    """What a paused or dead owner leads to: its lease is past its expiry."""
    run_sql(
        url,
        "UPDATE cuelog_leases SET expiry = clock_timestamp() - interval '1 second' WHERE key = %s",
        [key],
    )


async def test_a_lease_held_by_another_node_refuses_the_actor_with_its_owner(url: str) -> None:
    """Two nodes asked for the same actors (with a history) at once: each actor is loaded by
    exactly one node, the other hears who owns it and where; the owner's events are all in the
    log."""
    loads: list[tuple[str, str]] = []
    refused: dict[str, list[ActorOwnedElsewhere]] = {"a": [], "b": []}
    with trio.fail_after(GUARD):
        async with node(url, "a", loads) as a, node(url, "b", loads) as b:

            async def add(n: Node, name: str, counter: int) -> None:
                try:
                    await n.system.ref("counter", str(counter)).ask(Add(1))
                except ActorOwnedElsewhere as exc:
                    refused[name].append(exc)

            for counter in range(20):  # actors with a history
                await a.log.append(f"counter:{counter}", [Counted(by=1)])
            async with trio.open_nursery() as nursery:
                for counter in range(20):
                    nursery.start_soon(add, a, "a", counter)
                    nursery.start_soon(add, b, "b", counter)
            loaded = sorted(id_ for _, id_ in loads)
            assert loaded == sorted(str(c) for c in range(20)), "each actor loaded exactly once"
            for name, errors in refused.items():
                other = "b" if name == "a" else "a"
                for error in errors:
                    assert (error.node, error.address) == (other, f"http://{other}.internal")
            assert len(refused["a"]) + len(refused["b"]) == 20
            assert a.leases.statistics().held + b.leases.statistics().held == 20
            for counter in range(20):
                assert a.log.stream_version(f"counter:{counter}") == 2


async def test_a_new_actor_is_leased_by_its_first_write(url: str) -> None:
    """An actor with nothing in the log takes no lease to be read, so a read on one node never
    keeps another from creating it; of two nodes creating it at once, one writes and the other
    is refused with the owner."""
    loads: list[tuple[str, str]] = []
    with trio.fail_after(GUARD):
        async with node(url, "a", loads) as a, node(url, "b", loads) as b:
            assert (await b.system.ref("counter", "new").ask(Get())).total == 0
            assert not b.leases.holds("counter:new")
            assert (await a.system.ref("counter", "new").ask(Add(1))).total == 1
            assert a.leases.holds("counter:new")
            with pytest.raises(ActorOwnedElsewhere, match="node 'a'"):
                await b.system.ref("counter", "new").ask(Add(1))
            refused: list[str] = []

            async def add(n: Node, name: str, counter: int) -> None:
                try:
                    await n.system.ref("counter", f"race{counter}").ask(Add(1))
                except ActorOwnedElsewhere:
                    refused.append(name)

            async with trio.open_nursery() as nursery:
                for counter in range(20):
                    nursery.start_soon(add, a, "a", counter)
                    nursery.start_soon(add, b, "b", counter)
            assert len(refused) == 20
            for counter in range(20):
                assert a.log.stream_version(f"counter:race{counter}") == 1


async def test_a_node_that_lost_its_lease_cannot_append_for_the_actor(url: str) -> None:
    """After the owner's lease expires and another node takes the actor over, the old owner's
    appends for it are fenced off (LeaseLost, nothing written) while its other appends in the
    same group commit go through; its next message is refused with the new owner."""
    loads: list[tuple[str, str]] = []
    with trio.fail_after(GUARD):
        async with node(url, "a", loads) as a, node(url, "b", loads) as b:
            await a.system.ref("counter", "1").ask(Add(5))
            with pytest.raises(ActorOwnedElsewhere):
                await b.system.ref("counter", "1").ask(Get())
            expire(url, "counter:1")
            state = await b.system.ref("counter", "1").ask(Add(2))
            assert state.total == 7, "the new owner folded the old owner's events"
            assert run_sql(url, "SELECT node, epoch FROM cuelog_leases") == [("b", 2)]
            # A still believes it holds epoch 1: its commit fences the counter's append only.
            outcome: dict[str, object] = {}

            async def attempt(stream: str) -> None:
                try:
                    await a.log.append(stream, [Counted(by=100)])
                    outcome[stream] = "written"
                except LogError as exc:
                    outcome[stream] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(attempt, "counter:1")
                nursery.start_soon(attempt, "unleased")
            lost = outcome["counter:1"]
            assert isinstance(lost, LeaseLost) and lost.owner == "b"
            assert outcome["unleased"] == "written"
            assert a.log.stream_version("counter:1") == 2
            # A's live actor appends no more: its command is fenced (nothing written), the actor
            # is dropped, and the ask hears where the actor is now, to send it there.
            fenced = a.leases.statistics().fenced
            with pytest.raises(ActorOwnedElsewhere, match="node 'b'") as moved:
                await a.system.ref("counter", "1").ask(Add(1))
            assert moved.value.address == "http://b.internal"
            assert a.leases.statistics().fenced == fenced + 1
            assert not a.system.is_live("counter", "1")
            with pytest.raises(ActorOwnedElsewhere, match="node 'b'"):
                await a.system.ref("counter", "1").ask(Add(1))
            assert a.log.stream_version("counter:1") == 2
            assert (await b.system.ref("counter", "1").ask(Get())).total == 7


async def test_an_expired_lease_nobody_took_is_renewed_or_taken_back(url: str) -> None:
    """An owner whose lease merely expired (nobody took it) is fenced until it takes the lease
    again: the fenced message (nothing of it written) is sent once more, a new incarnation
    takes the lease at a new epoch and the actor goes on where it was."""
    loads: list[tuple[str, str]] = []
    with trio.fail_after(GUARD):
        async with node(url, "a", loads) as a:
            await a.system.ref("counter", "1").ask(Add(1))
            expire(url, "counter:1")
            assert (await a.system.ref("counter", "1").ask(Add(1))).total == 2
            assert a.leases.statistics().fenced == 1
            assert run_sql(url, "SELECT node, epoch FROM cuelog_leases") == [("a", 2)]
            assert loads == [("a", "1"), ("a", "1")]
            assert a.log.stream_version("counter:1") == 2


async def test_renewal_keeps_leases_and_drops_the_actors_of_leases_taken_over(url: str) -> None:
    """Renewals keep a held lease alive well past its TTL; when another node takes a lease over
    (as after a pause), the next renewal finds it and the actor stops here."""
    loads: list[tuple[str, str]] = []
    with trio.fail_after(GUARD):
        async with node(url, "a", loads, ttl=0.6, renew=0.15) as a:
            await a.system.ref("counter", "1").ask(Add(1))
            await a.system.ref("counter", "2").ask(Add(1))
            await trio.sleep(1.5)
            live = run_sql(
                url, "SELECT key FROM cuelog_leases WHERE expiry > clock_timestamp() ORDER BY key"
            )
            assert live == [("counter:1",), ("counter:2",)]
            assert a.leases.statistics().renewals >= 3
            heartbeat = run_sql(
                url,
                "SELECT address, heartbeat > clock_timestamp() - interval '1 second' "
                "FROM cuelog_nodes WHERE node = 'a'",
            )
            assert heartbeat == [("http://a.internal", True)]
            run_sql(
                url,
                "UPDATE cuelog_leases SET node = 'b', epoch = epoch + 1 WHERE key = 'counter:2'",
            )
            await eventually(lambda: not a.system.is_live("counter", "2"))
            assert a.system.is_live("counter", "1")
            assert not a.leases.holds("counter:2") and a.leases.statistics().lost == 1


async def test_passivation_and_shutdown_release_leases(url: str) -> None:
    """A passivated actor's lease is released, so another node takes it at once without waiting
    for the TTL; a clean shutdown releases the rest and leaves the node registry."""
    loads: list[tuple[str, str]] = []
    with trio.fail_after(GUARD):
        async with node(url, "a", loads, passivate_after=0.2) as a:
            await a.system.ref("counter", "1").ask(Add(1))
            await eventually(lambda: not a.system.is_live("counter", "1"))
            released = "SELECT expiry = '-infinity' FROM cuelog_leases"
            await eventually(lambda: run_sql(url, released) == [(True,)])
            await eventually(lambda: a.leases.statistics().released == 1)
            async with node(url, "b", loads) as b:
                assert (await b.system.ref("counter", "1").ask(Add(1))).total == 2
                await b.system.ref("counter", "2").ask(Add(1))
        rows = run_sql(
            url, "SELECT key, node, expiry = '-infinity' FROM cuelog_leases ORDER BY key"
        )
        assert rows == [("counter:1", "b", True), ("counter:2", "b", True)]
        assert run_sql(url, "SELECT node FROM cuelog_nodes") == []


async def test_orphaned_leases_are_listed_for_takeover(url: str) -> None:
    """A lease that expired without being released (its node died) is an orphan any other node
    can list; released leases and live ones are not."""
    loads: list[tuple[str, str]] = []
    with trio.fail_after(GUARD):
        async with node(url, "a", loads) as a, node(url, "b", loads) as b:
            for counter in ("1", "2", "3"):
                await a.system.ref("counter", counter).ask(Add(1))
            expire(url, "counter:2")
            run_sql(url, "UPDATE cuelog_leases SET expiry = '-infinity' WHERE key = 'counter:3'")
            assert await b.leases.orphaned("counter") == ["counter:2"]
            assert await b.leases.orphaned("other") == []
            await b.system.ref("counter", "2").ask(Get())
            assert await b.leases.orphaned("counter") == []
            assert b.leases.statistics().takeovers == 1


async def test_cluster_mode_needs_a_writable_postgresql_log(url: str) -> None:
    """Placement is refused on a log other nodes cannot share or write."""
    cluster = ClusterConfig(node="a")
    async with open_event_log("memory:") as memory:
        with pytest.raises(LogError, match="PostgreSQL"):
            async with open_leases(memory, cluster, ["counter"]):
                pass
    async with open_event_log(url):
        pass
    async with open_event_log(url, readonly=True) as reader:
        with pytest.raises(LogError, match="for writing"):
            async with open_leases(reader, cluster, ["counter"]):
                pass
    with pytest.raises(ValueError, match="node name"):
        ClusterConfig(node="bad name")
    with pytest.raises(ValueError, match="renew_interval"):
        ClusterConfig(node="a", lease_ttl=1, renew_interval=2)


async def test_a_schema_2_log_gets_the_lease_tables_when_opened_for_writing(url: str) -> None:
    """A database from before leases is refused read-only and migrated by a writer."""
    async with open_event_log(url) as log:
        await log.append("s", [Counted(by=1)])
    run_sql(url, "DROP TABLE cuelog_leases, cuelog_nodes")
    run_sql(url, "UPDATE cuelog_meta SET value = '2' WHERE key = 'schema'")
    with pytest.raises(LogFormatError, match="schema version 2; open it once for writing"):
        async with open_event_log(url, readonly=True):
            pass
    loads: list[tuple[str, str]] = []
    async with node(url, "a", loads) as a:
        assert (await a.system.ref("counter", "9").ask(Add(1))).total == 1
    assert run_sql(url, "SELECT value FROM cuelog_meta WHERE key = 'schema'") == [(b"4",)]


async def test_an_unleased_actor_live_on_two_nodes_reads_the_others_writes(url: str) -> None:
    """An actor of a kind that is not leased may be live on several nodes: each catches up with
    the others' events before a command, so none decides or answers from a stale state."""
    loads: list[tuple[str, str]] = []
    with trio.fail_after(GUARD):
        async with node(url, "a", loads) as a, node(url, "b", loads) as b:
            assert (await a.system.ref("shared", "x").ask(Add(1))).total == 1
            assert (await b.system.ref("shared", "x").ask(Add(2))).total == 3
            assert (await a.system.ref("shared", "x").ask(Get())).total == 3
            assert (await a.system.ref("shared", "x").ask(Add(4))).total == 7
            assert a.system.is_live("shared", "x") and b.system.is_live("shared", "x")
            assert a.leases.statistics().held == 0


async def test_a_service_runs_on_one_node_and_stops_at_once_when_its_lease_is_lost(
    url: str,
) -> None:
    """`run_service`: the first node to take `service:s` runs it, the other waits; when the
    lease is taken from the holder (as after a pause) the holder's service is cancelled at its
    next renewal; once that lease expires one node runs it again; a holder that stops hands it
    over to the other at once. Never two at a time."""
    loads: list[tuple[str, str]] = []
    running: dict[str, int] = {"a": 0, "b": 0}
    most = [0]

    def service(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            running[name] += 1
            most[0] = max(most[0], sum(running.values()))
            try:
                await trio.sleep_forever()
            finally:
                running[name] -= 1

        return run

    with trio.fail_after(GUARD):
        async with (
            node(url, "a", loads, ttl=0.6, renew=0.15) as a,
            trio.open_nursery() as nursery,
        ):
            on_a = trio.CancelScope()

            async def run_on_a() -> None:
                with on_a:
                    await a.leases.run_service("s", service("a"))

            nursery.start_soon(run_on_a)
            await eventually(lambda: running["a"] == 1)
            async with (
                node(url, "b", loads, ttl=0.6, renew=0.15) as b,
                trio.open_nursery() as on_b,
            ):
                on_b.start_soon(b.leases.run_service, "s", service("b"))
                await trio.sleep(1.0)  # several renewals and retries
                assert running == {"a": 1, "b": 0}
                assert a.leases.services() == ["s"] and b.leases.services() == []
                assert a.leases.statistics().services == ("s",)
                # Taken from a behind its back: a stops it at its next renewal.
                run_sql(
                    url,
                    "UPDATE cuelog_leases SET node = 'c', epoch = epoch + 1, "
                    "expiry = clock_timestamp() + interval '1 hour' WHERE key = 'service:s'",
                )
                with trio.fail_after(1.0):
                    await eventually(lambda: running["a"] == 0)
                assert a.leases.services() == [] and running["b"] == 0
                expire(url, "service:s")  # c died: one of a and b takes it over
                await eventually(lambda: sum(running.values()) == 1)
                if running["a"]:  # a stops its service: b takes it at its next try
                    on_a.cancel()
                    await eventually(lambda: running["b"] == 1)
                    return
                assert b.leases.services() == ["s"]
                on_b.cancel_scope.cancel()
            with trio.fail_after(1.0):  # b handed it over as it stopped: no TTL to wait out
                await eventually(lambda: running["a"] == 1)
            assert most[0] == 1
            nursery.cancel_scope.cancel()
