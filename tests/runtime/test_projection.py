"""Projections: state and checkpoint written together, caught up on start, followed live,
rebuilt from seq 0 to the same state, stopped with a clear status by an event they fail on, and
resumed after a SIGKILL without counting an event twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio

from cuelog.runtime import (
    EventLog,
    Projection,
    ProjectionFailed,
    ProjectionGroup,
    ProjectionRunner,
    ProjectionState,
    ProjectionStore,
    RawEvent,
    RecordedEvent,
    open_event_log,
    open_projection_store,
)
from cuelog.runtime._projection import UNSYNCED_MARKER, LmdbProjectionStore, boot_id
from tests.postgres import fresh_database
from tests.runtime.projection_models import Tally, snapshot, tally, tick

REPO = Path(__file__).resolve().parents[2]

BACKENDS = ["memory", "lmdb", "postgres"]


@asynccontextmanager
async def opened(backend: str, tmp_path: Path) -> AsyncIterator[tuple[EventLog, ProjectionStore]]:
    if backend == "postgres":
        with fresh_database() as url:
            async with open_event_log(url) as log, open_projection_store(url) as store:
                yield log, store
        return
    location = "memory:" if backend == "memory" else str(tmp_path / "data")
    async with open_event_log(location) as log, open_projection_store(location) as store:
        yield log, store


async def append_ticks(log: EventLog, count: int, stream: str = "s") -> None:
    for start in range(0, count, 50):
        stop = min(count, start + 50)
        await log.append(stream, [RawEvent("Tick", tick(i)) for i in range(start, stop)])


def expected(head: int) -> tuple[int, int, int]:
    return head, head * (head + 1) // 2, head


@pytest.mark.parametrize("backend", BACKENDS)
async def test_catch_up_then_follow_live(backend: str, tmp_path: Path) -> None:
    """A runner applies what the log held when it started, then each new commit, once each."""
    async with opened(backend, tmp_path) as (log, store):
        await append_ticks(log, 120)
        runner = ProjectionRunner(log, store, Tally(), batch=32)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            assert await runner.wait_caught_up(120)
            await append_ticks(log, 30, stream="t")
            assert await runner.wait_caught_up(150)
            # Ticks committed while it was still reading history are applied by catch-up, which
            # then turns to following the log: wait for that turn, not just for seq 150.
            with trio.fail_after(10):
                while runner.status().phase == "catching_up":  # noqa: ASYNC110
                    await trio.sleep(0.01)
            status = runner.status()
            assert (status.phase, status.checkpoint, status.lag) == ("live", 150, 0)
            assert store.read("tally", tally) == expected(150)
            log.end_subscriptions()
        assert runner.status().phase == "stopped"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_rebuild_from_zero_equals_the_live_state(backend: str, tmp_path: Path) -> None:
    """Dropping the state and applying the log from seq 0 gives the very same keys and values."""
    async with opened(backend, tmp_path) as (log, store):
        runner = ProjectionRunner(log, store, Tally(), batch=16)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            for round_ in range(5):
                await append_ticks(log, 37, stream=f"s{round_}")
            assert await runner.wait_caught_up(log.head().seq)
            live = store.read("tally", snapshot)
            log.end_subscriptions()
        seen: list[tuple[int, int]] = []
        rebuilt = await runner.rebuild(lambda done, total: seen.append((done, total)))
        assert rebuilt.seq == log.head().seq == 185
        assert store.read("tally", snapshot) == live
        assert store.read("tally", tally) == expected(185)
        assert seen[-1] == (185, 185) and len(seen) > 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_failing_event_stops_the_projection_at_its_seq(
    backend: str, tmp_path: Path
) -> None:
    """The batch holding the failing event is not kept, nothing after it is applied, the status
    names the seq and the error, and catching up again refuses until a rebuild."""
    async with opened(backend, tmp_path) as (log, store):
        await append_ticks(log, 10)
        await log.append("s", [RawEvent("Poison", tick(0))])
        await append_ticks(log, 5)
        runner = ProjectionRunner(log, store, Tally(), batch=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            assert not await runner.wait_caught_up(16)
        status = runner.status()
        assert (status.phase, status.failed_seq, status.checkpoint) == ("failed", 11, 8)
        assert "ValueError: a poisoned event" in (status.error or "")
        assert status.lag == 8
        assert store.read("tally", tally) == expected(8)
        with pytest.raises(ProjectionFailed, match="failed at seq 11"):
            await runner.catch_up()
        with pytest.raises(ProjectionFailed, match="failed at seq 11"):
            await runner.rebuild()  # the log still holds the poisoned event
        assert store.read("tally", tally) == expected(8)


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_state_survives_a_reopen_and_resumes_from_its_checkpoint(
    backend: str, tmp_path: Path
) -> None:
    """A durable store keeps state and checkpoint across processes: a new runner applies only
    the events committed since."""
    with ExitStack() as stack:
        location = (
            stack.enter_context(fresh_database()) if backend == "postgres" else str(tmp_path / "d")
        )
        async with open_event_log(location) as log:
            await append_ticks(log, 40)
            async with open_projection_store(location) as store:
                await ProjectionRunner(log, store, Tally()).catch_up()
            await append_ticks(log, 10)
        async with open_event_log(location) as log, open_projection_store(location) as store:
            assert store.checkpoint("tally").seq == 40
            await ProjectionRunner(log, store, Tally()).catch_up()
            assert store.read("tally", tally) == expected(50)


async def test_a_new_version_rebuilds_from_zero(tmp_path: Path) -> None:
    """A projection whose state shape changed (another `version`) starts over from seq 0."""

    class TallyV2(Tally):
        version = 2

    async with opened("lmdb", tmp_path) as (log, store):
        await append_ticks(log, 20)
        await ProjectionRunner(log, store, Tally()).catch_up()
        await store.apply(TallyV2(), [])  # not through a runner: the old state stays
        checkpoint = await ProjectionRunner(log, store, TallyV2()).catch_up()
        assert (checkpoint.seq, checkpoint.version) == (20, 2)
        assert store.read("tally", tally) == expected(20)


class Keys(Projection):
    """Writes a fixed set of keys on any event."""

    name = "keys"

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        for key in (b"a", b"b1", b"b2", b"b3", b"b\xff", b"c"):
            state.put(key, key)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_scan_orders_keys_by_prefix_both_ways(backend: str, tmp_path: Path) -> None:
    """scan yields only the prefix's keys, in key order or reversed, after `start` when given."""
    async with opened(backend, tmp_path) as (log, store):
        await log.append("s", [RawEvent("Tick", tick(0))])
        await store.apply(Keys(), log.read_all())

        def keys(prefix: bytes, start: bytes | None = None, reverse: bool = False) -> list[bytes]:
            return store.read(
                "keys", lambda s: [k for k, _ in s.scan(prefix, start=start, reverse=reverse)]
            )

        assert keys(b"b") == [b"b1", b"b2", b"b3", b"b\xff"]
        assert keys(b"b", reverse=True) == [b"b\xff", b"b3", b"b2", b"b1"]
        assert keys(b"b", start=b"b1") == [b"b2", b"b3", b"b\xff"]
        assert keys(b"b", start=b"b3", reverse=True) == [b"b2", b"b1"]
        assert keys(b"") == [b"a", b"b1", b"b2", b"b3", b"b\xff", b"c"]
        assert keys(b"", reverse=True)[0] == b"c"


