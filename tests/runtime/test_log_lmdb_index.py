"""The LMDB log's deferred stream index: entries of recent commits in memory, a watermark on disk,
and every read by stream exact whether the entries it needs are flushed or not."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
import trio

from cuelog.runtime import EventLog, _lmdb, open_event_log
from cuelog.runtime._lmdb import LmdbEventLog
from tests.runtime.log_contract import GUARD_SECONDS, raw, seqs
from tests.tamper import tampered

INDEX_WRITER = Path(__file__).with_name("_index_writer.py")
_U64 = struct.Struct(">Q")


class IndexWriter:
    """A writer process whose stream index stays in memory (see _index_writer.py)."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(INDEX_WRITER), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        assert self._stdout.readline() == "ready\n", "the writer did not start"

    def append(self, stream: str, count: int) -> int:
        self._stdin.write(f"{stream} {count}\n")
        self._stdin.flush()
        answer = self._stdout.readline().split()
        assert answer[:1] == ["appended"], answer
        return int(answer[1])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=GUARD_SECONDS)

    def close(self) -> None:
        if self.proc.poll() is None:
            self._stdin.close()
            self.proc.wait(timeout=GUARD_SECONDS)


def on_disk(path: Path) -> tuple[int, int, dict[bytes, int]]:
    """(watermark, last seq, stream index entries) as stored, read by another process's rules."""
    env = lmdb.open(str(path), readonly=True, max_dbs=8)
    try:
        events, streams, meta = (
            env.open_db(name, create=False) for name in (b"events", b"streams", b"meta")
        )
        with env.begin() as txn:
            cursor = txn.cursor(db=events)
            last = _U64.unpack(cursor.key())[0] if cursor.last() else 0
            stored = txn.get(b"watermark", db=meta)
            assert stored is not None
            watermark = _U64.unpack(stored)[0]
            index = {bytes(k): _U64.unpack(v)[0] for k, v in txn.cursor(db=streams)}
            return watermark, last, index
    finally:
        env.close()


# What the writer appends: (stream, events per commit), in order.
APPENDS = [("a", 3), ("b", 1), ("a", 2), ("other/x", 4), ("c", 1), ("a", 1), ("b", 2)]


def expected_streams() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    seq = 0
    for stream, count in APPENDS:
        out.setdefault(stream, []).extend(range(seq + 1, seq + count + 1))
        seq += count
    return out


def assert_reads(log: EventLog, streams: dict[str, list[int]]) -> None:
    """Every way of reading by stream gives exactly `streams` (stream -> its seqs)."""
    for stream, stream_seqs in streams.items():
        assert log.stream_version(stream) == len(stream_seqs)
        assert seqs(log.read_stream(stream)) == stream_seqs
        for version in range(1, len(stream_seqs) + 2):
            assert (
                seqs(log.read_stream(stream, version, limit=2))
                == stream_seqs[version - 1 : version + 1]
            )
    assert log.stream_version("nobody") == 0
    assert log.read_stream("nobody") == []
    names = sorted(streams, key=str.encode)
    assert log.list_streams("") == names
    assert log.list_streams("", after=names[0], limit=2) == names[1:3]
    assert log.list_streams("o") == [name for name in names if name.startswith("o")]


async def test_a_readonly_open_reads_commits_whose_index_is_still_in_memory(
    tmp_path: Path,
) -> None:
    """While the writer holds the index entries of its recent commits in memory, the stored
    index lacks them; a read-only open rebuilds them from the records after the watermark and
    reads every stream exactly, follows new commits, and verifies."""
    path = tmp_path / "log"
    writer = IndexWriter(path)
    try:
        for stream, count in APPENDS:
            writer.append(stream, count)
        head = sum(count for _, count in APPENDS)
        watermark, last, index = on_disk(path)
        assert (watermark, last, index) == (0, head, {})
        async with open_event_log(path, readonly=True) as reader:
            assert_reads(reader, expected_streams())
            assert (await reader.verify()).ok
            # The reader's tail grows with the writer's next commits.
            seq = await trio.to_thread.run_sync(writer.append, "d", 2)
            streams = expected_streams() | {"d": [seq - 1, seq]}
            assert_reads(reader, streams)
        await trio.to_thread.run_sync(writer.close)  # closing writes the index out
        watermark, last, index = on_disk(path)
        assert watermark == last == head + 2
        assert sorted(index.values()) == list(range(1, head + 3))
        async with open_event_log(path, readonly=True) as reader:
            assert_reads(reader, streams)
    finally:
        writer.kill()


