"""The LMDB event log: one writer task, group commit, fsync before any ack, a SHA-256 chain.

Named databases in one LMDB environment (see docs/log-format.md):

    events     u64be seq                      -> hash(32) || prev(32) || body
    streams    stream utf-8 || 0x00 || u32be   -> u64be seq
    idem       idempotency key utf-8           -> u64be first seq || u32be count || digest(32)
    snapshots  stream utf-8                    -> u32be version || state bytes
    meta       b"format", b"log_id", b"anchor", b"watermark"

The `streams` index is deferred (`_lmdb_index.py`): complete up to `meta/watermark`, the entries
of later events kept in memory and written every few commits.

The record layout and hash rule are the backend-neutral envelope (`_envelope.py`): the stored
value from byte 32 on is exactly the hashed input, so verification hashes stored bytes and never
re-encodes anything.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar, final

import lmdb
import msgspec
import structlog
import trio

from cuelog.runtime._content import CONTENT_DIR, LocalContentStore, with_content_check
from cuelog.runtime._envelope import (
    BODY_OFFSET,
    HASH_SIZE,
    decode_record,
    genesis_hash,
    now_us,
)
from cuelog.runtime._errors import (
    IdempotencyConflict,
    LogClosed,
    LogError,
    LogFormatError,
    LogLocked,
    LogLost,
    StorageFull,
    WrongExpectedVersion,
)
from cuelog.runtime._follow import CommitSignal, PullSubscriptions, RecentEvents
from cuelog.runtime._lmdb_index import WATERMARK, IndexTail, read_tail
from cuelog.runtime._pending import GroupCommitAppends, PendingAppend
from cuelog.runtime._records import (
    Anchor,
    Head,
    LogStatistics,
    Progress,
    RecordedEvent,
    StoredRecord,
    VerifyReport,
)

log = structlog.get_logger("cuelog.log")

T = TypeVar("T")
FORMAT_VERSION: Final = 2
# Format 1 wrote every index entry in its commit; format 2 defers them behind `meta/watermark`. A
# writer opening a format 1 log marks it format 2, so a cuelog that knows only format 1 refuses it.
READABLE_FORMATS: Final = frozenset({1, FORMAT_VERSION})
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_IDEM = struct.Struct(">QI")
_VERSION_CACHE_LIMIT = 100_000
# How often an idle writer checks that data.mdb is still the file it locked.
_WRITER_CHECK_INTERVAL = 1.0
# How often a read-only open's subscribers look for another process's commits.
POLL_SECONDS: Final = 0.05
# A crowd of appends at least this large arriving while nothing commits may be split in two.
_SPLIT_AT = 32
# Weight of the newest sample in the moving averages that choose between the two ways of
# grouping: overlapped (two groups alternate) or in step (one group, everyone waits).
_EWMA = 0.2
# The deferred stream index is written out with every this many group commits, ...
_FLUSH_EVERY = 16
# ... or sooner once it holds this many entries, ...
_TAIL_LIMIT = 4096
# ... or once the writer has had nothing to do for this long (and when the log closes).
_IDLE_FLUSH = 0.1


def _file_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _stream_key(stream: str, version: int) -> bytes:
    return stream.encode() + b"\x00" + _U32.pack(version)


class _OtherWrite:
    """A write outside the chain (snapshot, anchor) that rides on the next group commit."""

    __slots__ = ("db", "done", "error", "key", "value")

    def __init__(self, db: str, key: bytes, value: bytes | None) -> None:
        self.db = db
        self.key = key
        self.value = value
        self.done = trio.Event()
        self.error: BaseException | None = None


class _Plan:
    """A group commit: every key and value to write, and the appends it answers.

    Appends join the forming group as they arrive (checked and encoded at once), while the
    previous group commits; a plan is built on top of the one before it (its tail, its stream
    versions, its idempotency keys), so when a commit fails the plan after it is built again.
    """

    __slots__ = (
        "claimed",
        "conflicts",
        "events",
        "flush_only",
        "flushing",
        "idem",
        "index",
        "other",
        "replays",
        "requests",
        "tail_hash",
        "tail_seq",
        "versions",
    )

    def __init__(self, tail_seq: int, tail_hash: bytes) -> None:
        self.events: list[tuple[bytes, bytes]] = []
        self.index: list[tuple[str, int, int]] = []  # (stream, version, seq) of each event
        # Set when this commit writes out the deferred index: the committed tail's entries,
        # then this group's.
        self.flushing: list[tuple[str, int, int]] | None = None
        self.flush_only = False  # a commit made only to write out the index
        self.idem: list[tuple[bytes, bytes]] = []
        self.other: list[_OtherWrite] = []
        self.requests: list[PendingAppend] = []
        self.claimed: dict[str, PendingAppend] = {}
        self.versions: dict[str, int] = {}
        self.tail_seq = tail_seq
        self.tail_hash = tail_hash
        self.conflicts = 0
        self.replays = 0

    def __bool__(self) -> bool:
        return bool(self.requests or self.other or self.flush_only)


@final
class LmdbEventLog(GroupCommitAppends, PullSubscriptions):
    """The embedded event log. Open it with `open_event_log`, never directly."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool,
        sync: bool,
        initial_map_size: int,
        max_map_size: int,
        max_event_bytes: int,
        clock: Callable[[], int],
        commit_in_thread: bool,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.content = LocalContentStore(path / CONTENT_DIR, readonly=readonly)
        self._sync = sync
        self._max_map_size = max_map_size
        self.max_event_bytes = max_event_bytes
        self._clock = clock
        self._commit_in_thread = commit_in_thread
        self._lock_fd: int | None = None
        self._lock_file_id: tuple[int, int] | None = None
        self._data_file = str(path / "data.mdb")  # stat'ed at every wake of the writer
        self._closed = False
        self._pending: list[PendingAppend] = []
        self._other: list[_OtherWrite] = []
        self._wake_writer = trio.Event()
        self._commits = CommitSignal()
        self._recent = RecentEvents()  # this writer's latest commits, for subscribers
        self._versions: dict[str, int] = {}
        # The index entries of committed events after the watermark (a writer's, kept as its
        # commits land; a reader's, rebuilt from the records its read txn sees).
        self._tail = IndexTail(0)
        self._flush_blocked = False  # the last write of the deferred index failed
        self._at_ceiling = False  # the map has reached its maximum size
        self._forming: _Plan | None = None  # the group appends join now
        self._inflight: _Plan | None = None  # the group being committed
        # Moving averages, in seconds: how long a group commit takes, and how long the
        # appenders of a group take to come back with their next appends once acknowledged.
        self._commit_time = 0.0
        self._return_time = 0.0
        self._acked_at: float | None = None
        self._writer_stopped: LogError | None = None  # why the writer ended, once it has
        self._limiter = trio.CapacityLimiter(1)
        self._subscribers = 0
        self._thread_readers = 0  # read txns held in worker threads (verify)
        self._subscriptions_ended = False
        self._readers_gone = trio.Event()
        # counters
        self._appends = 0
        self._events_appended = 0
        self._batches = 0
        self._largest_batch = 0
        self._commit_seconds = 0.0
        self._conflicts = 0
        self._replays = 0

        if not readonly:
            self._take_lock()
        self._env: Any = None
        try:
            self._env = self._open_env(initial_map_size)
            try:
                self._events_db = self._env.open_db(b"events", create=not readonly)
                self._streams_db = self._env.open_db(b"streams", create=not readonly)
                self._idem_db = self._env.open_db(b"idem", create=not readonly)
                self._snapshots_db = self._env.open_db(b"snapshots", create=not readonly)
                self._meta_db = self._env.open_db(b"meta", create=not readonly)
            except lmdb.Error as exc:
                raise LogFormatError(f"{self.path} is not a cuelog log: {exc}") from exc
            recover = not readonly
            while True:
                try:
                    loaded = self._load_meta_and_tail(recover=recover)
                    break
                except lmdb.MapFullError:  # no room to write out the index a crash left
                    size = self._env.info()["map_size"]
                    if size < max_map_size:
                        self._env.set_mapsize(min(size * 2, max_map_size))
                    else:
                        recover = False  # keep those entries in memory, as a running writer
                        self._flush_blocked = True
            self._log_id, self._tail_seq, self._tail_hash = loaded
            self._at_ceiling = self._env.info()["map_size"] >= max_map_size
        except BaseException:
            if self._env is not None:
                self._env.close()
            self._release_lock()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        # The writer's lock is an flock on data.mdb, the file that holds the log: deleting it
        # deletes the log, so no one can sidestep the lock by deleting a lock file (writer.lock
        # only names the holder's pid for the error message). LMDB's own locks are POSIX record
        # locks on lock.mdb, which an flock neither sees nor disturbs, and closing this fd drops
        # none of them (POSIX locks go with the file, and this is another file). An empty
        # data.mdb is what LMDB expects of a new environment.
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "data.mdb", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LogError(f"cannot write the data dir {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogLocked(str(self.path), self._holder_pid()) from None
        self._lock_fd = fd
        self._lock_file_id = _file_id(os.fstat(fd))
        with suppress(OSError):  # only names the holder; the flock above is the lock
            (self.path / "writer.lock").write_text(f"{os.getpid()}\n")

    def _holder_pid(self) -> int | None:
        try:
            raw = (self.path / "writer.lock").read_text(errors="replace").strip()
        except OSError:
            return None
        return int(raw) if raw.isdigit() else None

    def _lock_file_unwritable(self) -> bool:
        lock_file = self.path / "lock.mdb"
        return not os.access(lock_file if lock_file.exists() else self.path, os.W_OK)

    def _share_lock(self) -> None:
        # A reader that cannot write lock.mdb (a copy on read-only media, a directory it may
        # only read) opens LMDB without its lock file, which is safe only while nobody writes:
        # a shared flock on data.mdb is refused while a writer holds it, and keeps one from
        # starting until this reader closes.
        fd = os.open(self.path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self._holder_pid()
            raise LogError(
                f"cannot read {self.path} while {f'pid {pid}' if pid else 'another process'} "
                "writes it: lock.mdb is not writable here; verify a copy (cuelog backup) instead"
            ) from None
        self._lock_fd = fd

    def _check_still_writer(self) -> None:
        """Raise `LogLost` when data.mdb was removed or replaced under this writer."""
        try:
            current = _file_id(os.stat(self._data_file))
        except OSError:
            current = None
        if current != self._lock_file_id:
            raise LogLost(
                f"data dir {self.path}: data.mdb was removed or replaced while this process was "
                "writing it; stopping (restore the data dir, then restart)"
            )

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open_env(self, map_size: int) -> Any:
        if self.readonly and not (self.path / "data.mdb").exists():
            raise LogFormatError(f"no cuelog log at {self.path} (data.mdb is missing)")
        lock = not (self.readonly and self._lock_file_unwritable())
        self._env_locked = lock
        if not lock:
            self._share_lock()
        try:
            env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=8,
                max_readers=1024,
                readonly=self.readonly,
                sync=self._sync,
                metasync=self._sync,
                readahead=False,
                create=not self.readonly,
                lock=lock,
            )
        except lmdb.Error as exc:
            raise LogFormatError(f"cannot open the log at {self.path}: {exc}") from exc
        if not self.readonly:
            env.reader_check()
        return env

    def _load_meta_and_tail(self, *, recover: bool) -> tuple[bytes, int, bytes]:
        # Read the tail inside a write txn: after a crash a read txn can see an older tail.
        with self._env.begin(write=not self.readonly) as txn:
            fmt = txn.get(b"format", db=self._meta_db)
            if fmt is None:
                if self.readonly:
                    raise LogFormatError(f"{self.path} is not a cuelog log (no format marker)")
                log_id = os.urandom(16)
                txn.put(b"format", _U32.pack(FORMAT_VERSION), db=self._meta_db)
                txn.put(b"log_id", log_id, db=self._meta_db)
            else:
                version = _U32.unpack(fmt)[0] if len(fmt) == 4 else -1
                if version not in READABLE_FORMATS:
                    raise LogFormatError(
                        f"{self.path} was written in log format {version}; this cuelog reads "
                        f"formats 1 to {FORMAT_VERSION}: upgrade cuelog to open it"
                    )
                if version != FORMAT_VERSION and not self.readonly:
                    txn.put(b"format", _U32.pack(FORMAT_VERSION), db=self._meta_db)
                log_id = bytes(txn.get(b"log_id", db=self._meta_db))
            cursor = txn.cursor(db=self._events_db)
            seq, tail_hash = 0, genesis_hash(log_id)
            if cursor.last():
                if len(cursor.key()) == 8 and len(cursor.value()) >= HASH_SIZE:
                    seq = _U64.unpack(cursor.key())[0]
                    tail_hash = bytes(cursor.value()[:HASH_SIZE])
                elif not self.readonly:  # readers may still open it, to verify
                    raise LogFormatError(
                        f"{self.path}: the last event record is malformed; run `cuelog verify`"
                    )
            self._tail = read_tail(
                txn, self._events_db, self._meta_db, None, strict=not self.readonly
            )
            if recover:
                # Recover the index of the events a crash left after the watermark (at most a
                # few commits' worth) and move the watermark to the tail, in this txn.
                self._put_index(txn, self._tail.entries)
                if txn.get(WATERMARK, db=self._meta_db) != _U64.pack(seq):
                    txn.put(WATERMARK, _U64.pack(seq), db=self._meta_db)
                self._tail = IndexTail(seq)
        return log_id, seq, tail_hash

    def _put_index(self, txn: Any, entries: list[tuple[str, int, int]]) -> None:
        if entries:
            index = sorted((_stream_key(s, v), _U64.pack(q)) for s, v, q in entries)
            txn.cursor(db=self._streams_db).putmulti(index)

    def _close(self) -> None:
        self._env.close()
        self._release_lock()

    # -- appending -----------------------------------------------------------------------------

    async def save_snapshot(self, stream: str, version: int, state: bytes) -> None:
        """Store a snapshot of a stream's folded state (not part of the chain)."""
        await self._write_other("snapshots", stream.encode(), _U32.pack(version) + state)

    async def _write_other(self, db: str, key: bytes, value: bytes | None) -> None:
        if self._closed or self.readonly:
            raise LogClosed("the log is closed" if self._closed else "the log is read-only")
        write = _OtherWrite(db, key, value)
        self._other.append(write)
        self._wake_writer.set()
        # Ride on the next group commit and return once that commit is durable.
        await write.done.wait()
        if write.error is not None:
            raise write.error

    async def _writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._forming = _Plan(self._tail_seq, self._tail_hash)
        async with trio.open_nursery() as commits:
            task_status.started()
            try:
                await self._form_groups(commits)
            except LogLost as lost:
                self._stop_forming(lost)
                raise
            finally:
                self._stop_forming(LogClosed("the log closed before this append was written"))

    async def _form_groups(self, commits: trio.Nursery) -> None:
        assert self._forming is not None
        while True:
            with trio.move_on_after(_IDLE_FLUSH if self._tail else _WRITER_CHECK_INTERVAL):
                await self._wake_writer.wait()
            # Raising here ends the log's nursery, and with it whatever serves on this log.
            self._check_still_writer()
            if not self._wake_writer.is_set():
                if (
                    self._tail
                    and not self._flush_blocked
                    and self._inflight is None
                    and not self._forming
                ):
                    self._flush_index(commits)  # idle: write out the deferred index
                continue
            # Let every appender that is already runnable join this group.
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._wake_writer = trio.Event()
            batch, self._pending = self._pending, []
            other, self._other = self._other, []
            self._forming.other += other
            if batch and self._acked_at is not None:
                returned = time.perf_counter() - self._acked_at
                self._return_time += _EWMA * (returned - self._return_time)
                self._acked_at = None
            if (
                self._inflight is None
                and not self._forming
                and len(batch) >= _SPLIT_AT
                and self._return_time >= self._commit_time
            ):
                # Nothing commits, a crowd arrived at once, and appenders take longer to
                # come back than a commit takes: commit half of the crowd now and form the
                # other half meanwhile, so that from here on one group forms while the
                # other commits, instead of every appender waiting in step.
                half, batch = batch[: len(batch) // 2], batch[len(batch) // 2 :]
                self._absorb(self._forming, half)
                self._start_commit(commits)
            self._absorb(self._forming, batch)
            if self._inflight is None and self._forming:
                self._start_commit(commits)
            if (
                self._closed
                and self._inflight is None
                and not (self._pending or self._other or self._forming)
            ):
                if not self._tail or self._flush_blocked:
                    return
                self._flush_index(commits)  # the last commit writes out the index

    def _flush_index(self, commits: trio.Nursery) -> None:
        """Commit the deferred index (and only that) now."""
        assert self._forming is not None
        self._forming.flush_only = True
        self._start_commit(commits)

    def _stop_forming(self, error: LogError) -> None:
        """The writer ended: nobody starts another group, so a group still forming fails."""
        if self._writer_stopped is None:
            self._writer_stopped = error
        if self._inflight is None:
            self._fail_forming()

    def _fail_forming(self) -> None:
        forming = self._forming
        if not forming:
            return
        assert forming is not None and self._writer_stopped is not None
        self._forming = self._next_plan(forming)
        for request in forming.requests:
            request.result = None
            request.error = self._writer_stopped
            assert request.task is not None
            trio.lowlevel.reschedule(request.task)
        for write in forming.other:
            write.error = self._writer_stopped
            write.done.set()

    def _start_commit(self, commits: trio.Nursery) -> None:
        assert self._inflight is None and self._forming is not None
        self._inflight, self._forming = self._forming, self._next_plan(self._forming)
        commits.start_soon(self._commit_groups)

    def _next_plan(self, after: _Plan) -> _Plan:
        return _Plan(after.tail_seq, after.tail_hash)

    async def _commit_groups(self) -> None:
        """Commit the in-flight group; then, while it was committing, the next group formed:
        commit that one at once, until no group is waiting. Acks follow their group's fsync."""
        with trio.CancelScope(shield=True):
            while self._inflight is not None:
                plan = self._inflight
                error = await self._commit(plan)
                assert self._forming is not None
                if error is not None:
                    # The forming group was built on top of the failed one: build it again.
                    forming = self._forming
                    self._forming = _Plan(self._tail_seq, self._tail_hash)
                    self._forming.other = forming.other
                    for request in forming.requests:
                        request.result = None
                        request.error = None
                    self._absorb(self._forming, forming.requests)
                self._answer(plan, error)
                if self._writer_stopped is not None:
                    self._fail_forming()
                    self._inflight = None
                elif self._forming and 2 * self._return_time < self._commit_time:
                    # The appenders just acknowledged come back sooner than a commit takes:
                    # let them join the waiting group (one bigger commit) instead of
                    # committing it without them. The writer starts it once they are in.
                    self._inflight = None
                elif self._forming:
                    self._inflight, self._forming = self._forming, self._next_plan(self._forming)
                else:
                    self._inflight = None
        self._wake_writer.set()  # a closing writer waits for the last commit

    async def _commit(self, plan: _Plan) -> BaseException | None:
        """Write the plan durably; on success move the committed tail. Return the error."""
        error: BaseException | None = None
        started = time.perf_counter()
        tail = self._tail
        if (
            plan.flush_only
            or self._closed
            # A map that cannot grow has no room to defer into: the index goes with each
            # commit, so that a full log refuses the append that does not fit, not a later
            # write of entries already acknowledged.
            or self._at_ceiling
            or tail.commits + 1 >= _FLUSH_EVERY
            or len(tail) + len(plan.index) >= _TAIL_LIMIT
        ):
            plan.flushing = tail.entries + plan.index
        while True:
            try:
                if self._commit_in_thread and (len(plan.events) > 1 or plan.flushing):
                    await trio.to_thread.run_sync(self._write, plan, limiter=self._limiter)
                else:
                    self._write(plan)
                break
            except lmdb.MapFullError:
                if await self._grow_map():
                    continue
                if plan.flushing is not None:
                    self._flush_blocked = True
                    if not plan.flush_only:
                        # No room for the deferred index: commit the group without it (its
                        # entries wait in memory), so that only appends that do not fit fail.
                        plan.flushing = None
                        continue
                error = StorageFull(
                    f"the log reached its maximum size of {self._max_map_size} bytes; "
                    "free space or raise log.max_size"
                )
                break
            except lmdb.Error as exc:
                log.error("commit failed", error=str(exc))
                error = LogError(f"commit failed: {exc}")
                if plan.flushing is not None:
                    self._flush_blocked = True
                break
        if error is None:
            self._tail_seq, self._tail_hash = plan.tail_seq, plan.tail_hash
            if len(self._versions) + len(plan.versions) > _VERSION_CACHE_LIMIT:
                self._versions.clear()
            self._versions.update(plan.versions)
            if plan.flushing is not None:
                self._tail = IndexTail(plan.tail_seq)
                self._flush_blocked = False
            else:
                tail.add(plan.index)
                tail.commits += 1
            if not (plan.requests or plan.other):
                return None  # only the index was written: no group to count
            self._batches += 1
            self._largest_batch = max(self._largest_batch, len(plan.requests))
            elapsed = time.perf_counter() - started
            self._commit_seconds += elapsed
            self._commit_time += _EWMA * (elapsed - self._commit_time)
            self._events_appended += len(plan.events)
        return error

    def _answer(self, plan: _Plan, error: BaseException | None) -> None:
        """Wake every append and write of a group once its commit is durable (or failed)."""
        self._conflicts += plan.conflicts
        self._replays += plan.replays
        self._appends += len(plan.requests)
        for request in plan.requests:
            if error is not None and request.error is None:
                request.error = error
                request.result = None
            assert request.task is not None
            trio.lowlevel.reschedule(request.task)
        for write in plan.other:
            write.error = error
            write.done.set()
        if error is None:
            for request in plan.requests:
                if request.result:
                    self._recent.add(request.result)
        self._wake_subscribers(
            part[0] for request in plan.requests if request.result for part in request.parts
        )
        self._acked_at = time.perf_counter()

    async def _grow_map(self) -> bool:
        size = self._env.info()["map_size"]
        if size >= self._max_map_size:
            return False
        new_size = min(size * 2, self._max_map_size)
        # LMDB forbids resizing while any read txn is open: wait for verifications in threads.
        while self._thread_readers:
            await self._readers_gone.wait()
        self._env.set_mapsize(new_size)
        self._at_ceiling = new_size >= self._max_map_size
        log.info("log map grown", map_size=new_size)
        return True

    def _absorb(self, plan: _Plan, batch: list[PendingAppend]) -> None:
        """Check and encode each append into `plan`, chained after what it already holds."""
        if not batch:
            return
        ts = self._clock()
        inflight = self._inflight if self._inflight is not plan else None
        with self._env.begin() as txn:
            for request in batch:
                request.taken = True
                plan.requests.append(request)
                try:
                    self._absorb_one(plan, inflight, txn, request, ts)
                except Exception as exc:  # a bad index or idem record must not kill the writer
                    log.error("cannot plan an append", error=repr(exc))
                    request.error = LogError(f"cannot append: {exc}")

    def _absorb_one(
        self, plan: _Plan, inflight: _Plan | None, txn: Any, request: PendingAppend, ts: int
    ) -> None:
        if request.idem is not None:
            first = plan.claimed.get(request.idem)
            if first is None and inflight is not None:
                first = inflight.claimed.get(request.idem)
            if first is not None:
                # A repeat of an append in this group or the one committing takes its records.
                if self._is_repeat(plan, request, first.digest):
                    request.result = first.result
                return
            stored = txn.get(request.idem.encode(), db=self._idem_db)
            if stored is not None:
                first_seq, count = _IDEM.unpack(stored[: _IDEM.size])
                if self._is_repeat(plan, request, bytes(stored[_IDEM.size :])):
                    request.result = self._read_range(txn, first_seq, count)
                return
        if len(request.parts) == 1:
            self._absorb_single(plan, inflight, txn, request, ts)
            return
        # Every part's expected version is checked before anything is planned: a conflict in
        # any part fails the whole append and writes nothing.
        currents: list[int] = []
        for part_stream, _, expected, _ in request.parts:
            current = self._planned_version(plan, inflight, txn, part_stream)
            if expected is not None and expected != current:
                plan.conflicts += 1
                request.error = WrongExpectedVersion(part_stream, expected, current)
                return
            currents.append(current)
        seq, prev = plan.tail_seq, plan.tail_hash
        records: list[RecordedEvent] = []
        for record, value in request.encode(currents, seq, prev, ts):
            plan.events.append((_U64.pack(record.seq), value))
            plan.index.append((record.stream, record.version, record.seq))
            records.append(record)
            seq, prev = record.seq, record.hash
        for (part_stream, events, _, _), base in zip(request.parts, currents, strict=True):
            plan.versions[part_stream] = base + len(events)
        plan.tail_seq, plan.tail_hash = seq, prev
        request.result = records
        if request.idem is not None:
            plan.claimed[request.idem] = request
            plan.idem.append(
                (request.idem.encode(), _IDEM.pack(records[0].seq, len(records)) + request.digest)
            )

    def _planned_version(self, plan: _Plan, inflight: _Plan | None, txn: Any, stream: str) -> int:
        """A stream's version after the groups planned so far (this one, the one committing),
        else as committed."""
        current = plan.versions.get(stream)
        if current is None and inflight is not None:
            current = inflight.versions.get(stream)
        return self._version_in(txn, stream) if current is None else current

    def _absorb_single(
        self, plan: _Plan, inflight: _Plan | None, txn: Any, request: PendingAppend, ts: int
    ) -> None:
        """`_absorb_one` for an append to one stream (nearly every append), with less work."""
        stream, events, expected, actor = request.parts[0]
        current = self._planned_version(plan, inflight, txn, stream)
        if expected is not None and expected != current:
            plan.conflicts += 1
            request.error = WrongExpectedVersion(stream, expected, current)
            return
        seq, prev = plan.tail_seq, plan.tail_hash
        first = seq + 1
        records = request.encode_part(
            stream, events, actor, current, seq, prev, ts, plan.events, plan.index
        )
        last = records[-1]
        plan.versions[stream] = last.version
        plan.tail_seq, plan.tail_hash = last.seq, last.hash
        request.result = records
        if request.idem is not None:
            plan.claimed[request.idem] = request
            plan.idem.append(
                (request.idem.encode(), _IDEM.pack(first, len(records)) + request.digest)
            )

    def _is_repeat(self, plan: _Plan, request: PendingAppend, original_digest: bytes) -> bool:
        """A reused idempotency key: the same body is a repeat, another body a conflict."""
        assert request.idem is not None
        if original_digest != request.digest:
            plan.conflicts += 1
            request.error = IdempotencyConflict(request.idem)
            return False
        plan.replays += 1
        return True

    def _write(self, plan: _Plan) -> None:
        with self._env.begin(write=True) as txn:
            if plan.events:
                cursor = txn.cursor(db=self._events_db)
                _, added = cursor.putmulti(plan.events, append=True)
                if added != len(plan.events):
                    raise LogFormatError("events are not strictly after the tail")
                if plan.idem:
                    txn.cursor(db=self._idem_db).putmulti(plan.idem)
            if plan.flushing is not None:
                # The deferred index, and the watermark that says it is complete up to here.
                self._put_index(txn, plan.flushing)
                txn.put(WATERMARK, _U64.pack(plan.tail_seq), db=self._meta_db)
            dbs = {"snapshots": self._snapshots_db, "meta": self._meta_db}
            for write in plan.other:
                if write.value is None:
                    txn.delete(write.key, db=dbs[write.db])
                else:
                    txn.put(write.key, write.value, db=dbs[write.db])

    # -- reading -------------------------------------------------------------------------------

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(txn)` in a read txn; follow a map grown by another process."""
        for _ in range(3):
            try:
                with self._env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
        raise LogError("the log map keeps changing size under this reader")

    def _tail_in(self, txn: Any) -> IndexTail:
        """The index entries after the watermark: the writer's own, or, in a read-only open,
        those of the records after the watermark `txn` sees (extending the last ones read)."""
        if not self.readonly:
            return self._tail
        self._tail = read_tail(txn, self._events_db, self._meta_db, self._tail, strict=False)
        return self._tail

    def _version_in(self, txn: Any, stream: str) -> int:
        cached = self._versions.get(stream)
        if cached is not None:
            return cached
        in_tail = self._tail_in(txn).version(stream)
        if in_tail is not None:
            return in_tail
        prefix = stream.encode() + b"\x00"
        cursor = txn.cursor(db=self._streams_db)
        # Land on the stream's last entry: just before the first key past its versions.
        if not cursor.set_range(prefix + b"\xff\xff\xff\xff"):
            if not cursor.last():
                return 0
        elif not cursor.key().startswith(prefix) and not cursor.prev():
            return 0
        key = cursor.key()
        if key.startswith(prefix) and len(key) == len(prefix) + 4:
            return int(_U32.unpack(key[len(prefix) :])[0])
        return 0

    def _read_range(self, txn: Any, first_seq: int, count: int) -> list[RecordedEvent]:
        out = []
        for seq in range(first_seq, first_seq + count):
            value = txn.get(_U64.pack(seq), db=self._events_db)
            if value is None:
                raise LogFormatError(f"seq {seq} is missing from the log")
            out.append(decode_record(value))
        return out

    def stream_version(self, stream: str) -> int:
        """The stream's current version (0 when it has no events)."""
        result: int = self._read(lambda txn: self._version_in(txn, stream))
        return result

    def read_stream(
        self,
        stream: str,
        from_version: int = 1,
        *,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]:
        """The stream's events from `from_version` on, in order; at most `limit` events, and
        once `max_bytes` of stored records are read, no more (but always at least one)."""
        prefix = stream.encode() + b"\x00"
        from_version = max(from_version, 1)

        def run(txn: Any) -> list[RecordedEvent]:
            out: list[RecordedEvent] = []
            size = 0

            def take(seq: bytes) -> bool:
                nonlocal size
                if (limit is not None and len(out) >= limit) or (
                    max_bytes is not None and out and size >= max_bytes
                ):
                    return False
                value = txn.get(seq, db=self._events_db)
                if value is None:
                    raise LogFormatError(f"stream index names seq {_U64.unpack(seq)[0]}: missing")
                size += len(value)
                out.append(decode_record(value))
                return True

            # The index holds the stream's versions before the tail's first (the tail, when it
            # holds the stream, has its newest versions and wins over an index just flushed).
            first_in_tail, tail_seqs = self._tail_in(txn).streams.get(stream, (1 << 32, []))
            cursor = txn.cursor(db=self._streams_db)
            if from_version < first_in_tail and cursor.set_range(prefix + _U32.pack(from_version)):
                end = prefix + _U32.pack(first_in_tail) if first_in_tail < 1 << 32 else None
                for key, seq in cursor:
                    if not key.startswith(prefix) or (end is not None and key >= end):
                        break
                    if not take(seq):
                        return out
            for seq_int in tail_seqs[max(from_version - first_in_tail, 0) :]:
                if not take(_U64.pack(seq_int)):
                    break
            return out

        result: list[RecordedEvent] = self._read(run)
        return result

    def list_streams(self, prefix: str, *, after: str | None = None, limit: int = 100) -> list[str]:
        """Names of streams starting with `prefix`, in byte order, after `after` (a cursor)."""
        raw_prefix = prefix.encode()

        def run(txn: Any) -> list[str]:
            out: list[str] = []
            cursor = txn.cursor(db=self._streams_db)
            start = after.encode() + b"\x01" if after is not None else raw_prefix
            found = cursor.set_range(max(start, raw_prefix))
            while found and len(out) < limit:
                key = cursor.key()
                if not key.startswith(raw_prefix):
                    break
                name = key[: key.index(b"\x00")]
                out.append(name.decode())
                found = cursor.set_range(name + b"\x01")  # skip the rest of its versions
            # Streams whose entries are all still in the tail.
            start = max(after.encode() + b"\x01" if after is not None else b"", raw_prefix)
            listed = set(out)
            fresh = [
                name
                for name in self._tail_in(txn).streams
                if name not in listed and (key := name.encode()).startswith(raw_prefix)
                if key >= start
            ]
            if fresh:
                out = sorted(out + fresh, key=str.encode)[: max(limit, 0)]
            return out

        result: list[str] = self._read(run)
        return result

    def read_all(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[RecordedEvent]:
        """Up to `limit` events with seq > `after_seq`, in order (and, like `read_stream`, no
        more once `max_bytes` of records are read)."""
        limit = self._visible(after_seq, limit)
        if not self.readonly and self._recent.last_seq == self._tail_seq:
            recent = self._recent.after(after_seq, limit, max_bytes)
            if recent is not None:
                return recent

        def run(txn: Any) -> list[RecordedEvent]:
            out: list[RecordedEvent] = []
            size = 0
            cursor = txn.cursor(db=self._events_db)
            if limit <= 0 or not cursor.set_range(_U64.pack(after_seq + 1)):
                return out
            for value in cursor.iternext(keys=False, values=True):
                out.append(decode_record(value))
                size += len(value)
                if len(out) >= limit or (max_bytes is not None and size >= max_bytes):
                    break
            return out

        result: list[RecordedEvent] = self._read(run)
        return result

    def _visible(self, after_seq: int, limit: int) -> int:
        """How many of `limit` events after `after_seq` a reader may see. The writer's readers
        see what its commits have finished: a group is in LMDB as soon as its transaction
        commits in the worker thread, but its stream-index entries join the in-memory tail only
        after that, so an event read sooner could not be found by its stream yet."""
        return limit if self.readonly else min(limit, self._tail_seq - after_seq)

    def read_event(self, seq: int) -> RecordedEvent | None:
        if not self.readonly and seq > self._tail_seq:
            return None
        value = self._read(lambda txn: txn.get(_U64.pack(seq), db=self._events_db))
        return None if value is None else decode_record(value)

    def read_records(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[StoredRecord]:
        """Like `read_all`, with each event's exact hashed body, for export."""
        limit = self._visible(after_seq, limit)

        def run(txn: Any) -> list[StoredRecord]:
            out: list[StoredRecord] = []
            size = 0
            cursor = txn.cursor(db=self._events_db)
            if limit <= 0 or not cursor.set_range(_U64.pack(after_seq + 1)):
                return out
            for value in cursor.iternext(keys=False, values=True):
                event = decode_record(value)
                out.append(StoredRecord(event.seq, event, bytes(value[BODY_OFFSET:])))
                size += len(value)
                if len(out) >= limit or (max_bytes is not None and size >= max_bytes):
                    break
            return out

        result: list[StoredRecord] = self._read(run)
        return result

    def load_snapshot(self, stream: str) -> tuple[int, bytes] | None:
        value = self._read(lambda txn: txn.get(stream.encode(), db=self._snapshots_db))
        if value is None:
            return None
        return _U32.unpack(value[:4])[0], bytes(value[4:])

    def head(self) -> Head:
        """The last committed seq and hash, as this process knows it."""
        if self.readonly:
            return self._read_head()
        return Head(self._tail_seq, self._tail_hash)

    def _read_head(self) -> Head:
        def run(txn: Any) -> Head:
            cursor = txn.cursor(db=self._events_db)
            if cursor.last() and len(cursor.key()) == 8:
                return Head(_U64.unpack(cursor.key())[0], bytes(cursor.value()[:HASH_SIZE]))
            return Head(0, genesis_hash(self._log_id))

        result: Head = self._read(run)
        return result

    def _wake_subscribers(self, streams: Iterable[str] | None = None) -> None:
        """After a commit that touched `streams` (None: wake every subscriber)."""
        self._commits.notify(streams)

    async def _follow(
        self, next_batch: Callable[[], list[RecordedEvent]], stream: str | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Yield batches as `next_batch` finds them; between batches wait for the next commit
        (touching `stream`, when given), or poll when another process writes, until the log
        closes."""
        self._subscribers += 1
        if stream is not None:
            self._commits.follow(stream)
        try:
            while True:
                committed = self._commits.waiter(stream)
                events = next_batch()
                if events:
                    yield events
                    continue
                if self._closed or self._subscriptions_ended:
                    return
                if self.readonly:  # another process writes: poll (or be told, `poll_now`)
                    with trio.move_on_after(POLL_SECONDS):
                        await committed.wait()
                else:
                    await committed.wait()
        finally:
            self._subscribers -= 1
            if stream is not None:
                self._commits.unfollow(stream)

    def end_subscriptions(self) -> None:
        """Make every subscriber return once it has caught up (a server shutting down)."""
        self._subscriptions_ended = True
        self._wake_subscribers()

    # -- anchoring and verification ------------------------------------------------------------

    async def anchor(self, key: bytes) -> Anchor:
        """Seal the current head with `key`, store the seal in the log's meta and return it."""
        head = self.head()
        sealed = Anchor.seal(key, head.seq, head.hash, self._clock())
        await self._write_other("meta", b"anchor", msgspec.msgpack.encode(sealed))
        return sealed

    def stored_anchor(self) -> Anchor | None:
        raw = self._read(lambda txn: txn.get(b"anchor", db=self._meta_db))
        if raw is None:
            return None
        try:
            return msgspec.msgpack.decode(bytes(raw), type=Anchor)
        except msgspec.DecodeError:
            return Anchor(-1, b"", b"")

    async def verify(
        self,
        *,
        anchor_key: bytes | None = None,
        anchor: Anchor | None = None,
        progress: Progress | None = None,
        jobs: int = 1,
    ) -> VerifyReport:
        """Walk the chain and the stream index in a worker thread (the event loop keeps serving);
        name the first bad seq and why. `jobs` > 1 splits the hashing over that many worker
        processes, each reading its range of seqs through a read-only open of its own."""
        from cuelog.runtime._verify import verify_environment

        if anchor is None:
            anchor = self.stored_anchor()
        genesis = genesis_hash(self._log_id)
        report = await self._in_reader_thread(
            lambda: verify_environment(
                self._env,
                self._events_db,
                self._streams_db,
                self._meta_db,
                genesis,
                anchor=anchor,
                anchor_key=anchor_key,
                progress=progress,
                jobs=jobs,
                lock=self._env_locked,
            )
        )
        return await with_content_check(report, self.content)

    async def copy_to(self, dest: Path) -> None:
        """A compacted copy of the log as of one commit (LMDB copies inside one read txn), while
        appends go on; the content store's blobs are copied after it (a blob is written before
        any event refers to it, so every blob the copied events name is there)."""
        prepare_copy_dest(dest)
        try:
            await self._in_reader_thread(lambda: self._env.copy(str(dest), compact=True))
        except lmdb.Error as exc:
            raise LogError(f"cannot copy the log into {dest}: {exc}") from exc
        await self.content.copy_into(dest)

    async def _in_reader_thread(self, fn: Callable[[], T]) -> T:
        # LMDB forbids growing the map while a read txn is open: the writer waits for these.
        self._thread_readers += 1
        try:
            return await trio.to_thread.run_sync(fn)
        finally:
            self._thread_readers -= 1
            if not self._thread_readers:
                self._readers_gone.set()
                self._readers_gone = trio.Event()

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            head_seq=self._tail_seq if not self.readonly else self._read_head().seq,
            appends=self._appends,
            events_appended=self._events_appended,
            batches=self._batches,
            largest_batch=self._largest_batch,
            commit_seconds_total=self._commit_seconds,
            conflicts=self._conflicts,
            idempotent_replays=self._replays,
            map_size=self._env.info()["map_size"],
            pending=len(self._pending),
            subscribers=self._subscribers,
            max_event_bytes=self.max_event_bytes,
        )


@asynccontextmanager
async def open_lmdb_event_log(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    sync: bool = True,
    initial_map_size: int = 64 << 20,
    max_map_size: int = 1 << 40,
    max_event_bytes: int = 1 << 20,
    clock: Callable[[], int] = now_us,
    commit_in_thread: bool = True,
) -> AsyncIterator[LmdbEventLog]:
    """Open (or create) the LMDB log in `path`. Read-only opens work beside a running writer.

    On exit, appends already queued are committed before the writer stops.
    """
    event_log = LmdbEventLog(
        Path(path),
        readonly=readonly,
        sync=sync,
        initial_map_size=min(initial_map_size, max_map_size),
        max_map_size=max_map_size,
        max_event_bytes=max_event_bytes,
        clock=clock,
        commit_in_thread=commit_in_thread,
    )
    try:
        if readonly:
            yield event_log
            return
        async with trio.open_nursery() as nursery:
            await nursery.start(event_log._writer)
            try:
                yield event_log
            finally:
                event_log._closed = True
                event_log._wake_writer.set()
                # The writer drains what is queued, then returns.
    finally:
        event_log._closed = True
        event_log._wake_subscribers()
        with suppress(lmdb.Error):
            event_log._close()


def prepare_copy_dest(dest: Path) -> None:
    """A copy goes into a new or empty directory, never over another log."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LogError(f"{dest} exists and is not an empty directory; choose a new destination")
    dest.mkdir(parents=True, exist_ok=True)


def write_data_dir(
    dest: Path,
    *,
    log_id: bytes,
    records: Iterable[tuple[RecordedEvent, bytes]],
    idempotency: Mapping[str, tuple[int, int, bytes]],
    snapshots: Mapping[str, tuple[int, bytes]],
    anchor: Anchor | None,
) -> None:
    """Write an ordinary cuelog data dir holding exactly `records` (event, stored value) under
    `log_id`, so another backend's log can be opened, verified and served by this one.

    `idempotency` maps a key to (first seq, count, request digest).
    """
    records = list(records)
    size = sum(len(value) for _, value in records) + sum(len(s) for _, s in snapshots.values())
    try:
        _write_data_dir(dest, log_id, records, idempotency, snapshots, anchor, size)
    except lmdb.Error as exc:
        raise LogError(f"cannot write a log into {dest}: {exc}") from exc


def _write_data_dir(
    dest: Path,
    log_id: bytes,
    records: list[tuple[RecordedEvent, bytes]],
    idempotency: Mapping[str, tuple[int, int, bytes]],
    snapshots: Mapping[str, tuple[int, bytes]],
    anchor: Anchor | None,
    size: int,
) -> None:
    # Room for the B-tree pages around the values; unused map space costs no disk.
    env = lmdb.open(str(dest), map_size=max(64 << 20, 4 * size), max_dbs=8, readahead=False)
    try:
        with env.begin(write=True) as txn:
            events, streams, idem, snaps, meta = (
                env.open_db(name, txn=txn)
                for name in (b"events", b"streams", b"idem", b"snapshots", b"meta")
            )
            txn.put(b"format", _U32.pack(FORMAT_VERSION), db=meta)
            txn.put(b"log_id", log_id, db=meta)
            if anchor is not None:
                txn.put(b"anchor", msgspec.msgpack.encode(anchor), db=meta)
            for event, value in records:
                key = _U64.pack(event.seq)
                txn.put(key, value, db=events, append=True)
                txn.put(_stream_key(event.stream, event.version), key, db=streams)
            for idem_key, (first_seq, count, digest) in idempotency.items():
                txn.put(idem_key.encode(), _IDEM.pack(first_seq, count) + digest, db=idem)
            for stream, (version, state) in snapshots.items():
                txn.put(stream.encode(), _U32.pack(version) + state, db=snaps)
        env.sync(True)
    finally:
        env.close()
