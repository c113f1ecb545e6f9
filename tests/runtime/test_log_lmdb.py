"""The LMDB event log: the shared contract, plus what only an on-disk LMDB log has to get right."""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import subprocess
import sys
import threading
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
import trio
import trio.testing

from cuelog.runtime import (
    EventLog,
    LogClosed,
    LogFormatError,
    LogLocked,
    RawEvent,
    StorageFull,
    open_event_log,
)
from cuelog.runtime._lmdb import LmdbEventLog, open_lmdb_event_log
from tests.runtime.log_contract import GUARD_SECONDS, EventLogContract, raw, seqs

WRITER_PROCESS = Path(__file__).with_name("_writer_process.py")


class TestLmdbEventLog(EventLogContract):
    """The LMDB backend passes the whole event log contract."""

    def open_log(self, path: Path) -> AbstractAsyncContextManager[EventLog]:
        return open_event_log(path, max_event_bytes=self.max_event_bytes)


class WriterProcess:
    """A writer holding the log open in a child process (see _writer_process.py)."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER_PROCESS), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._stdout = self.proc.stdout
        ready = self._stdout.readline().split()
        assert ready[:1] == ["ready"], f"writer process did not start: {ready}"
        self.pid = int(ready[1])

    def append(self, count: int) -> int:
        """Append `count` events in the child; return the last seq it acknowledged."""
        self._stdin.write(f"{count}\n")
        self._stdin.flush()
        answer = self._stdout.readline().split()
        assert answer[:1] == ["appended"], answer
        return int(answer[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._stdin.close()
            self.proc.wait(timeout=GUARD_SECONDS)


def open_raw_env(path: Path) -> Any:
    """The log's LMDB environment opened directly, as another tool (or an attacker) would."""
    return lmdb.open(str(path), max_dbs=8)


def set_format(path: Path, version: int) -> None:
    env = open_raw_env(path)
    try:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format", struct.pack(">I", version), db=meta)
    finally:
        env.close()


def stored_format(path: Path) -> int:
    env = open_raw_env(path)
    try:
        meta = env.open_db(b"meta")
        with env.begin() as txn:
            version: int = struct.unpack(">I", txn.get(b"format", db=meta))[0]
            return version
    finally:
        env.close()


async def test_concurrent_appends_share_one_group_commit(tmp_path: Path) -> None:
    """Appends that are waiting together are written in one LMDB transaction."""
    async with open_event_log(tmp_path / "log") as log:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(log.append, f"s{i}", [raw(i)])
        stats = log.statistics()
        assert (stats.appends, stats.events_appended) == (20, 20)
        assert stats.largest_batch == 20
        assert stats.batches == 1


async def test_reopening_keeps_everything_and_continues_the_chain(tmp_path: Path) -> None:
    """After close and reopen every event, version, key and snapshot is there, chained on."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        first = await log.append("a", [raw(1), raw(2)], idempotency_key="k")
        first += await log.append("b", [raw(3)])
        await log.save_snapshot("a", 2, b"folded")
        head = log.head()
    async with open_event_log(path) as log:
        assert log.head() == head
        assert log.read_all() == first
        assert log.stream_version("a") == 2
        assert log.load_snapshot("a") == (2, b"folded")
        assert await log.append("a", [raw(1), raw(2)], idempotency_key="k") == first[:2]
        [next_event] = await log.append("a", [raw(4)], expected_version=2)
        assert (next_event.seq, next_event.version, next_event.prev) == (4, 3, head.hash)
        assert (await log.verify()).ok


async def test_timestamps_come_from_the_injected_clock(tmp_path: Path) -> None:
    """Every event of a commit carries the clock's microseconds, so replays are deterministic."""
    ticks = iter(range(1_000_000, 2_000_000, 1000))
    async with open_event_log(tmp_path / "log", clock=lambda: next(ticks)) as log:
        one = await log.append("s", [raw(1), raw(2)])
        two = await log.append("s", [raw(3)])
    assert [r.ts for r in one + two] == [1_000_000, 1_000_000, 1_001_000]


