"""The sessions and open-runs catalogs: equal to a fold of the log after a mixed workload, the
same after a rebuild from seq 0, resumed after a SIGKILL mid catch-up, and the session listing
they answer pages and filters as the listing that folds every session did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import trio

from cuelog.actors import AgentSpec, Domain, open_domain
from cuelog.actors._commands import ADMIN, Caller
from cuelog.actors._events import DOMAIN_CODEC, TERMINAL_EVENTS, RunSettled
from cuelog.actors._names import RUN, SESSION, stream_id
from cuelog.actors._run import RunState, fold_run, run_view
from cuelog.actors._session_fold import session_state_at
from cuelog.actors._sessions_catalog import (
    OpenRun,
    OpenRunsCatalog,
    OpenSession,
    SessionRow,
    SessionsCatalog,
)
from cuelog.runtime import (
    EventLog,
    ProjectionRunner,
    ProjectionState,
    ProjectionStore,
    open_event_log,
    open_projection_store,
)
from tests.actors.domain_support import make_settings, tool_line, user, wait_for_event
from tests.postgres import fresh_database

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
ASKING = AgentSpec(tools=["calculator"], approval="ask")
AGENTS = {"ask": ASKING, "other": AgentSpec(name="other")}
BOB = Caller(owner="bob", admin=False)
CAROL = Caller(owner="carol", admin=False)
CALLERS = [ADMIN, BOB, CAROL]


@asynccontextmanager
async def domain_on(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Domain, ProjectionStore]]:
    """A domain keeping its projections, over an LMDB or a PostgreSQL log."""
    if backend == "postgres":
        with fresh_database() as url:
            async with (
                open_event_log(url) as log,
                open_projection_store(url) as store,
                open_domain(log, make_settings(), agents=AGENTS, projections=store) as rt,
            ):
                yield rt, store
        return
    path = tmp_path / "log"
    async with (
        open_event_log(path) as log,
        open_projection_store(path) as store,
        open_domain(log, make_settings(), agents=AGENTS, projections=store) as rt,
    ):
        yield rt, store


async def mixed_workload(rt: Domain) -> None:
    """Completed runs for several owners, agents and end users; a patched, a reset, a deleted
    and a forked session; a run waiting for approval with a message queued behind it."""
    for n in range(6):
        caller = CALLERS[n % 3]
        agent = "default" if n % 2 else "other"
        metadata = {"user_id": f"u{n % 2}"} if n < 4 else {}
        sent = await rt.send(
            agent, [user(f"hello {n}")], session_key=f"s{n}", caller=caller, metadata=metadata
        )
        await rt.wait_run(sent.run_id, caller=caller)
        again = await rt.send(agent, [user(f"again {n}")], session_key=f"s{n}", caller=caller)
        await rt.wait_run(again.run_id, caller=caller)
    await rt.patch_session("s1", caller=BOB, metadata={"user_id": "u9"})
    await rt.patch_session("s4", metadata={"user_id": 7})  # not a string: no end user
    await rt.reset_session("s3")
    await rt.delete_session("s5", caller=CAROL)
    s0 = await rt.get_session("s0")
    await rt.fork_session("s0", rt.log.head().seq, agent_id="default")
    assert s0.messages
    waiting = await rt.send("ask", [tool_line("calculator", '{"expr": "6*7"}')], session_key="w")
    await wait_for_event(rt.log, f"run:{waiting.run_id}", "ApprovalRequested")
    queued = await rt.send("ask", [user("after")], session_key="w")
    assert queued.queued


def expected_sessions(log: EventLog) -> dict[str, SessionRow]:
    """Each live session's row, folded from its stream by the session fold."""
    out = {}
    for name in log.list_streams(f"{SESSION}:", limit=10_000):
        key = stream_id(name, SESSION)
        state = session_state_at(log, key)
        if not state.exists or state.deleted:
            continue
        records = log.read_stream(name)
        created = [r.ts for r in records if r.type == "SessionCreated"][-1]
        last_run = state.recent_runs[-1] if state.recent_runs else None
        status = "running" if last_run else None
        for record in records:
            if record.type == "RunSettled":
                settled = DOMAIN_CODEC.decode(record.type, record.data)
                assert isinstance(settled, RunSettled)
                if settled.run_id == last_run:
                    status = settled.status
        user_id = state.metadata.get("user_id")
        out[key] = SessionRow(
            key=key,
            agent_id=state.agent_id,
            owner=state.owner,
            user_id=user_id if isinstance(user_id, str) else None,
            created_at=created,
            updated_at=records[-1].ts,
            message_count=len(state.history),
            last_run=last_run,
            last_run_status=status,
            current_run=state.current_run,
            queued=[(q.run_id, len(q.messages)) for q in state.inbox],
        )
    return out


def expected_open(log: EventLog) -> tuple[dict[str, OpenRun], dict[str, OpenSession]]:
    """Runs whose stream has not ended (with the run fold's status) and sessions with work."""
    runs = {}
    for name in log.list_streams(f"{RUN}:", limit=10_000):
        records = log.read_stream(name)
        if records[-1].type in TERMINAL_EVENTS:
            continue
        run_id = stream_id(name, RUN)
        state = RunState()
        for record in records:
            state = fold_run(state, DOMAIN_CODEC.decode(record.type, record.data))
        view = run_view(run_id, state, len(records))
        runs[run_id] = OpenRun(
            session_key=view.session_key,
            status=view.status,
            pending_approvals=len(view.pending_approvals),
        )
    sessions = {}
    for name in log.list_streams(f"{SESSION}:", limit=10_000):
        key = stream_id(name, SESSION)
        session = session_state_at(log, key)
        if session.deleted or (session.current_run is None and not session.inbox):
            continue
        sessions[key] = OpenSession(
            current_run=session.current_run, queued=[q.run_id for q in session.inbox]
        )
    return runs, sessions