async def test_a_sigkill_before_the_index_flush_loses_no_stream(tmp_path: Path) -> None:
    """A writer killed with its recent index entries only in memory leaves a log that reads
    every stream exactly, read-only or reopened for writing; the writer's open recovers the
    entries and moves the watermark to the head in one txn."""
    path = tmp_path / "log"
    writer = IndexWriter(path)
    for stream, count in APPENDS:
        writer.append(stream, count)
    writer.kill()
    head = sum(count for _, count in APPENDS)
    assert on_disk(path)[:2] == (0, head)
    async with open_event_log(path, readonly=True) as reader:
        assert_reads(reader, expected_streams())
        assert (await reader.verify()).ok
    async with open_event_log(path) as log:
        assert isinstance(log, LmdbEventLog)
        assert (stored_watermark(log), len(log._tail)) == (head, 0)
        assert_reads(log, expected_streams())
        [record] = await log.append("a", [raw(1)], expected_version=6)
        assert record.version == 7
    watermark, last, index = on_disk(path)
    assert watermark == last == head + 1
    assert sorted(index.values()) == list(range(1, head + 2))


async def test_the_index_is_written_out_every_few_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries wait in memory for `_FLUSH_EVERY` commits; the commit that reaches it writes
    them out with its own and moves the watermark, and reads stay exact throughout."""
    monkeypatch.setattr(_lmdb, "_FLUSH_EVERY", 4)
    monkeypatch.setattr(_lmdb, "_IDLE_FLUSH", 3600.0)
    async with open_event_log(tmp_path / "log") as log:
        assert isinstance(log, LmdbEventLog)
        for i in range(1, 4):
            await log.append("s", [raw(i)])
            assert len(log._tail) == i
            assert stored_watermark(log) == 0
            assert log.stream_version("s") == i
        await log.append("t", [raw(4)])
        assert len(log._tail) == 0
        assert stored_watermark(log) == 4
        assert seqs(log.read_stream("s")) == [1, 2, 3]
        assert log.list_streams("") == ["s", "t"]


async def test_an_idle_writer_writes_its_index_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer with nothing to commit for `_IDLE_FLUSH` seconds writes out what it holds."""
    monkeypatch.setattr(_lmdb, "_IDLE_FLUSH", 0.05)
    async with open_event_log(tmp_path / "log") as log:
        assert isinstance(log, LmdbEventLog)
        await log.append("s", [raw(1), raw(2)])
        assert stored_watermark(log) == 0
        for _ in range(int(GUARD_SECONDS / 0.02)):  # polls the disk: no event to wait on
            if stored_watermark(log) == 2:
                break
            await trio.sleep(0.02)
        assert stored_watermark(log) == 2
        assert len(log._tail) == 0
        assert log.statistics().batches == 1  # the index-only commit is not a group


def stored_watermark(log: LmdbEventLog) -> int:
    raw_value: Any = log._read(lambda txn: txn.get(b"watermark", db=log._meta_db))
    return int(_U64.unpack(raw_value)[0])


async def test_a_watermark_moved_back_is_caught(tmp_path: Path) -> None:
    """Index entries past the stored watermark are not the writer's: verify names one."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        for i in range(10):
            await log.append(f"s{i % 3}", [raw(i)])
    with tampered(path) as db:
        db.txn.put(b"watermark", _U64.pack(6), db=db.meta)
    async with open_event_log(path, readonly=True) as reader:
        report = await reader.verify()
    assert not report.ok
    assert report.first_bad_seq is not None and report.first_bad_seq > 6
    assert "past its watermark 6" in (report.reason or "")


async def test_an_index_entry_below_the_watermark_is_checked_when_a_tail_is_pending(
    tmp_path: Path,
) -> None:
    """With commits still unflushed after a kill, an index entry below the watermark pointing
    elsewhere fails verify at its seq, as it does in a fully flushed log."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        for i in range(6):
            await log.append("s", [raw(i)])
    writer = IndexWriter(path)
    writer.append("s", 3)
    writer.kill()
    assert on_disk(path)[:2] == (6, 9)
    with tampered(path) as db:
        db.txn.put(b"s\x00" + struct.pack(">I", 4), _U64.pack(2), db=db.streams)
    async with open_event_log(path, readonly=True) as reader:
        report = await reader.verify()
    assert not report.ok
    assert report.first_bad_seq == 4, report
    assert msgspec.json.encode(report)  # a plain report, no exception