async def test_the_stored_chain_verifies_without_cuelog(tmp_path: Path) -> None:
    """Stored values are hash||prev||body with hash = sha256(prev||body) from sha256(log_id) on."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        recorded = await log.append("s", [raw({"n": 1}), raw("two")], actor="a")
        recorded += await log.append("t", [raw(None)], causation="c", correlation="r")
    env = open_raw_env(path)
    try:
        events, streams, meta = (env.open_db(name) for name in (b"events", b"streams", b"meta"))
        with env.begin() as txn:
            assert bytes(txn.get(b"format", db=meta)) == struct.pack(">I", 2)
            prev = hashlib.sha256(bytes(txn.get(b"log_id", db=meta))).digest()
            stored = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=events)]
            index = {bytes(k): bytes(v) for k, v in txn.cursor(db=streams)}
    finally:
        env.close()
    assert [struct.unpack(">Q", key)[0] for key, _ in stored] == [1, 2, 3]
    for (key, value), record in zip(stored, recorded, strict=True):
        body = value[64:]
        assert value[32:64] == prev == record.prev
        assert value[:32] == hashlib.sha256(prev + body).digest() == record.hash
        fields = msgspec.msgpack.decode(body)
        assert fields[:8] == [
            record.seq,
            record.stream,
            record.version,
            record.type,
            record.ts,
            record.causation,
            record.correlation,
            record.actor,
        ]
        assert msgspec.msgpack.encode(fields[8]) == record.data
        assert index[record.stream.encode() + b"\x00" + struct.pack(">I", record.version)] == key
        prev = value[:32]


async def test_a_second_writer_in_this_process_is_locked_out(tmp_path: Path) -> None:
    """Opening a dir for writing twice fails with LogLocked naming the holder's pid."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        await log.append("s", [raw(1)])
        with pytest.raises(LogLocked, match=f"locked by pid {os.getpid()}") as caught:
            async with open_event_log(path):
                pass  # pragma: no cover - the open must fail
        assert caught.value.pid == os.getpid()
        assert log.read_all()[0].seq == 1  # the holder is unharmed
    async with open_event_log(path) as log:  # released on close
        assert log.head().seq == 1


async def test_a_second_writer_process_is_told_the_holders_pid(tmp_path: Path) -> None:
    """While another process writes, opening for writing names that process's pid."""
    path = tmp_path / "log"
    writer = WriterProcess(path)
    try:
        with pytest.raises(LogLocked) as caught:
            async with open_event_log(path):
                pass  # pragma: no cover - the open must fail
        assert caught.value.pid == writer.pid
        assert f"pid {writer.pid}" in str(caught.value)
    finally:
        writer.stop()
    async with open_event_log(path) as log:
        assert log.head().seq == 0


async def test_a_killed_writer_leaves_the_lock_free(tmp_path: Path) -> None:
    """A writer that dies without closing does not keep the dir locked."""
    path = tmp_path / "log"
    writer = WriterProcess(path)
    writer.append(3)
    writer.proc.kill()
    writer.proc.wait(timeout=GUARD_SECONDS)
    async with open_event_log(path) as log:
        assert seqs(log.read_all()) == [1, 2, 3]
        assert (await log.verify()).ok


async def test_a_readonly_open_beside_a_writer_sees_new_commits(tmp_path: Path) -> None:
    """A read-only open works while another process writes, and reads and follows its commits."""
    path = tmp_path / "log"
    writer = WriterProcess(path)
    try:
        await trio.to_thread.run_sync(writer.append, 2)
        async with open_event_log(path, readonly=True) as reader:
            assert isinstance(reader, LmdbEventLog)
            assert reader.head().seq == 2
            followed: list[int] = []

            async def follow() -> None:
                async for event in reader.subscribe():
                    followed.append(event.seq)
                    if event.seq == 5:
                        return

            with trio.fail_after(GUARD_SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow)
                    last = await trio.to_thread.run_sync(writer.append, 3)
            assert last == 5
            assert followed == [1, 2, 3, 4, 5]
            assert reader.head().seq == 5
            assert reader.stream_version("child") == 5
            assert (await reader.verify()).ok
            with pytest.raises(LogClosed, match="read-only"):
                await reader.append("s", [raw(1)])
    finally:
        writer.stop()


async def test_a_readonly_open_of_a_missing_dir_is_refused(tmp_path: Path) -> None:
    """Opening a dir that holds no log read-only raises LogFormatError and creates nothing."""
    with pytest.raises(LogFormatError, match="missing"):
        async with open_event_log(tmp_path / "nothing", readonly=True):
            pass  # pragma: no cover - the open must fail
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogFormatError):
        async with open_event_log(tmp_path / "empty", readonly=True):
            pass  # pragma: no cover - the open must fail


async def test_a_readonly_open_of_a_foreign_lmdb_dir_is_refused(tmp_path: Path) -> None:
    """An LMDB environment that is not a cuelog log is refused with LogFormatError."""
    env = lmdb.open(str(tmp_path / "foreign"))
    with env.begin(write=True) as txn:
        txn.put(b"key", b"value")
    env.close()
    with pytest.raises(LogFormatError):
        async with open_event_log(tmp_path / "foreign", readonly=True):
            pass  # pragma: no cover - the open must fail


