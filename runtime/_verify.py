"""Walk a log's chain and stream index and name the first bad seq and why, for every backend.

A backend hands over its records as (u64be seq, stored record) pairs in seq order and its stream
index as (stream || 0x00 || u32be version, u64be seq) pairs, the LMDB key layout; the rules and
the reasons are the same whichever backend holds the bytes.

The fast path (`_verify_range.py`) touches each stored value once: one SHA-256 over the stored
bytes from offset 32 (exactly the hashed input), two 32-byte comparisons and a three-field msgpack
read of the body's head. The index is checked by comparing an order-independent fingerprint of its
entries from both sides: the sum of each entry's keyed hash (Python's SipHash of the entry's bytes,
keyed per process, so swapping entries changes the sum). The keys of the records are not checked
one by one up to the watermark: every index entry holds an 8-byte seq, so when the fingerprints
agree every record's key is 8 bytes; strictly increasing (the store sorts them), as many as there
are records and ending at that count, they are exactly 1..count. Only when anything disagrees does
the precise walk run, from the start, to name the first bad seq and why.

The fast path may run split over worker processes (`verify(jobs=N)`, LMDB only): each checks a
range of seqs and answers with its first `prev`, last `hash` and fingerprint; the ranges chain when
each starts with the hash the one before ends with (the first with the genesis hash), and their
fingerprints add up to the index's.

An index may be complete only up to a watermark (`indexed`: the LMDB log defers the entries of its
newest commits, see `_lmdb_index.py`): the index must then hold exactly the entries of the records
up to it, while the entries of the records after it are derived from those records themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import selectors
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import msgspec
import structlog

from cuelog.runtime._envelope import HASH_SIZE
from cuelog.runtime._lmdb_index import stored_watermark
from cuelog.runtime._records import Anchor, Progress, VerifyReport
from cuelog.runtime._verify_range import (
    PROGRESS_EVERY,
    RangeCheck,
    body_head,
    check_pairs,
    check_records,
    index_fingerprint,
)

log = structlog.get_logger("cuelog.verify")

Pairs = Iterable[tuple[bytes, bytes]]
Lookup = Callable[[bytes], bytes | None]

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


class _Bad(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason


def verify_environment(
    env: Any,
    events_db: Any,
    streams_db: Any,
    meta_db: Any,
    genesis: bytes,
    *,
    anchor: Anchor | None,
    anchor_key: bytes | None,
    progress: Progress | None,
    jobs: int = 1,
    lock: bool = True,
) -> VerifyReport:
    """Verify an LMDB log inside one read txn, so the report describes one commit. With
    `jobs` > 1 the fast check runs in that many worker processes, each over a range of seqs in
    a read-only open of its own (`_verify_range.py`); when a worker's read txn saw another
    commit than this one (a writer appended meanwhile), the check runs again in this process."""
    with env.begin() as txn:
        total = int(txn.stat(events_db)["entries"])
        indexed = stored_watermark(txn, meta_db, total)

        def in_process() -> int | None:
            checked = check_records(txn, events_db, 1, None, indexed, _done_of(progress, 1, total))
            index = index_fingerprint(txn.cursor(db=streams_db))
            return _fast_result([checked], index, genesis, total, indexed, whole=False)

        def fast() -> int | None:
            if jobs > 1 and total >= jobs:
                checked = check_in_workers(
                    env.path(), lock, genesis, total, indexed, jobs, progress
                )
                if not isinstance(checked, _Retry):
                    return checked
            return in_process()

        return verify_chain(
            lambda: txn.cursor(db=events_db),
            lambda: txn.cursor(db=streams_db),
            lambda key: txn.get(key, db=events_db),
            lambda key: txn.get(key, db=streams_db),
            genesis,
            total,
            anchor=anchor,
            anchor_key=anchor_key,
            progress=progress,
            indexed=indexed,
            fast=fast,
        )


def verify_chain(
    records: Callable[[], Pairs],
    index: Callable[[], Pairs],
    get_record: Lookup,
    get_index: Lookup,
    genesis: bytes,
    total: int,
    *,
    anchor: Anchor | None,
    anchor_key: bytes | None,
    progress: Progress | None,
    indexed: int | None = None,
    fast: Callable[[], int | None] | None = None,
) -> VerifyReport:
    """`records` and `index` start a fresh walk each call (the slow pass walks them again).
    `indexed`: the index holds the records up to this seq only (None: all of them).
    `fast`: the fast check (the number of events checked when all is intact, else None);
    by default one walk over `records` and one over `index`."""
    indexed = max(indexed, 0) if indexed is not None else 1 << 63
    if fast is None:
        checked = _fast_result(
            [check_pairs(iter(records()), 1, None, indexed, _done_of(progress, 1, total))],
            index_fingerprint(index()),
            genesis,
            total,
            indexed,
            whole=False,
        )
    else:
        checked = fast()
    if checked is not None:
        hash_at_anchor = None
        if anchor is not None and 0 < anchor.seq <= checked:
            record = get_record(_U64.pack(anchor.seq))  # verified by the walk
            hash_at_anchor = None if record is None else bytes(record[:HASH_SIZE])
        try:
            anchored = _check_anchor(anchor, anchor_key, checked, hash_at_anchor)
        except _Bad as bad:
            return VerifyReport(
                ok=False,
                checked=checked,
                head_seq=total,
                first_bad_seq=bad.seq,
                reason=bad.reason,
            )
        if progress is not None:
            progress(checked, total)
        return VerifyReport(ok=True, checked=checked, head_seq=checked, anchored_seq=anchored)
    try:
        checked, fingerprint, hash_at_anchor = _walk_chain(
            records(), genesis, total, anchor, progress, indexed
        )
        anchored = _check_anchor(anchor, anchor_key, checked, hash_at_anchor)
        _check_index(records, index, get_record, get_index, checked, fingerprint, indexed)
    except _Bad as bad:
        return VerifyReport(
            ok=False,
            checked=checked or max(bad.seq - 1, 0),
            head_seq=total,
            first_bad_seq=bad.seq,
            reason=bad.reason,
        )
    if progress is not None:
        progress(checked, total)
    return VerifyReport(ok=True, checked=checked, head_seq=checked, anchored_seq=anchored)


def _done_of(progress: Progress | None, first: int, total: int) -> Callable[[int], None] | None:
    """A range's progress (records done in it) as the whole walk's."""
    if progress is None:
        return None
    return lambda done: progress(first - 1 + done, total)


def _fast_result(
    ranges: list[RangeCheck | None],
    index: tuple[int, int] | None,
    genesis: bytes,
    total: int,
    indexed: int,
    *,
    whole: bool,
) -> int | None:
    """The number of events checked when the ranges (in seq order, from seq 1) chain from the
    genesis hash, one after another, and the index holds exactly their entries up to the
    watermark; else None. `whole`: the ranges must hold `total` events."""
    if index is None:
        return None
    prev = genesis
    count = 0
    fingerprint = 0
    for checked in ranges:
        if checked is None:
            return None
        if checked.events and checked.first_prev != prev:
            return None
        if checked.events:
            prev = checked.last_hash
        count += checked.events
        fingerprint += checked.fingerprint
    entries, index_fp = index
    if (whole and count != total) or entries != min(count, indexed) or index_fp != fingerprint:
        return None
    return count


# Below this many events a verify is over before worker processes would have started.
AUTO_JOBS_FROM = 100_000


def default_verify_jobs(events: int) -> int:
    """One job per CPU this process may run on for a log of `AUTO_JOBS_FROM` events or more."""
    if events < AUTO_JOBS_FROM:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


class _Retry:
    """The workers saw another commit than the verifier's read txn."""


