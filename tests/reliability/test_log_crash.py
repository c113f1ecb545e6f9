"""SIGKILL an appending process at random moments: every acknowledged event survives, chained.

25 rounds on LMDB and 5 on PostgreSQL (25 more under `-m slow`) by default;
CUELOG_CRASH_ITERATIONS=N runs N on each (`make soak` runs 500).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from cuelog.runtime import RawEvent, open_event_log
from tests.postgres import fresh_database
from tests.reliability._crash_appender import TASKS, payload

APPENDER = Path(__file__).with_name("_crash_appender.py")
ITERATIONS = int(os.environ.get("CUELOG_CRASH_ITERATIONS", "25"))
POSTGRES_ITERATIONS = int(os.environ.get("CUELOG_CRASH_ITERATIONS", "5"))


def run_and_kill(
    path: Path | str, round_: int, rng: random.Random, *, after_commits: int | None = None
) -> list[tuple[int, str, int]]:
    """Start the appender, SIGKILL it 0.05-0.5 s into appending (or let it kill itself between
    its `after_commits`-th commit and that commit's acks); return what it acknowledged."""
    extra = [] if after_commits is None else [str(after_commits)]
    proc = subprocess.Popen(
        [sys.executable, str(APPENDER), str(path), str(round_), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        started = proc.stdout.readline()
        while started.startswith("20"):  # a log line (creating the tables), not output
            started = proc.stdout.readline()
        assert started == "appending\n", f"appender did not start: {started!r}"
        if after_commits is None:
            time.sleep(rng.uniform(0.05, 0.5))  # a random crash moment, not a wait for a timeout
    finally:
        if after_commits is None:
            proc.kill()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -9
    acked = []
    for line in out.splitlines(keepends=True):
        if line.endswith("\n"):  # a line cut by the kill was never fully acknowledged
            seq, stream, version = line.split()
            acked.append((int(seq), stream, int(version)))
    return acked


async def check_log(path: Path | str, acked: list[tuple[int, str, int]]) -> int:
    """Reopen for writing (crash recovery) and check every acknowledged event; return the head."""
    async with open_event_log(path) as log:
        for seq, stream, version in acked:
            event = log.read_event(seq)
            assert event is not None, f"acknowledged seq {seq} is gone"
            assert (event.stream, event.version) == (stream, version)
            assert event.data == payload(stream, version)
        head = log.head()
        report = await log.verify()
        assert report.ok, report
        assert report.checked == head.seq
        everything = log.read_all(limit=head.seq + 1)
        assert [e.seq for e in everything] == list(range(1, head.seq + 1))
        streams: dict[str, int] = {}
        for event in everything:
            streams[event.stream] = streams.get(event.stream, 0) + 1
            assert event.version == streams[event.stream]
            assert event.data == payload(event.stream, event.version)
        for stream, version in streams.items():  # a multi-stream append lands whole or not at all
            if stream.endswith("-pair-a"):
                assert streams.get(stream[:-1] + "b", 0) == version, f"{stream} is half written"
        # The recovered writer goes on from the tail.
        stream = f"recovered-{head.seq}"
        [after] = await log.append(stream, [RawEvent("Tick", payload(stream, 1))])
        assert (after.seq, after.prev) == (head.seq + 1, head.hash)
        return head.seq


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    """After each SIGKILL, every acknowledged event is in the log and the chain verifies."""
    crash_loop(tmp_path / "log", ITERATIONS)


def test_acknowledged_events_survive_sigkill_on_postgresql() -> None:
    """A writer killed mid-commit on PostgreSQL loses no acknowledged event; the chain verifies."""
    with fresh_database() as url:
        crash_loop(url, POSTGRES_ITERATIONS)


@pytest.mark.slow
def test_acknowledged_events_survive_many_sigkills_on_postgresql() -> None:
    """25 more SIGKILL rounds on PostgreSQL: no acknowledged event lost, one linear chain."""
    with fresh_database() as url:
        crash_loop(url, 25)


def test_acknowledged_events_survive_a_kill_between_commit_and_ack(tmp_path: Path) -> None:
    """Killed after a group's commit is durable but before any append of it is acknowledged,
    the log reopens intact, holds that group whole, and goes on from its tail."""
    crash_loop(tmp_path / "log", ITERATIONS, between_commit_and_ack=True)


def crash_loop(path: Path | str, iterations: int, *, between_commit_and_ack: bool = False) -> None:
    rng = random.Random(os.environ.get("CUELOG_CRASH_SEED", "cuelog"))
    acked_total: list[tuple[int, str, int]] = []
    for round_ in range(iterations):
        after_commits = rng.randint(2, 60) if between_commit_and_ack else None
        acked = run_and_kill(path, round_, rng, after_commits=after_commits)
        assert acked, f"round {round_}: nothing was acknowledged before the kill"
        acked_total += acked
        head = trio.run(check_log, path, acked_total)
        if between_commit_and_ack:  # the group of the kill was durable, though nobody heard
            assert head > max(seq for seq, _, _ in acked)
    assert len({seq for seq, _, _ in acked_total}) == len(acked_total)
    assert {stream for _, stream, _ in acked_total if "-task" in stream} == {
        f"round{r}-task{t}" for r in range(iterations) for t in range(TASKS)
    }