async def test_a_newer_format_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """A log whose meta format is newer than this cuelog's is refused, naming both formats."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        await log.append("s", [raw(1)])
    set_format(path, 99)
    for readonly in (True, False):
        with pytest.raises(LogFormatError, match=r"format 99.*formats 1 to 2.*upgrade cuelog"):
            async with open_event_log(path, readonly=readonly):
                pass  # pragma: no cover - the open must fail


async def test_a_format_1_log_is_read_and_a_writer_marks_it_format_2(tmp_path: Path) -> None:
    """Format 1 (every index entry in its commit) reads as it is; a writer's open marks it
    format 2, the deferred index, so a cuelog that knows only format 1 refuses it from then on."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        await log.append("s", [raw(1)])
    set_format(path, 1)
    async with open_event_log(path, readonly=True) as log:
        assert [e.version for e in log.read_stream("s")] == [1]
    assert stored_format(path) == 1
    async with open_event_log(path) as log:
        await log.append("s", [raw(2)], expected_version=1)
    assert stored_format(path) == 2


async def test_a_refused_open_leaves_the_writer_lock_free(tmp_path: Path) -> None:
    """When opening for writing fails on the format check, the writer lock is released."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        await log.append("s", [raw(1)])
    set_format(path, 99)
    with pytest.raises(LogFormatError):
        async with open_event_log(path):
            pass  # pragma: no cover - the open must fail
    fd = os.open(path / "data.mdb", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the fd leaks
    finally:
        os.close(fd)


async def test_appending_to_a_closed_log_is_refused(tmp_path: Path) -> None:
    """After the log's context exits, append raises LogClosed."""
    async with open_event_log(tmp_path / "log") as log:
        await log.append("s", [raw(1)])
    with pytest.raises(LogClosed, match="closed"):
        await log.append("s", [raw(2)])


async def test_the_map_grows_instead_of_failing(tmp_path: Path) -> None:
    """Starting from a 64 KiB map, megabytes of appends succeed as the map doubles."""
    path = tmp_path / "log"
    chunk = RawEvent("Blob", msgspec.msgpack.encode(os.urandom(40_000)))
    async with open_event_log(path, initial_map_size=64 << 10) as log:
        assert log.statistics().map_size == 64 << 10
        for _ in range(20):
            await log.append("one", [chunk])
            await log.append("many", [chunk] * 4)  # committed from the worker thread
        assert log.statistics().map_size >= 4 << 20
        assert log.head().seq == 100
    async with open_event_log(path, readonly=True, initial_map_size=64 << 10) as log:
        assert all(event.data == chunk.data for event in log.read_all())
        assert (await log.verify()).ok


async def test_a_full_log_keeps_its_data_and_keeps_reading(tmp_path: Path) -> None:
    """At max_map_size appends raise StorageFull; what was written stays readable and valid."""
    chunk = RawEvent("Blob", msgspec.msgpack.encode(os.urandom(50_000)))
    path = tmp_path / "log"
    async with open_event_log(path, initial_map_size=64 << 10, max_map_size=1 << 20) as log:
        landed: list[int] = []
        with pytest.raises(StorageFull, match="maximum size"):
            for _ in range(100):
                landed += seqs(await log.append("s", [chunk]))
        assert 5 < len(landed) < 20
        assert log.head().seq == len(landed)
        assert seqs(log.read_all()) == landed
        assert all(event.data == chunk.data for event in log.read_stream("s"))
        assert log.stream_version("s") == len(landed)
        assert (await log.verify()).ok
        [small] = await log.append("s", [raw(1)])  # what still fits goes on
        assert (small.seq, small.version) == (len(landed) + 1, len(landed) + 1)
    async with open_event_log(path, readonly=True) as log:
        assert (await log.verify()).checked == len(landed) + 1


async def test_a_snapshot_is_stored_when_save_snapshot_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save_snapshot returns only once its own write has committed, even mid group commit."""
    gate = threading.Event()
    seen: list[tuple[int, bytes] | None] = []
    async with open_lmdb_event_log(tmp_path / "log") as log:
        write = log._write

        def gated_write(plan: Any) -> None:
            # Hold the worker-thread commit so the snapshot is queued while a group is in flight.
            if threading.current_thread() is not threading.main_thread():
                gate.wait(GUARD_SECONDS)
            write(plan)

        monkeypatch.setattr(log, "_write", gated_write)

        async def snapshot() -> None:
            await log.save_snapshot("s", 1, b"state")
            seen.append(log.load_snapshot("s"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.append, "big", [raw(1), raw(2), raw(3)])
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(snapshot)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
    assert seen == [(1, b"state")]