_RETRY = _Retry()
# Weight of an index entry against a record in splitting the work: the index walk goes to the
# last worker, whose range of records is that much shorter. (Measured: 0.35-0.42 µs an entry
# against 2.2-2.8 µs a record, both in one worker.)
_INDEX_WEIGHT = 0.15
_WORKER = Path(__file__).with_name("_verify_range.py")


def split_ranges(total: int, indexed: int, jobs: int) -> list[tuple[int, int]]:
    """`jobs` consecutive (first, last) seq ranges covering 1..total, the last one shortened by
    the index walk its worker does too."""
    jobs = max(1, min(jobs, total))
    units = total + _INDEX_WEIGHT * min(total, indexed)
    share = max(int(units / jobs), 1)
    bounds = [min(k * share, total) for k in range(jobs)] + [total]
    # The last range keeps at least one record, so every worker walks something.
    bounds[-2] = min(bounds[-2], total - 1)
    for k in range(jobs - 2, 0, -1):
        bounds[k] = min(bounds[k], bounds[k + 1] - 1)
    return [(bounds[k] + 1, bounds[k + 1]) for k in range(jobs)]


def check_in_workers(
    path: str,
    lock: bool,
    genesis: bytes,
    total: int,
    indexed: int,
    jobs: int,
    progress: Progress | None,
) -> int | _Retry | None:
    """The fast check split over `jobs` worker processes: the number of events checked when
    all is intact, None when anything is off, `_RETRY` when a worker could not answer for this
    read txn's commit (it saw another, or failed to run)."""
    ranges = split_ranges(total, indexed, jobs)
    seed = str(secrets.randbelow(1 << 32))
    environ = {**os.environ, "PYTHONHASHSEED": seed}
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for k, (first, last) in enumerate(ranges):
            final = k == len(ranges) - 1
            args = [path, str(first), "-" if final else str(last), str(indexed)]
            args += ["1" if lock else "0", "1" if final else "0"]
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-P", str(_WORKER), *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,  # a worker's failure is logged, not printed
                    stdin=subprocess.DEVNULL,
                    env=environ,
                )
            )
        answers = _collect(workers, total, progress)
    except OSError as exc:
        log.warning("cannot start verify workers; verifying in one process", error=str(exc))
        return _RETRY
    finally:
        errors = []
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            errors.append(worker.communicate()[1])  # waits, and closes the pipes
    failed = [error for worker, error in zip(workers, errors, strict=True) if worker.returncode]
    if failed or len(answers) != len(workers):
        last_line = failed[0].decode(errors="replace").strip().splitlines()[-1:] if failed else []
        log.warning("a verify worker failed; verifying in one process", error=last_line)
        return _RETRY
    results: list[RangeCheck | None] = []
    index: tuple[int, int] | None = None
    for answer in answers:
        if answer is None:
            results.append(None)
            continue
        if answer["entries"] != total or answer["watermark"] != min(indexed, total):
            return _RETRY
        results.append(
            RangeCheck(
                answer["count"],
                bytes.fromhex(answer["first_prev"]),
                bytes.fromhex(answer["last_hash"]),
                answer["fingerprint"],
            )
        )
        if answer["index"] is not None:
            index = (answer["index"][0], answer["index"][1])
    return _fast_result(results, index, genesis, total, indexed, whole=True)