def rows(state: ProjectionState, prefix: bytes, kind: type[T]) -> dict[str, T]:
    decoder = msgspec.msgpack.Decoder(kind)
    return {k[len(prefix) :].decode(): decoder.decode(v) for k, v in state.scan(prefix)}


def everything(state: ProjectionState) -> list[tuple[bytes, bytes]]:
    return list(state.scan(b""))


async def caught_up(rt: Domain) -> None:
    assert rt.read_models is not None
    head = rt.log.head().seq
    for runner in rt.read_models.runners.values():
        assert await runner.wait_caught_up(head)


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_catalogs_equal_a_fold_of_the_log_and_a_rebuild(backend: str, tmp_path: Path) -> None:
    """After a mixed workload, both catalogs hold what folding the log gives; rebuilt from seq 0
    they hold the same keys and values as the live ones."""
    async with domain_on(backend, tmp_path) as (rt, store):
        await mixed_workload(rt)
        await caught_up(rt)
        log = rt.log
        sessions = store.read("sessions", lambda s: rows(s, b"k:", SessionRow))
        assert sessions == expected_sessions(log)
        assert sessions["w"].last_run_status == "running"
        assert sessions["s0"].last_run_status == "completed"
        assert sessions["s3"].message_count == 0 and "s5" not in sessions
        runs, open_sessions = expected_open(log)
        assert store.read("open_runs", lambda s: rows(s, b"r:", OpenRun)) == runs
        assert store.read("open_runs", lambda s: rows(s, b"s:", OpenSession)) == open_sessions
        assert [run.status for run in runs.values()] == ["waiting_approval"]
        assert len(open_sessions["w"].queued) == 1

        for projection in (SessionsCatalog(), OpenRunsCatalog()):
            live = store.read(projection.name, everything)
            await ProjectionRunner(log, store, projection, batch=7).rebuild()
            assert store.read(projection.name, everything) == live, projection.name


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_listing_from_the_catalog_equals_the_listing_from_the_log(
    backend: str, tmp_path: Path
) -> None:
    """Every filter, for the admin and for owners, in pages of 2: the catalog's listing gives
    the sessions, in the order, the stream-folding listing gives."""
    async with domain_on(backend, tmp_path) as (rt, _):
        await mixed_workload(rt)
        await caught_up(rt)
        read_models = rt.read_models
        filters: list[tuple[str | None, str | None]] = [
            (None, None),
            ("default", None),
            ("nope", None),
            (None, "u0"),
            (None, "u9"),
            ("other", "u0"),
        ]
        for caller in CALLERS:
            for agent_id, user_id in filters:
                where = (agent_id, user_id)
                pages: list[list[tuple[list[Any], str | None]]] = []
                for catalog in (read_models, None):
                    rt.read_models = catalog
                    cursor: str | None = None
                    got: list[tuple[list[Any], str | None]] = []
                    while True:
                        views, cursor = await rt.list_sessions(
                            caller=caller, after=cursor, limit=2, agent_id=agent_id, user_id=user_id
                        )
                        got.append(([msgspec.to_builtins(v) for v in views], cursor))
                        if cursor is None:
                            break
                    pages.append(got)
                rt.read_models = read_models
                # The same sessions in the same order; the catalog's pages are full up to the
                # last (the stream listing may end with an empty one: it saw more streams).
                listed, scanned = ([v for page, _ in got for v in page] for got in pages)
                assert listed == scanned, (caller, where)
                assert all(len(page) == 2 for page, _ in pages[0][:-1]), (caller, where)


def test_sigkill_during_catch_up_resumes_to_the_fold(tmp_path: Path) -> None:
    """A catch-up of both catalogs killed between batches resumes from its checkpoints to the
    state a fold of the log gives (no event applied twice: message counts would show it)."""
    path = tmp_path / "log"

    async def fill() -> None:
        async with open_event_log(path) as log, open_domain(log, make_settings()) as rt:
            for n in range(60):
                sent = await rt.send("default", [user(f"m{n}")], session_key=f"k{n % 20}")
                await rt.wait_run(sent.run_id)

    trio.run(fill)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.actors._catalog_process", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    for line in child.stdout:
        name, word, seq = line.split()
        if name == "sessions" and word == "at" and int(seq) >= 300:
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL

    async def resume() -> None:
        async with open_event_log(path) as log, open_projection_store(path) as store:
            head = log.head().seq
            assert 300 <= store.checkpoint("sessions").seq < head  # killed mid catch-up
            for projection in (OpenRunsCatalog(), SessionsCatalog()):
                await ProjectionRunner(log, store, projection).catch_up()
            assert store.read("sessions", lambda s: rows(s, b"k:", SessionRow)) == (
                expected_sessions(log)
            )
            runs, sessions = expected_open(log)
            assert store.read("open_runs", lambda s: rows(s, b"r:", OpenRun)) == runs
            assert store.read("open_runs", lambda s: rows(s, b"s:", OpenSession)) == sessions

    trio.run(resume)
