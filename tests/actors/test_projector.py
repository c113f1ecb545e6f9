"""The projector process: it takes the read models over from the server's event loop once it
has caught up, keeps them equal to a fold of the log (what a rebuild from seq 0 gives), answers
a reader waiting for the head at once, is replaced when it dies (the server applying inline
meanwhile, nothing applied twice or skipped), and "auto" starts one only once the read models
cost the server something."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from cuelog.actors import Domain, _projector, domain_projections, open_domain
from cuelog.actors._projector import Projector, ProjectorMode
from cuelog.actors._sessions_catalog import OpenRun, OpenSession, SessionRow
from cuelog.runtime import (
    MemoryProjectionStore,
    ProjectionRunner,
    ProjectionStore,
    open_event_log,
    open_projection_store,
)
from tests.actors.domain_support import make_settings, user
from tests.actors.test_sessions_catalog import (
    AGENTS,
    caught_up,
    everything,
    expected_open,
    expected_sessions,
    mixed_workload,
    rows,
)
from tests.support import exited


@asynccontextmanager
async def domain_with(
    tmp_path: Path, projector: ProjectorMode
) -> AsyncIterator[tuple[Domain, ProjectionStore]]:
    path = tmp_path / "log"
    async with (
        open_event_log(path) as log,
        open_projection_store(path) as store,
        open_domain(
            log, make_settings(), agents=AGENTS, projections=store, projector=projector
        ) as rt,
    ):
        yield rt, store


def projector_of(rt: Domain) -> Projector:
    assert rt.read_models is not None and rt.read_models.projector is not None
    return rt.read_models.projector


def taken_over(projector: Projector) -> bool:
    return projector.through_process


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 (another process moves it)
            await trio.sleep(0.02)


async def chats(rt: Domain, text: str, count: int = 5) -> None:
    for m in range(count):
        sent = await rt.send("default", [user(f"{text} {m}")])
        await rt.wait_run(sent.run_id)


def replaced(projector: Projector, pid: int) -> bool:
    """Another projector than `pid` has taken over."""
    return projector.pid not in (None, pid) and projector.through_process


async def assert_equal_to_a_rebuild(rt: Domain, store: ProjectionStore) -> None:
    """Every read model holds what folding the whole log from seq 0 gives."""
    await caught_up(rt)
    rebuilt = MemoryProjectionStore()
    for projection in domain_projections():
        await ProjectionRunner(rt.log, rebuilt, projection).rebuild()
        assert store.read(projection.name, everything) == rebuilt.read(
            projection.name, everything
        ), projection.name


async def test_a_projector_process_takes_the_read_models_over_and_keeps_them_exact(
    tmp_path: Path,
) -> None:
    """Once the projector reports every projection live, the server applies no batch itself;
    after a mixed workload the catalogs equal the log's fold and a rebuild, and a reader that
    waits for the head is answered without waiting out the projector's gathering pause."""
    async with domain_with(tmp_path, "process") as (rt, store):
        projector = projector_of(rt)
        await until(lambda: projector.through_process)
        assert projector.pid is not None and projector.starts == 1
        applied_here = store.apply_seconds
        await mixed_workload(rt)
        await caught_up(rt)
        assert store.apply_seconds == applied_here  # every batch was the projector's
        log = rt.log
        assert store.read("sessions", lambda s: rows(s, b"k:", SessionRow)) == expected_sessions(
            log
        )
        runs, open_sessions = expected_open(log)
        assert store.read("open_runs", lambda s: rows(s, b"r:", OpenRun)) == runs
        assert store.read("open_runs", lambda s: rows(s, b"s:", OpenSession)) == open_sessions
        await assert_equal_to_a_rebuild(rt, store)
        assert all(s.phase == "live" and s.lag == 0 for s in rt.read_models.statuses())  # type: ignore[union-attr]

        # Fresh reads: each run is listed right after it ends, well inside the gathering pause.
        assert rt.read_models is not None
        for n in range(5):
            sent = await rt.send("default", [user(f"fresh {n}")], session_key=f"fresh{n}")
            await rt.wait_run(sent.run_id)
            started = trio.current_time()
            row = await rt.read_models.row_of(sent.run_id)
            assert row is not None and row.status == "completed"
            assert trio.current_time() - started < 1.0
        assert rt.read_models.cpu_seconds() > 0  # the projector's CPU is counted


async def test_a_killed_projector_is_replaced_and_nothing_is_applied_twice_or_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the projector between runs and during them: the server applies inline until
    the next one has caught up, and the read models still equal a rebuild of the log (a
    double-applied run would count its tokens twice; a skipped one would be missing)."""
    monkeypatch.setattr(_projector, "RESTART_MIN", 0.1)
    async with domain_with(tmp_path, "process") as (rt, store):
        projector = projector_of(rt)
        for kill in range(3):
            await until(lambda: projector.through_process)
            pid = projector.pid
            assert pid is not None
            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(chats, rt, f"k{kill} {n}")
                await trio.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
            await until(functools.partial(replaced, projector, pid))
        assert projector.starts == 4
        await assert_equal_to_a_rebuild(rt, store)


async def test_a_stuck_projector_is_killed_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A projector that stops answering (SIGSTOP) while the log grows is killed after
    `STALL_SECONDS` of silence; the server applies meanwhile, and a new projector takes over."""
    monkeypatch.setattr(_projector, "STALL_SECONDS", 0.5)
    monkeypatch.setattr(_projector, "RESTART_MIN", 0.1)
    async with domain_with(tmp_path, "process") as (rt, store):
        projector = projector_of(rt)
        await until(lambda: projector.through_process)
        pid = projector.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await chats(rt, "while stopped", count=3)
            await until(functools.partial(replaced, projector, pid))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        assert exited(pid)
        await chats(rt, "after", count=3)
        await assert_equal_to_a_rebuild(rt, store)


async def test_auto_moves_the_read_models_to_a_process_only_when_they_cost_something(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "auto" starts no projector while the read models are idle, and one once they have
    taken `AUTO_SHARE` of a core over a window."""
    monkeypatch.setattr(_projector, "AUTO_WINDOW", 0.3)
    async with domain_with(tmp_path, "auto") as (rt, store):
        projector = projector_of(rt)
        await trio.sleep(1.0)  # idle: a few windows with nothing applied
        assert projector.starts == 0 and not taken_over(projector)
        monkeypatch.setattr(_projector, "AUTO_SHARE", 1e-6)
        with trio.fail_after(30):
            while not taken_over(projector):
                sent = await rt.send("default", [user("busy")])
                await rt.wait_run(sent.run_id)
        assert projector.starts == 1
        await assert_equal_to_a_rebuild(rt, store)