def _collect(
    workers: list[subprocess.Popen[bytes]], total: int, progress: Progress | None
) -> list[Any]:
    """Each worker's final answer, in order, reporting the sum of their progress meanwhile."""
    done = [0] * len(workers)
    answers: list[Any] = [_NO_ANSWER] * len(workers)
    pending = [b""] * len(workers)
    with selectors.DefaultSelector() as selector:
        for k, worker in enumerate(workers):
            assert worker.stdout is not None
            selector.register(worker.stdout, selectors.EVENT_READ, k)
        open_pipes = len(workers)
        while open_pipes:
            for ready, _ in selector.select():
                k = ready.data
                chunk = os.read(ready.fd, 1 << 16)
                if not chunk:
                    selector.unregister(ready.fileobj)
                    open_pipes -= 1
                    continue
                *lines, pending[k] = (pending[k] + chunk).split(b"\n")
                for line in lines:
                    if line.isdigit():
                        done[k] = int(line)
                    else:
                        with suppress(ValueError):
                            answers[k] = json.loads(line)
                if progress is not None and lines:
                    progress(min(sum(done), total), total)
    return [answer for answer in answers if answer is not _NO_ANSWER]


_NO_ANSWER = object()


def _walk_chain(
    records: Pairs,
    genesis: bytes,
    total: int,
    anchor: Anchor | None,
    progress: Progress | None,
    indexed: int,
) -> tuple[int, int, bytes | None]:
    """Return (events checked, fingerprint of the index entries up to `indexed`, hash at the
    anchored seq)."""
    sha256 = hashlib.sha256
    unpack = _U64.unpack
    decode_head = body_head.decode
    anchor_seq = anchor.seq if anchor is not None else -1
    hash_at_anchor: bytes | None = None
    prev = genesis
    expected = 1
    index_fp = 0
    pack32 = _U32.pack
    for key, value in records:
        if len(key) != 8 or len(value) <= 2 * HASH_SIZE:
            raise _Bad(expected, f"record after seq {expected - 1} is malformed")
        seq = unpack(key)[0]
        if seq != expected:
            raise _Bad(expected, f"seq {expected} is missing (event removed); next is {seq}")
        if value[HASH_SIZE : 2 * HASH_SIZE] != prev:
            raise _Bad(seq, _diagnose_link(value, seq))
        digest = sha256(value[HASH_SIZE:]).digest()
        if digest != value[:HASH_SIZE]:
            raise _Bad(seq, "content does not match its hash (payload edited)")
        try:
            head = decode_head(value[2 * HASH_SIZE :])
        except msgspec.DecodeError:
            raise _Bad(seq, "record body is not a valid envelope") from None
        if head.seq != seq:
            raise _Bad(seq, f"record stored at seq {seq} says it is seq {head.seq} (moved)")
        if seq <= indexed:
            index_fp += hash(head.stream.encode() + b"\x00" + pack32(head.version) + key)
        if seq == anchor_seq:
            hash_at_anchor = digest
        prev = digest
        expected += 1
        if progress is not None and seq % PROGRESS_EVERY == 0:
            progress(seq, total)
    return expected - 1, index_fp, hash_at_anchor


