"""`verify(jobs=N)`: the hashing split over N worker processes, each over a range of seqs, catches
tampering in every range and at every boundary between ranges, with the same report as one job.

Each test writes a real 90-event log, closes it, edits the file through py-lmdb as an attacker with
disk access would, and runs the workers (`check_in_workers`) directly as well as `verify`.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest
import trio

import tests.runtime.test_log_lmdb as lmdb_tests
from cuelog.runtime import VerifyReport, open_event_log
from cuelog.runtime._envelope import genesis_hash
from cuelog.runtime._verify import check_in_workers, split_ranges
from tests.runtime.log_contract import raw
from tests.tamper import Raw, tampered

EVENTS = 90
JOBS = 3
_U64 = struct.Struct(">Q")


def key(seq: int) -> bytes:
    return _U64.pack(seq)


def index_key(stream: str, version: int) -> bytes:
    return stream.encode() + b"\x00" + struct.pack(">I", version)


async def write_log(path: Path) -> None:
    async with open_event_log(path) as log:
        for i in range(EVENTS):
            await log.append(f"stream-{i % 4}", [raw({"i": i, "text": f"event {i}"})])


async def verify(path: Path, jobs: int) -> VerifyReport:
    async with open_event_log(path, readonly=True) as log:
        return await log.verify(jobs=jobs)


def workers_answer(path: Path, jobs: int = JOBS) -> object:
    """What the workers make of the log: the events checked, None, or a retry."""
    env = lmdb.open(str(path), readonly=True, max_dbs=8)
    try:
        events, meta = env.open_db(b"events", create=False), env.open_db(b"meta", create=False)
        with env.begin() as txn:
            total = int(txn.stat(events)["entries"])
            raw_mark = txn.get(b"watermark", db=meta)
            indexed = _U64.unpack(raw_mark)[0] if raw_mark is not None else total
            genesis = genesis_hash(txn.get(b"log_id", db=meta) or b"")
    finally:
        env.close()
    seen: list[int] = []
    answer = check_in_workers(
        str(path), True, genesis, total, indexed, jobs, lambda done, _: seen.append(done)
    )
    assert seen == sorted(seen)
    return answer


def ranges() -> list[tuple[int, int]]:
    return split_ranges(EVENTS, EVENTS, JOBS)


@pytest.mark.parametrize(("total", "indexed", "jobs"), [(90, 90, 3), (10, 0, 4), (5, 5, 9)])
def test_the_ranges_cover_every_seq_once(total: int, indexed: int, jobs: int) -> None:
    """Ranges are consecutive, non-empty, from seq 1 to the last, one per job (at most one per
    event); the last is shorter when it also walks a sizeable index."""
    split = split_ranges(total, indexed, jobs)
    assert len(split) == min(jobs, total)
    assert split[0][0] == 1 and split[-1][1] == total
    for (_, last), (first, end) in itertools.pairwise(split):
        assert first == last + 1 and first <= end
    if indexed and total >= 10 * len(split) > 10:
        assert split[-1][1] - split[-1][0] < split[0][1] - split[0][0]


async def test_an_intact_log_is_checked_by_the_workers(tmp_path: Path) -> None:
    """The workers answer for every event of an untouched log, and verify agrees."""
    await write_log(tmp_path)
    assert workers_answer(tmp_path) == EVENTS
    report = await verify(tmp_path, JOBS)
    assert (report.ok, report.checked) == (True, EVENTS)


async def test_a_deferred_index_is_checked_up_to_its_watermark(tmp_path: Path) -> None:
    """As a killed writer leaves it: the index holds the events up to seq 60 and the watermark
    says so; the workers check the rest of the records without index entries."""
    await write_log(tmp_path)
    with tampered(tmp_path) as db:
        for seq in range(61, EVENTS + 1):
            i = seq - 1
            assert db.txn.delete(index_key(f"stream-{i % 4}", i // 4 + 1), db=db.streams)
        db.txn.put(b"watermark", key(60), db=db.meta)
    assert workers_answer(tmp_path) == EVENTS
    assert (await verify(tmp_path, JOBS)).ok
    with tampered(tmp_path) as db:  # and an entry past the watermark is caught
        db.txn.put(index_key("stream-0", 16), key(61), db=db.streams)
    assert workers_answer(tmp_path) is None
    assert not (await verify(tmp_path, JOBS)).ok


def _edit(seq: int) -> Callable[[Raw], None]:
    def edit(db: Raw) -> None:
        value = bytearray(db.txn.get(key(seq), db=db.events))
        value[-1] ^= 1
        db.txn.put(key(seq), bytes(value), db=db.events)

    return edit


def _remove(seq: int) -> Callable[[Raw], None]:
    return lambda db: db.txn.delete(key(seq), db=db.events)


def _swap(seq: int) -> Callable[[Raw], None]:
    def swap(db: Raw) -> None:
        other = seq + 1 if seq < EVENTS else seq - 1
        mine = bytes(db.txn.get(key(seq), db=db.events))
        db.txn.put(key(seq), bytes(db.txn.get(key(other), db=db.events)), db=db.events)
        db.txn.put(key(other), mine, db=db.events)

    return swap


def _random_bytes(seq: int) -> Callable[[Raw], None]:
    return lambda db: db.txn.put(key(seq), random.Random(seq).randbytes(120), db=db.events)


def _rekey(seq: int) -> Callable[[Raw], None]:
    """The record moved to a 9-byte key that keeps its place in key order."""

    def rekey(db: Raw) -> None:
        value = bytes(db.txn.get(key(seq), db=db.events))
        db.txn.delete(key(seq), db=db.events)
        db.txn.put(key(seq - 1) + b"\x00", value, db=db.events)

    return rekey


def _repoint_index(seq: int) -> Callable[[Raw], None]:
    i = seq - 1
    return lambda db: db.txn.put(
        index_key(f"stream-{i % 4}", i // 4 + 1), key(seq % EVENTS + 1), db=db.streams
    )


def _drop_index(seq: int) -> Callable[[Raw], None]:
    i = seq - 1
    return lambda db: db.txn.delete(index_key(f"stream-{i % 4}", i // 4 + 1), db=db.streams)


def _junk_key(seq: int) -> Callable[[Raw], None]:
    """An extra record under a 9-byte key right after seq's."""
    return lambda db: db.txn.put(key(seq) + b"j", b"\x00" * 100, db=db.events)


