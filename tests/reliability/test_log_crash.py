"""SIGKILL an appending process at random moments: every acknowledged event survives, chained.

25 rounds on LMDB and 5 on PostgreSQL (25 more under `-m slow`) by default;
CUELOG_CRASH_ITERATIONS=N runs N on each (`make soak` runs 500).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
import trio

from cuelog.runtime import EventLog, RawEvent, RecordedEvent, open_event_log
from tests.postgres import fresh_database
from tests.reliability._crash_appender import TASKS, payload

APPENDER = Path(__file__).with_name("_crash_appender.py")
ITERATIONS = int(os.environ.get("CUELOG_CRASH_ITERATIONS", "25"))
POSTGRES_ITERATIONS = int(os.environ.get("CUELOG_CRASH_ITERATIONS", "5"))


def run_and_kill(
    path: Path | str,
    round_: int,
    rng: random.Random,
    *,
    after_commits: int | None = None,
    before_flush: bool = False,
) -> list[tuple[int, str, int]]:
    """Start the appender, SIGKILL it 0.05-0.5 s into appending (or let it kill itself between
    its `after_commits`-th commit and that commit's acks, or with `before_flush` at the first
    index flush from there on); return what it acknowledged."""
    extra = [] if after_commits is None else [str(after_commits)]
    if before_flush:
        extra.append("flush")
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
        check_streams(log, everything)
        # The recovered writer goes on from the tail.
        stream = f"recovered-{head.seq}"
        [after] = await log.append(stream, [RawEvent("Tick", payload(stream, 1))])
        assert (after.seq, after.prev) == (head.seq + 1, head.hash)
        return head.seq


def check_streams(log: EventLog, everything: list[RecordedEvent]) -> None:
    """Every stream reads back, by stream, exactly the events the log holds for it."""
    by_stream: dict[str, list[int]] = {}
    for event in everything:
        by_stream.setdefault(event.stream, []).append(event.seq)
    for stream, stream_seqs in by_stream.items():
        assert log.stream_version(stream) == len(stream_seqs), stream
        assert [e.seq for e in log.read_stream(stream)] == stream_seqs, stream
    listed = log.list_streams("round", limit=len(by_stream) + 1)
    assert listed == sorted((s for s in by_stream if s.startswith("round")), key=str.encode)


async def check_readonly(path: Path, acked: list[tuple[int, str, int]]) -> None:
    """A read-only open of a log a writer left by SIGKILL reads every acknowledged event by
    stream, the index tail rebuilt from the records after the watermark, and verifies."""
    async with open_event_log(path, readonly=True) as log:
        everything = log.read_all(limit=log.head().seq + 1)
        check_streams(log, everything)
        for seq, stream, version in acked:
            assert log.read_stream(stream, version, limit=1)[0].seq == seq
        report = await log.verify()
        assert report.ok, report


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


def test_acknowledged_events_survive_a_kill_before_the_index_flush(tmp_path: Path) -> None:
    """Killed after commits whose stream index entries were still only in memory (just before
    the commit that would write them out), the log reads every acknowledged event by stream:
    first in a read-only open (its index tail rebuilt from the records after the watermark),
    then reopened for writing (the index recovered on open)."""
    path = tmp_path / "log"
    rng = random.Random(os.environ.get("CUELOG_CRASH_SEED", "cuelog"))
    acked_total: list[tuple[int, str, int]] = []
    for round_ in range(max(ITERATIONS // 3, 3)):
        acked = run_and_kill(path, round_, rng, after_commits=rng.randint(1, 40), before_flush=True)
        assert acked, f"round {round_}: nothing was acknowledged before the kill"
        acked_total += acked
        watermark, head = raw_watermark(path)
        assert watermark < head, "the kill left no commit after the watermark"
        trio.run(check_readonly, path, acked_total)
        trio.run(check_log, path, acked_total)
        assert raw_watermark(path) == (head + 1, head + 1)  # recovered, then one append


def raw_watermark(path: Path) -> tuple[int, int]:
    """(watermark, last seq) as stored in the closed log."""
    env = lmdb.open(str(path), readonly=True, max_dbs=8)
    try:
        events, meta = env.open_db(b"events", create=False), env.open_db(b"meta", create=False)
        with env.begin() as txn:
            cursor = txn.cursor(db=events)
            last = struct.unpack(">Q", cursor.key())[0] if cursor.last() else 0
            watermark = txn.get(b"watermark", db=meta)
            assert watermark is not None
            return struct.unpack(">Q", watermark)[0], last
    finally:
        env.close()


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
