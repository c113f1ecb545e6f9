"""The domain in cluster mode: two nodes (two logs, two domains in one process) on one PostgreSQL
database. A node that stops renewing loses its runs to the other, which closes them as a crash
restart does; the old owner cannot append for them any more."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from cuelog.actors import AgentSpec, Domain, IdempotencyKey, open_domain
from cuelog.actors._events import ApprovalRequested, RunFailed, RunStarted
from cuelog.actors._run import RunSettings
from cuelog.runtime import ActorOwnedElsewhere, ClusterConfig, StorageFull, open_event_log
from tests.actors.domain_support import (
    SlowModel,
    decoded,
    eventually,
    make_settings,
    tool_line,
    types_of,
    user,
    wait_for_event,
)
from tests.postgres import fresh_database, run_sql

GUARD = 30
ASKING = AgentSpec(tools=["calculator"], approval="ask")


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as created:
        yield created


@asynccontextmanager
async def cluster_node(
    url: str, name: str, settings: RunSettings, *, renew: float = 0.2
) -> AsyncIterator[Domain]:
    """A domain on the shared log as node `name`; `renew` seconds between renewals (and between
    looks for orphans)."""
    cluster = ClusterConfig(node=name, lease_ttl=max(30.0, renew * 3), renew_interval=renew)
    async with (
        open_event_log(url) as log,
        open_domain(log, settings, agents={"ask": ASKING}, cluster=cluster) as rt,
    ):
        yield rt


def expire_node(url: str, node: str) -> None:
    """What a paused or dead node leads to: every lease it holds is past its expiry."""
    run_sql(
        url,
        "UPDATE cuelog_leases SET expiry = clock_timestamp() - interval '1 second' "
        "WHERE node = %s AND expiry > '-infinity'",
        [node],
    )


async def test_a_paused_owners_run_is_taken_over_closed_as_interrupted_and_its_queue_runs(
    url: str,
) -> None:
    """Node a streams run A with B queued, then stops renewing (a pause): once its leases
    expire, node b takes the run over, records it as interrupted exactly once, and runs B; node
    a, still running, is fenced off the run and is refused its session."""
    slow = SlowModel(words=100_000, delay=0.01)
    with trio.fail_after(GUARD):
        async with (
            cluster_node(url, "a", make_settings(slow), renew=60) as a,
            cluster_node(url, "b", make_settings()) as b,
        ):
            await a.send("default", [user("A")], session_key="s", run_id="run_a")
            queued = await a.send("default", [user("B")], session_key="s", run_id="run_b")
            assert queued.queued
            await wait_for_event(a.log, "run:run_a", "AssistantDelta")
            with pytest.raises(ActorOwnedElsewhere, match="node 'a'"):
                await b.get_run("run_a")
            expire_node(url, "a")
            # Queued runs are known by the node that queued them until they start.
            await wait_for_event(b.log, "run:run_b", "RunStarted")
            done_b = await b.wait_run("run_b")
            assert (done_b.status, done_b.content) == ("completed", "Echo: B")
            run_a = await b.get_run("run_a")
            assert (run_a.status, run_a.error) == ("failed", "interrupted")
            types = types_of(b.log, "run:run_a")
            assert types.count("RunStarted") == 1 and types[-1] == "RunFailed"
            [failed] = decoded(b.log, "run:run_a", RunFailed)
            assert failed.reason == "interrupted"
            assert len(decoded(b.log, "run:run_b", RunStarted)) == 1
            # a's driver was still streaming: its appends after the expiry were refused.
            version = b.log.stream_version("run:run_a")
            await trio.sleep(0.2)
            assert b.log.stream_version("run:run_a") == version
            # a's session actor is still live there; its next write is fenced (nothing of it is
            # written), and the sender hears which node has the session now.
            with pytest.raises(ActorOwnedElsewhere, match="node 'b'"):
                await a.send("default", [user("C")], session_key="s")
            with pytest.raises(ActorOwnedElsewhere, match="node 'b'"):
                await a.get_session("s")
            assert [m.content for m in (await b.get_session("s")).messages if m.role == "user"] == [
                "A",
                "B",
            ]
            stats = a.lease_statistics()
            assert stats is not None and stats.fenced >= 1


async def test_a_run_waiting_for_approval_keeps_waiting_on_its_new_owner(url: str) -> None:
    """A run waiting for approval on a node that stops renewing is taken over still waiting,
    and approving it through the new owner finishes it."""
    with trio.fail_after(GUARD):
        async with (
            cluster_node(url, "a", make_settings(), renew=60) as a,
            cluster_node(url, "b", make_settings()) as b,
        ):
            sent = await a.send("ask", [tool_line("calculator", '{"expr": "6*7"}')])
            await wait_for_event(a.log, f"run:{sent.run_id}", "ApprovalRequested")
            [request] = decoded(a.log, f"run:{sent.run_id}", ApprovalRequested)
            expire_node(url, "a")
            await eventually(lambda: request.approval_id in b.pending_approvals(), step=0.05)
            assert (await b.get_run(sent.run_id)).status == "waiting_approval"
            await b.decide_approval(
                request.approval_id, approve=True, args_digest=request.args_digest
            )
            view = await b.wait_run(sent.run_id)
            assert (view.status, view.content) == ("completed", "Tool calculator returned: 42")
            assert types_of(b.log, f"run:{sent.run_id}").count("RunFailed") == 0


async def test_a_node_shutting_down_hands_its_running_work_over(url: str) -> None:
    """A clean shutdown in the middle of a run lets its lease expire at once instead of releasing
    it: another node takes the run over within a renew interval, closes it as interrupted and
    runs the queued message."""
    slow = SlowModel(words=100_000, delay=0.01)
    with trio.fail_after(GUARD):
        async with cluster_node(url, "b", make_settings()) as b:
            async with cluster_node(url, "a", make_settings(slow)) as a:
                await a.send("default", [user("A")], session_key="s", run_id="run_a")
                await a.send("default", [user("B")], session_key="s", run_id="run_b")
                await wait_for_event(a.log, "run:run_a", "AssistantDelta")
            await wait_for_event(b.log, "run:run_b", "RunStarted")
            done_b = await b.wait_run("run_b")
            assert (done_b.status, done_b.content) == ("completed", "Echo: B")
            assert (await b.get_run("run_a")).error == "interrupted"
            assert run_sql(url, "SELECT node FROM cuelog_nodes") == [("b",)]


async def test_a_repeat_attaching_to_a_run_on_another_node_is_sent_there(url: str) -> None:
    """A request repeated (same Idempotency-Key) through node b while its run streams on node a
    is refused with a's name, to be forwarded there: only a hears of an end the log refused,
    and a's waiter is told (`StorageFull`). Once a's leases expire, b attaches to the run
    itself."""
    slow = SlowModel(words=100_000, delay=0.01)
    key = IdempotencyKey(scope="local", key="repeat-me", route="wake", digest="d1")
    with trio.fail_after(GUARD):
        async with (
            cluster_node(url, "a", make_settings(slow), renew=60) as a,
            cluster_node(url, "b", make_settings(slow)) as b,
        ):
            first = await a.send("default", [user("A")], session_key="s", idempotency=key)
            await wait_for_event(a.log, f"run:{first.run_id}", "AssistantDelta")
            with pytest.raises(ActorOwnedElsewhere, match="node 'a'"):
                await b.send("default", [user("A")], session_key="s", idempotency=key)
            a.registry.end_unrecorded(first.run_id, StorageFull("the log is full"))
            again = await a.send("default", [user("A")], session_key="s", idempotency=key)
            assert again.run_id == first.run_id
            with pytest.raises(StorageFull):
                await a.wait_sent(again)
            expire_node(url, "a")
            there = await b.send("default", [user("A")], session_key="s", idempotency=key)
            assert there.run_id == first.run_id
            assert types_of(b.log, f"run:{first.run_id}").count("RunStarted") == 1