def _junk_index_entry(seq: int) -> Callable[[Raw], None]:
    return lambda db: db.txn.put(index_key(f"ghost-{seq}", 1), b"", db=db.streams)


TAMPERS = {
    "junk key": _junk_key,
    "junk index entry": _junk_index_entry,
    "edit": _edit,
    "remove": _remove,
    "swap": _swap,
    "random bytes": _random_bytes,
    "rekey": _rekey,
    "repoint index": _repoint_index,
    "drop index": _drop_index,
}


def _positions() -> list[int]:
    """The first and last seq of every range, and one in the middle of each."""
    out: set[int] = set()
    for first, last in ranges():
        out |= {first, last, (first + last) // 2}
    return sorted(out)


@pytest.mark.parametrize("kind", sorted(TAMPERS))
async def test_tampering_in_any_range_is_caught_by_the_workers(tmp_path: Path, kind: str) -> None:
    """Each kind of tampering, at the first, middle and last seq of each range, makes the
    workers answer None, and verify with jobs reports exactly what it reports with one job."""
    assert len(ranges()) == JOBS
    await write_log(tmp_path / "clean")
    for seq in _positions():
        if kind == "rekey" and seq == 1:
            continue  # no key before seq 1 to move it after
        path = tmp_path / f"{kind}-{seq}"
        path.mkdir()
        (path / "data.mdb").write_bytes((tmp_path / "clean" / "data.mdb").read_bytes())
        with tampered(path) as db:
            TAMPERS[kind](seq)(db)
        assert workers_answer(path) is None, seq
        one, split = await verify(path, 1), await verify(path, JOBS)
        assert not one.ok, (kind, seq, one)
        assert split == one, (kind, seq)


async def test_verify_with_jobs_beside_a_running_writer(tmp_path: Path) -> None:
    """While a writer process appends, a read-only verify with jobs reports its own read txn's
    commit intact (workers that saw a later commit make it check in one process instead)."""
    await write_log(tmp_path)
    writer = lmdb_tests.WriterProcess(tmp_path)
    try:

        async def keep_appending() -> None:
            while True:
                await trio.to_thread.run_sync(writer.append, 20)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_appending)
            for _ in range(3):
                report = await verify(tmp_path, JOBS)
                assert report.ok, report
                assert report.checked >= EVENTS
            nursery.cancel_scope.cancel()
    finally:
        writer.stop()
    assert (await verify(tmp_path, JOBS)).ok