def test_sigkill_during_catch_up_resumes_without_double_counting(tmp_path: Path) -> None:
    """A catch-up process killed with SIGKILL between batches leaves a checkpoint that matches
    its state: the next catch-up applies each remaining event once."""
    path = tmp_path / "data"
    total = 3000

    async def fill() -> None:
        async with open_event_log(path) as log:
            await append_ticks(log, total)

    trio.run(fill)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime._projection_process", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    killed_at = 0
    for line in child.stdout:
        word, seq = line.split()
        assert word == "at", line
        if int(seq) >= 400:
            child.send_signal(signal.SIGKILL)
            killed_at = int(seq)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL

    async def resume() -> None:
        async with open_event_log(path) as log, open_projection_store(path) as store:
            before = store.checkpoint("tally").seq
            assert killed_at <= before < total  # killed mid catch-up
            assert store.read("tally", tally) == expected(before)
            await ProjectionRunner(log, store, Tally()).catch_up()
            assert store.read("tally", tally) == expected(total)

    trio.run(resume)


class Evens(Tally):
    """A second projection: fails on a poisoned event only if its seq is even."""

    name = "evens"

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        if event.type == "Poison" and event.seq % 2:
            event = msgspec.structs.replace(event, type="Tick")
        super().apply(event, state)