def _diagnose_link(value: bytes, seq: int) -> str:
    try:
        head = body_head.decode(value[2 * HASH_SIZE :])
    except msgspec.DecodeError:
        return "record body is not a valid envelope"
    if head.seq != seq:
        return f"record stored at seq {seq} says it is seq {head.seq} (events swapped or moved)"
    return f"prev hash does not match seq {seq - 1} (an earlier event was removed or replaced)"


def _check_index(
    records: Callable[[], Pairs],
    index: Callable[[], Pairs],
    get_record: Lookup,
    get_index: Lookup,
    count: int,
    events_fp: int,
    indexed: int,
) -> None:
    index_fp = 0
    entries = 0
    for key, seq_bytes in index():
        if len(key) < 6 or len(seq_bytes) != 8:
            index_fp = -1
            break
        index_fp += hash(key + seq_bytes)
        entries += 1
    if entries == min(count, indexed) and index_fp == events_fp:
        return
    _find_bad_index_entry(records, index, get_record, get_index, indexed)


def _find_bad_index_entry(
    records: Callable[[], Pairs],
    index: Callable[[], Pairs],
    get_record: Lookup,
    get_index: Lookup,
    indexed: int,
) -> None:
    for key, value in records():
        seq = _U64.unpack(key)[0]
        if seq > indexed:
            break
        head = body_head.decode(value[2 * HASH_SIZE :])
        index_key = head.stream.encode() + b"\x00" + _U32.pack(head.version)
        found = get_index(index_key)
        if found is None:
            raise _Bad(seq, f"stream index has no entry for {head.stream!r} v{head.version}")
        if found != key:
            other = _U64.unpack(found)[0] if len(found) == 8 else found.hex()
            raise _Bad(
                seq,
                f"stream index maps {head.stream!r} v{head.version} to seq {other}, not {seq}",
            )
    for key, seq_bytes in index():
        if len(seq_bytes) != 8:
            raise _Bad(0, f"stream index entry {key!r} holds a malformed seq")
        record = get_record(seq_bytes)
        seq = _U64.unpack(seq_bytes)[0]
        if record is None:
            raise _Bad(seq, f"stream index entry {key!r} points to a missing seq")
        if seq > indexed:
            raise _Bad(
                seq, f"stream index entry {key!r} names seq {seq}, past its watermark {indexed}"
            )
        head = body_head.decode(record[2 * HASH_SIZE :])
        if head.stream.encode() + b"\x00" + _U32.pack(head.version) != key:
            raise _Bad(seq, f"stream index entry {key!r} points to seq {seq}, another event's")
    raise _Bad(0, "the stream index does not match the events (an entry was added or changed)")


def _check_anchor(
    anchor: Anchor | None, key: bytes | None, head_seq: int, hash_at_anchor: bytes | None
) -> int | None:
    if anchor is None:
        if key is not None:
            raise _Bad(head_seq, "an anchor key was given but the log holds no anchor")
        return None
    if key is None:
        return None  # an anchor can only be checked with its key
    if anchor.seq < 0 or len(anchor.hash) != HASH_SIZE or not anchor.is_sealed_by(key):
        raise _Bad(
            max(anchor.seq, 0),
            "the anchor's MAC does not match the key (forged anchor or wrong key)",
        )
    if anchor.seq > head_seq:
        raise _Bad(
            head_seq + 1,
            f"log ends at seq {head_seq} but seq {anchor.seq} was anchored (tail truncated)",
        )
    if anchor.seq > 0 and hash_at_anchor != anchor.hash:
        raise _Bad(
            anchor.seq,
            f"seq {anchor.seq} no longer has its anchored hash (log rewritten at or before it)",
        )
    return anchor.seq
