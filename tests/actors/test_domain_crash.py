"""SIGKILL a process running the domain, then restart on the same log: work is closed or resumed,
also when the open-runs catalog recovery reads is far behind the log (it catches up first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from cuelog.actors._events import RunFailed
from cuelog.actors._sessions_catalog import OpenRunsCatalog
from cuelog.runtime import open_event_log, open_projection_store
from tests.actors.domain_support import decoded, make_settings, runtime_at, types_of

ROOT = Path(__file__).resolve().parents[2]


async def run_until(path: Path, mode: str, line: str) -> None:
    """Start the crash helper, wait (at most a minute) until it prints `line`, then SIGKILL it."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.actors._crash_runtime", str(path), mode],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    got = b""
    try:
        with trio.move_on_after(60):
            while not got.endswith(b"\n"):
                chunk = await proc.stdout.receive_some()
                if not chunk:
                    break
                got += chunk
    finally:
        proc.kill()
        await proc.wait()
    assert got.decode() == f"{line}\n", f"helper did not get there: {got!r}"
    assert proc.returncode == -9


async def rewind_open_runs(path: Path, lagging: bool) -> None:
    """With `lagging`, put the open-runs catalog back to the state it had when only the first
    half of the log was written (its checkpoint there)."""
    if not lagging:
        return
    async with open_event_log(path) as log, open_projection_store(path) as store:
        catalog = OpenRunsCatalog()
        await store.reset(catalog)
        half = log.head().seq // 2
        await store.apply(catalog, log.read_all(0, half))
        assert store.checkpoint(catalog.name).seq == half


@pytest.mark.parametrize("lagging", [False, True])
async def test_crash_mid_run_closes_it_as_interrupted_and_runs_the_queued_message(
    tmp_path: Path, lagging: bool
) -> None:
    """After a SIGKILL mid-stream, restart fails run A as interrupted and runs queued B."""
    path = tmp_path / "log"
    await run_until(path, "streaming", "streaming")
    await rewind_open_runs(path, lagging)
    async with runtime_at(path, make_settings()) as rt:
        a = await rt.wait_run("run_a")
        assert (a.status, a.error) == ("failed", "interrupted")
        [failed] = decoded(rt.log, "run:run_a", RunFailed)
        assert failed.reason == "interrupted"
        assert "AssistantDelta" in types_of(rt.log, "run:run_a")
        b = await rt.wait_run("run_b")
        assert (b.status, b.content) == ("completed", "Echo: B")
        session = await rt.get_session("s")
        assert session.current_run is None and session.queued_runs == []
        assert [m.content for m in session.messages if m.role == "user"] == ["A", "B"]


@pytest.mark.parametrize("lagging", [False, True])
async def test_an_acknowledged_message_was_started_and_is_closed_after_a_crash(
    tmp_path: Path, lagging: bool
) -> None:
    """A message acknowledged by `send` has its run started in the same commit: killed before
    the run recorded anything more, the restart closes it as interrupted and runs queued B."""
    path = tmp_path / "log"
    await run_until(path, "accepted", "accepted")
    await rewind_open_runs(path, lagging)
    async with runtime_at(path, make_settings()) as rt:
        assert types_of(rt.log, "session:s")[:4] == [
            "SessionCreated",
            "MessageAccepted",
            "RunAssigned",
            "MessageAccepted",
        ]
        a = await rt.wait_run("run_a")
        assert (a.status, a.error) == ("failed", "interrupted")
        assert types_of(rt.log, "run:run_a") == ["RunStarted", "RunFailed"]
        b = await rt.wait_run("run_b")
        assert (b.status, b.content) == ("completed", "Echo: B")
        session = await rt.get_session("s")
        assert session.current_run is None and session.queued_runs == []