class Clean(Tally):
    """A third: never fails."""

    name = "clean"

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        if event.type == "Poison":
            event = msgspec.structs.replace(event, type="Tick")
        super().apply(event, state)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_group_applies_each_batch_to_all_and_a_failure_stops_one_alone(
    backend: str, tmp_path: Path
) -> None:
    """Projections at different checkpoints catch up together from the lowest, each applying
    every event once; one that fails stops with its status while the others follow the log."""
    async with opened(backend, tmp_path) as (log, store):
        await append_ticks(log, 30)
        await ProjectionRunner(log, store, Clean()).catch_up()  # ahead of the others
        runners = [ProjectionRunner(log, store, p) for p in (Tally(), Evens(), Clean())]
        async with trio.open_nursery() as nursery:
            await nursery.start(ProjectionGroup(runners, batch=8).run)
            assert all([await r.wait_caught_up(30) for r in runners])
            await append_ticks(log, 20, stream="t")
            assert all([await r.wait_caught_up(50) for r in runners])
            assert {r.name: r.status().phase for r in runners} == dict.fromkeys(
                ("tally", "evens", "clean"), "live"
            )
            await log.append("u", [RawEvent("Poison", tick(0))])  # seq 51: odd
            await append_ticks(log, 9, stream="u")
            assert not await runners[0].wait_caught_up(60)
            assert await runners[1].wait_caught_up(60)
            assert await runners[2].wait_caught_up(60)
            await append_ticks(log, 5, stream="v")
            assert await runners[2].wait_caught_up(65)
            log.end_subscriptions()
        tally_status, evens_status, clean_status = (r.status() for r in runners)
        assert (tally_status.phase, tally_status.failed_seq) == ("failed", 51)
        assert store.read("tally", tally) == expected(50)
        assert (evens_status.phase, clean_status.phase) == ("stopped", "stopped")
        assert store.read("evens", tally) == expected(65)
        assert store.read("clean", tally) == expected(65)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_batch_that_does_not_follow_the_checkpoint_is_not_applied(
    backend: str, tmp_path: Path
) -> None:
    """A process whose checkpoint was moved back under it (another process rebuilds) applies
    nothing past the gap: it reads again from the checkpoint, so no event is skipped."""
    async with opened(backend, tmp_path) as (log, store):
        await append_ticks(log, 20)
        await store.apply(Tally(), log.read_all(0, 5))
        later = log.read_all(10, 5)
        assert (await store.apply(Tally(), later)).seq == 5
        assert store.read("tally", tally) == expected(5)
        assert (await store.apply(Tally(), log.read_all(3, 10))).seq == 13
        assert store.read("tally", tally) == expected(13)


async def test_an_lmdb_store_is_synced_on_close_and_refolded_after_a_reboot(
    tmp_path: Path,
) -> None:
    """An LMDB store's commits are synced every second and on close, marked unsynced meanwhile;
    a marker left by this boot (a killed process) keeps the state, one left by another boot (a
    power cut) empties the store so the log is folded into it again."""
    if boot_id() is None:
        pytest.skip("this system names no boot")
    location = tmp_path / "data"
    marker = location / "projections" / UNSYNCED_MARKER
    async with open_event_log(location) as log:
        await append_ticks(log, 12)
        async with open_projection_store(location) as store:
            await ProjectionRunner(log, store, Tally()).catch_up()
            assert marker.read_text().strip() == boot_id()
            assert isinstance(store, LmdbProjectionStore)
            await store.sync_unsynced()
            assert not marker.exists()  # synced, no commit since
            await append_ticks(log, 3)
            await ProjectionRunner(log, store, Tally()).catch_up()
            assert marker.exists()
        assert not marker.exists()  # close syncs
        marker.write_text(f"{boot_id()}\n")  # a process of this boot was killed
        async with open_projection_store(location) as store:
            assert store.checkpoint("tally").seq == 15
        marker.write_text("an-earlier-boot\n")
        async with open_projection_store(location) as store:
            assert store.checkpoint("tally").seq == 0
            await ProjectionRunner(log, store, Tally()).catch_up()
            assert store.read("tally", tally) == expected(15)


async def test_an_lmdb_store_shared_by_processes_is_never_left_unsynced_and_unmarked(
    tmp_path: Path,
) -> None:
    """Processes sharing a store (a server and its projector, a rebuild beside a server) sync
    and unmark it in turn. A process whose commits another one synced and unmarked marks the
    store again before its next commit; a sync does not unmark the store when any process
    committed after it began."""
    if boot_id() is None:
        pytest.skip("this system names no boot")
    location = tmp_path / "data"
    marker = location / "projections" / UNSYNCED_MARKER
    other = (
        "import sys; from pathlib import Path; "
        "from cuelog.runtime._projection import LmdbProjectionStore; "
        "LmdbProjectionStore(Path(sys.argv[1])).close()"
    )
    async with open_event_log(location) as log:
        await append_ticks(log, 5)
        async with open_projection_store(location) as store:
            assert isinstance(store, LmdbProjectionStore)
            await ProjectionRunner(log, store, Tally()).catch_up()
            assert marker.exists()
            # Another process opens the store and closes it: it syncs everything, unmarks.
            await trio.run_process([sys.executable, "-c", other, str(marker.parent)])
            assert not marker.exists()
            await append_ticks(log, 3)
            await ProjectionRunner(log, store, Tally()).catch_up()
            assert marker.exists()  # marked again, though this process had marked it before

            # A sync that began before a commit (of this process or any other) leaves the mark.
            began = store._last_txn()
            await append_ticks(log, 2)
            await ProjectionRunner(log, store, Tally()).catch_up()
            store._unmark_if_unchanged(began)
            assert marker.exists()
            await store.sync_unsynced()
            assert not marker.exists()
            assert store.read("tally", tally) == expected(10)
