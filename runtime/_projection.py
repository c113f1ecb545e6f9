"""Projections: read models folded from the log, kept current as it grows, rebuilt from seq 0.

A `Projection` turns events into keys and values (`ProjectionState`); a `ProjectionStore` keeps
every projection's state with its checkpoint (the last seq applied) and writes both in one
transaction, so a crash at any point resumes after the last batch that committed: no event is
applied twice or skipped. A `ProjectionRunner` catches one projection up from its checkpoint,
then follows the log. An event `apply` raises on stops the runner with a `failed` status that
names the seq; the batch it was in is not written, and nothing after it is applied.

Stores: `MemoryProjectionStore` (the memory log's, and tests'), `LmdbProjectionStore` (an LMDB
environment of its own in `<data dir>/projections`, so its writes never queue behind the log's
writer lock; several processes may open it, and LMDB's rule holds: open it after any fork, in
the process that uses it). `open_projection_store` picks the store for a log location.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar, final

import lmdb
import msgspec
import structlog
import trio

from cuelog.runtime._errors import LogUnavailable, ProjectionFailed
from cuelog.runtime._open import parse_log_location
from cuelog.runtime._protocol import SUBSCRIBER_BATCH_BYTES, EventLog
from cuelog.runtime._records import Progress, RecordedEvent

T = TypeVar("T")

logger = structlog.get_logger("cuelog.projection")

# How long a runner waits before trying a store it could not reach again.
RETRY_SECONDS: Final = 1.0

# How long a caught-up group of projections lets commits gather before it reads them (a reader
# waiting for the head cuts it short): fewer, larger batches while the log is busy.
GATHER_SECONDS: Final = 0.05

# Events a group of projections reads and applies at once. An LMDB store applies a group's batch
# in the event loop's thread (a few milliseconds): in a worker thread the same Python would run
# under the GIL anyway, and the loop would wait for the GIL after each of its system calls.
GROUP_BATCH_EVENTS: Final = 256

# Events one transaction applies at most: a crash loses at most this much catch-up work.
BATCH_EVENTS: Final = 512

ProjectionPhase = Literal["idle", "catching_up", "live", "failed", "stopped"]


class ProjectionState(Protocol):
    """One projection's keys and values, as a transaction sees them."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(
        self, prefix: bytes, *, start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys with `prefix` in key order (or reversed), from `start` on (excluded) if given."""
        ...


class Projection(ABC):
    """A read model: `apply` folds one event into its state. Raising stops the projection.

    `version` names the shape of the state: a store holding another version is rebuilt from
    seq 0 when the projection is next run.
    """

    name: str
    version: int = 1

    @abstractmethod
    def apply(self, event: RecordedEvent, state: ProjectionState) -> None: ...

    def flush(self, state: ProjectionState) -> None:  # noqa: B027 (optional hook)
        """The batch's last event was applied: write what `apply` kept in memory (rows an
        event of the batch changed, written once for the batch). Called in the batch's
        transaction, before its checkpoint is written."""

    def discard(self) -> None:  # noqa: B027 (optional hook)
        """The batch failed and its transaction is not kept: forget what `apply` kept."""


class Checkpoint(msgspec.Struct, frozen=True, array_like=True):
    """What a store records beside a projection's state."""

    seq: int = 0
    version: int = 0
    failed_seq: int | None = None
    error: str | None = None


class ProjectionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where one projection is: its checkpoint, the log's head, and how far behind it is."""

    name: str
    phase: ProjectionPhase
    checkpoint: int
    head_seq: int
    lag: int
    failed_seq: int | None = None
    error: str | None = None


_checkpoint_encoder = msgspec.msgpack.Encoder()
_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)


def _apply_batch(
    projection: Projection,
    state: ProjectionState,
    checkpoint: Checkpoint,
    events: Sequence[RecordedEvent],
    store_errors: tuple[type[BaseException], ...] = (),
) -> Checkpoint:
    """Apply the events after `checkpoint` (an event at or before it was already applied,
    by this process or another one sharing the store); raise `ProjectionFailed` on the first
    one that fails (an error of the store itself, `store_errors`, goes through as it is).
    Events that do not follow on from the checkpoint are not applied: another process moved
    it back (a rebuild), and the caller reads again from where it is."""
    seq = checkpoint.seq
    apply = projection.apply
    try:
        for event in events:
            if event.seq <= seq:
                continue
            if event.seq != seq + 1:
                break
            try:
                apply(event, state)
            except store_errors:
                raise  # the store's, not the projection's: retried, never a failure
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                raise ProjectionFailed(projection.name, event.seq, error) from exc
            seq = event.seq
        try:
            projection.flush(state)
        except store_errors:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc} (writing the batch)"
            raise ProjectionFailed(projection.name, seq, error) from exc
    except BaseException:
        projection.discard()
        raise
    return Checkpoint(seq, projection.version)


class ProjectionStore(ABC):
    """Every projection's state and checkpoint, written together."""

    # CPU seconds spent applying batches, in whichever thread applied them (for metrics).
    apply_seconds: float = 0.0

    @abstractmethod
    def checkpoint(self, name: str) -> Checkpoint: ...

    @abstractmethod
    async def apply(self, projection: Projection, events: Sequence[RecordedEvent]) -> Checkpoint:
        """Apply `events` and move the checkpoint past them in one transaction; on
        `ProjectionFailed` nothing of the batch is kept and the failure is recorded."""

    @abstractmethod
    async def reset(self, projection: Projection, seq: int = 0) -> None:
        """Drop the projection's state and set its checkpoint to `seq` (version: the
        projection's): 0 folds the whole log again; the head starts it with what comes next."""

    @abstractmethod
    def read(self, name: str, fn: Callable[[ProjectionState], T]) -> T:
        """Call `fn` with the projection's state as of one committed batch."""

    async def keep_synced(self) -> None:
        """Run beside the runners: sync what a store does not sync commit by commit (every
        `SYNC_INTERVAL`; the rest is synced on close)."""
        await trio.sleep_forever()

    async def apply_all(
        self, projections: Sequence[Projection], events: Sequence[RecordedEvent]
    ) -> list[Checkpoint | ProjectionFailed]:
        """`apply` for each projection: its new checkpoint, or how it failed (a failure leaves
        the others applied)."""
        done: list[Checkpoint | ProjectionFailed] = []
        for projection in projections:
            try:
                done.append(await self.apply(projection, events))
            except ProjectionFailed as failed:
                done.append(failed)
        return done


def apply_together_or_alone(
    projections: Sequence[Projection],
    together: Callable[[], list[Checkpoint]],
    alone: Callable[[Projection], Checkpoint],
    retried_alone: tuple[type[BaseException], ...] = (),
) -> list[Checkpoint | ProjectionFailed]:
    """A batch for several projections in one transaction (`together`); if one of them fails
    (or the store raises one of `retried_alone`), each in a transaction of its own (`alone`),
    so the failure is recorded and the others' batches kept."""
    caught: tuple[type[BaseException], ...] = (ProjectionFailed, *retried_alone)
    try:
        return list(together())
    except caught:
        pass
    one_by_one: list[Checkpoint | ProjectionFailed] = []
    for projection in projections:
        try:
            one_by_one.append(alone(projection))
        except ProjectionFailed as failed:
            one_by_one.append(failed)
    return one_by_one


# -- in memory ----------------------------------------------------------------------------------


class _MemoryState:
    """A dict with an undo record, so a failed batch leaves no trace."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self._data = data
        self._undo: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._undo.setdefault(key, self._data.get(key))
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        if key in self._data:
            self._undo.setdefault(key, self._data[key])
            del self._data[key]

    def scan(
        self, prefix: bytes, *, start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        keys = sorted((k for k in self._data if k.startswith(prefix)), reverse=reverse)
        for key in keys:
            if start is not None and (key <= start if not reverse else key >= start):
                continue
            value = self._data.get(key)
            if value is not None:
                yield key, value

    def roll_back(self) -> None:
        for key, value in self._undo.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        self._undo.clear()


@final
class MemoryProjectionStore(ProjectionStore):
    """State in dicts: for the memory log, which is gone when its process ends anyway."""

    def __init__(self) -> None:
        self._data: dict[str, dict[bytes, bytes]] = {}
        self._checkpoints: dict[str, Checkpoint] = {}

    def checkpoint(self, name: str) -> Checkpoint:
        return self._checkpoints.get(name, Checkpoint())

    async def apply(self, projection: Projection, events: Sequence[RecordedEvent]) -> Checkpoint:
        name = projection.name
        state = _MemoryState(self._data.setdefault(name, {}))
        current = self.checkpoint(name)
        try:
            done = _apply_batch(projection, state, current, events)
        except ProjectionFailed as failed:
            state.roll_back()
            self._checkpoints[name] = Checkpoint(
                current.seq, current.version, failed.seq, failed.error
            )
            raise
        self._checkpoints[name] = done
        return done

    async def reset(self, projection: Projection, seq: int = 0) -> None:
        self._data[projection.name] = {}
        self._checkpoints[projection.name] = Checkpoint(seq, projection.version)

    def read(self, name: str, fn: Callable[[ProjectionState], T]) -> T:
        return fn(_MemoryState(self._data.setdefault(name, {})))


# -- LMDB ---------------------------------------------------------------------------------------


class _LmdbState:
    def __init__(self, txn: Any, db: Any) -> None:
        self._txn = txn
        self._db = db

    def get(self, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._db)
        return None if value is None else bytes(value)

    def put(self, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._db)

    def delete(self, key: bytes) -> None:
        self._txn.delete(key, db=self._db)

    def scan(
        self, prefix: bytes, *, start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(db=self._db)
        if not reverse:
            if start is not None:
                found = cursor.set_range(start)
                if found and bytes(cursor.key()) == start:
                    found = cursor.next()
            else:
                found = cursor.set_range(prefix)
            while found:
                key = bytes(cursor.key())
                if not key.startswith(prefix):
                    return
                yield key, bytes(cursor.value())
                found = cursor.next()
            return
        # Reversed: position on the last key <= the bound, then walk back.
        bound = start if start is not None else _prefix_end(prefix)
        if bound is None:
            found = cursor.last()
        elif cursor.set_range(bound):
            found = cursor.prev()
        else:
            found = cursor.last()
        while found:
            key = bytes(cursor.key())
            if start is not None and key >= start:
                found = cursor.prev()
                continue
            if not key.startswith(prefix):
                return
            yield key, bytes(cursor.value())
            found = cursor.prev()


def _prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key with `prefix` (None: there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


_CHECKPOINTS_DB: Final = b"_checkpoints"


def boot_id() -> str | None:
    """This boot of the machine, where the system tells it (Linux), else None."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The marker an LMDB store keeps while it holds commits not yet synced to disk, naming the boot
# they were made in: found after a reboot, the store may have lost or torn them.
UNSYNCED_MARKER: Final = "unsynced"
# How often a store with unsynced commits syncs them.
SYNC_INTERVAL: Final = 1.0


@final
class LmdbProjectionStore(ProjectionStore):
    """State in an LMDB environment of its own: a named db per projection, and the
    checkpoints in a db beside them, written in the same transaction.

    Its commits are not synced one by one: the state is the log's, folded, so it is synced
    every `SYNC_INTERVAL` (`keep_synced`) and on close, and marked meanwhile. A process
    killed between syncs loses nothing (its commits are in the system's page cache); a store
    found marked by an earlier boot (a power cut, a kernel crash) is emptied at open and the
    runners fold the log into it again. Where the system names no boot, each commit is synced.
    """

    def __init__(self, path: Path, *, sync: bool = True, map_size: int = 1 << 30) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._boot = boot_id()
        self._sync_each = sync and self._boot is None
        self._marker = path / UNSYNCED_MARKER
        self._forget_torn_state()
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=64,
            sync=self._sync_each,
            metasync=self._sync_each,
            readahead=False,
            # Pages are written in the map, not copied out at each commit: a commit that is not
            # synced costs no write calls. (Every process opening the store decides the same
            # way, as LMDB asks: by whether the system names its boot.)
            writemap=self._boot is not None,
        )
        self._env.reader_check()
        self._checkpoints = self._env.open_db(_CHECKPOINTS_DB)
        self._dbs: dict[str, Any] = {}
        self._lock = trio.Lock()  # one write transaction of this process at a time

    def _forget_torn_state(self) -> None:
        try:
            marked_in = self._marker.read_text().strip()
        except FileNotFoundError:
            return
        if self._boot is None or marked_in == self._boot:
            return
        logger.warning(
            "projection store was not synced before the machine restarted: folding the log "
            "into it again",
            path=str(self.path),
        )
        for name in ("data.mdb", "lock.mdb"):
            (self.path / name).unlink(missing_ok=True)
        self._marker.unlink()
        _fsync_dir(self.path)

    def _mark(self) -> None:
        """Before a commit that will not be synced at once: say so, durably (unless the marker,
        this process's or another's, is there already). Every commit calls it holding LMDB's
        write lock (in its write transaction), so no process can unmark the store between this
        and the commit (see `_unmark_if_unchanged`); a batch applied in the event loop's thread
        also calls it ahead, in a worker thread, so the two fsyncs of a new marker happen there
        and the check in the transaction only stats it."""
        if self._boot is None or self._marker.exists():
            return
        with open(self._marker, "w") as marker:
            marker.write(self._boot + "\n")
            marker.flush()
            os.fsync(marker.fileno())
        _fsync_dir(self.path)

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """A write transaction, with the store marked unsynced inside it (see `_mark`)."""
        with self._env.begin(write=True) as txn:
            self._mark()
            yield txn

    def _last_txn(self) -> int:
        last: int = self._env.info()["last_txnid"]
        return last

    def _unmark_if_unchanged(self, synced_to: int) -> None:
        """Remove the marker if no process has committed since the sync that covered
        `synced_to` began. Checked under LMDB's write lock, which every marked commit holds
        from its mark to its commit, so no commit of any process is left unsynced unmarked."""
        txn = self._env.begin(write=True)
        try:
            if self._last_txn() == synced_to:
                self._marker.unlink(missing_ok=True)
        finally:
            txn.abort()

    async def sync_unsynced(self) -> None:
        """Sync the commits made so far, by any process sharing the store; unmark the store
        if none came while syncing."""
        async with self._lock:  # no batch of this process in flight
            if not self._marker.exists():
                return
            synced_to = self._last_txn()
        await trio.to_thread.run_sync(self._env.sync, True)
        async with self._lock:
            await trio.to_thread.run_sync(self._unmark_if_unchanged, synced_to)

    async def keep_synced(self) -> None:
        while True:
            await trio.sleep(SYNC_INTERVAL)
            await self.sync_unsynced()

    def close(self) -> None:
        if self._marker.exists():
            synced_to = self._last_txn()
            self._env.sync(True)
            self._unmark_if_unchanged(synced_to)
        self._env.close()

    def _db(self, name: str) -> Any:
        db = self._dbs.get(name)
        if db is None:
            if name.encode().startswith(b"_"):
                raise ValueError(f"a projection name may not start with '_': {name!r}")
            db = self._dbs[name] = self._env.open_db(name.encode())
        return db

    def _read_checkpoint(self, txn: Any, name: str) -> Checkpoint:
        raw = txn.get(name.encode(), db=self._checkpoints)
        return Checkpoint() if raw is None else _checkpoint_decoder.decode(raw)

    def _write_checkpoint(self, txn: Any, name: str, checkpoint: Checkpoint) -> None:
        txn.put(name.encode(), _checkpoint_encoder.encode(checkpoint), db=self._checkpoints)

    def checkpoint(self, name: str) -> Checkpoint:
        with self._env.begin() as txn:
            return self._read_checkpoint(txn, name)

    async def apply(self, projection: Projection, events: Sequence[RecordedEvent]) -> Checkpoint:
        async with self._lock:
            # Opening a table takes LMDB's write lock in this thread, holding the GIL: only
            # while no batch of this store is being written in a worker thread.
            db = self._db(projection.name)
            return await trio.to_thread.run_sync(self._apply_sync, projection, db, events)

    def _apply_sync(
        self, projection: Projection, db: Any, events: Sequence[RecordedEvent]
    ) -> Checkpoint:
        name = projection.name
        while True:
            try:
                with self._writing() as txn:
                    # Read under the writer lock: another process may have moved it.
                    current = self._read_checkpoint(txn, name)
                    done = _apply_batch(
                        projection, _LmdbState(txn, db), current, events, (lmdb.Error,)
                    )
                    self._write_checkpoint(txn, name, done)
                return done
            except ProjectionFailed as failed:
                with self._writing() as txn:
                    current = self._read_checkpoint(txn, name)
                    self._write_checkpoint(
                        txn,
                        name,
                        Checkpoint(current.seq, current.version, failed.seq, failed.error),
                    )
                raise
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    async def apply_all(
        self, projections: Sequence[Projection], events: Sequence[RecordedEvent]
    ) -> list[Checkpoint | ProjectionFailed]:
        async with self._lock:
            dbs = [self._db(projection.name) for projection in projections]
            if self._sync_each:  # each commit fsyncs: not in the loop's thread
                return await trio.to_thread.run_sync(self._apply_all_sync, projections, dbs, events)
            if self._boot is not None and not self._marker.exists():
                await trio.to_thread.run_sync(self._mark)  # two fsyncs: not in the loop
            # In the loop's thread (see `GROUP_BATCH_EVENTS`); a commit that is not synced
            # writes nothing out.
            return self._apply_all_sync(projections, dbs, events)

    def _apply_all_sync(
        self, projections: Sequence[Projection], dbs: Sequence[Any], events: Sequence[RecordedEvent]
    ) -> list[Checkpoint | ProjectionFailed]:
        """One transaction for every projection; if one fails, each in its own instead, so the
        failure is recorded and the others' batches kept."""
        started = time.thread_time()
        try:
            return self._apply_all_in_txn(projections, dbs, events)
        finally:
            self.apply_seconds += time.thread_time() - started

    def _apply_all_in_txn(
        self, projections: Sequence[Projection], dbs: Sequence[Any], events: Sequence[RecordedEvent]
    ) -> list[Checkpoint | ProjectionFailed]:
        table = dict(zip((p.name for p in projections), dbs, strict=True))

        def together() -> list[Checkpoint]:
            with self._writing() as txn:
                done: list[Checkpoint] = []
                for projection, db in zip(projections, dbs, strict=True):
                    current = self._read_checkpoint(txn, projection.name)
                    applied = _apply_batch(
                        projection, _LmdbState(txn, db), current, events, (lmdb.Error,)
                    )
                    self._write_checkpoint(txn, projection.name, applied)
                    done.append(applied)
                return done

        return apply_together_or_alone(
            projections,
            together,
            lambda projection: self._apply_sync(projection, table[projection.name], events),
            (lmdb.MapFullError,),
        )

    async def reset(self, projection: Projection, seq: int = 0) -> None:
        def run() -> None:
            with self._writing() as txn:
                txn.drop(db, delete=False)
                self._write_checkpoint(txn, projection.name, Checkpoint(seq, projection.version))

        async with self._lock:
            db = self._db(projection.name)
            await trio.to_thread.run_sync(run)

    def read(self, name: str, fn: Callable[[ProjectionState], T]) -> T:
        # Opens the table on a first read: do that before any batch of this store is in flight
        # (as the domain's read models do at start), for the reason `apply` gives.
        db = self._db(name)
        with self._env.begin() as txn:
            return fn(_LmdbState(txn, db))


@asynccontextmanager
async def open_projection_store(
    location: str | os.PathLike[str], *, sync: bool = True
) -> AsyncIterator[ProjectionStore]:
    """The projection store for the log at `location`: `<data dir>/projections` for an LMDB log,
    tables in the database of a PostgreSQL log, memory for a memory log."""
    from cuelog.runtime._projection_postgres import PostgresProjectionStore

    where = parse_log_location(location)
    if where.backend == "memory":
        yield MemoryProjectionStore()
        return
    if where.backend == "postgresql":
        assert where.url is not None
        pg_store = PostgresProjectionStore(where.url)
        try:
            yield pg_store
        finally:
            pg_store.close()
        return
    assert where.path is not None
    store = LmdbProjectionStore(where.path / "projections", sync=sync)
    try:
        yield store
    finally:
        store.close()


# -- running ------------------------------------------------------------------------------------


@final
class ProjectionRunner:
    """Keeps one projection current: catches up from its checkpoint, then follows the log."""

    def __init__(
        self,
        log: EventLog,
        store: ProjectionStore,
        projection: Projection,
        *,
        batch: int = BATCH_EVENTS,
    ) -> None:
        self.log = log
        self.store = store
        self.projection = projection
        self._batch = batch
        self._phase: ProjectionPhase = "idle"
        self._advanced = trio.Event()
        self.waiting = 0  # readers waiting for it to reach a seq
        self.on_wait: Callable[[], None] | None = None  # told when one starts to wait

    @property
    def name(self) -> str:
        return self.projection.name

    def status(self) -> ProjectionStatus:
        checkpoint = self.store.checkpoint(self.name)
        head = self.log.head().seq
        phase: ProjectionPhase = "failed" if checkpoint.failed_seq is not None else self._phase
        return ProjectionStatus(
            name=self.name,
            phase=phase,
            checkpoint=checkpoint.seq,
            head_seq=head,
            lag=max(head - checkpoint.seq, 0),
            failed_seq=checkpoint.failed_seq,
            error=checkpoint.error,
        )

    async def rebuild(self, progress: Progress | None = None) -> Checkpoint:
        """Drop the state and apply the whole log again, from seq 0."""
        await self.store.reset(self.projection)
        return await self.catch_up(progress)

    async def catch_up(self, progress: Progress | None = None) -> Checkpoint:
        """Apply every committed event after the checkpoint; raise `ProjectionFailed` if the
        projection fails on one (or failed before and was not rebuilt since)."""
        checkpoint = self.store.checkpoint(self.name)
        if checkpoint.failed_seq is not None:
            raise ProjectionFailed(self.name, checkpoint.failed_seq, checkpoint.error or "")
        if checkpoint.version != self.projection.version:
            await self.store.reset(self.projection)  # another shape of state: start over
            checkpoint = self.store.checkpoint(self.name)
        self._phase = "catching_up"
        total = self.log.head().seq
        while True:
            events = self.log.read_all(
                checkpoint.seq, self._batch, max_bytes=SUBSCRIBER_BATCH_BYTES * 4
            )
            if not events:
                return checkpoint
            try:
                checkpoint = await self.store.apply(self.projection, events)
            except ProjectionFailed as failed:
                self._phase = "failed"
                self._wake()
                _log_failure(failed)
                raise
            self._wake()
            if progress is not None:
                progress(checkpoint.seq, max(total, checkpoint.seq))
            await trio.lowlevel.checkpoint()  # a store that applies inline still lets others run

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up, then apply each commit as it comes, until the log ends its subscriptions:
        a group of one (see `ProjectionGroup`)."""
        await ProjectionGroup([self], batch=self._batch).run(task_status)

    @property
    def phase(self) -> ProjectionPhase:
        """Where this process's runner is (a failure recorded in the store aside)."""
        return self._phase

    def observed(self, phase: ProjectionPhase) -> None:
        """Another process applies this projection to the shared store and says it is at
        `phase`, having applied a batch: take the phase and wake the readers waiting here."""
        self._phase = phase
        self._wake()

    def _wake(self) -> None:
        woken, self._advanced = self._advanced, trio.Event()
        woken.set()

    async def wait_caught_up(self, seq: int) -> bool:
        """Wait until the projection has applied seq `seq`; False if it failed or stopped."""
        self.waiting += 1
        if self.on_wait is not None:
            self.on_wait()
        try:
            while True:
                advanced = self._advanced
                status = self.status()
                if status.checkpoint >= seq:
                    return True
                if status.phase in ("failed", "stopped"):
                    return False
                await advanced.wait()
        finally:
            self.waiting -= 1


def _log_failure(failed: ProjectionFailed) -> None:
    logger.error("projection failed", projection=failed.name, seq=failed.seq, error=failed.error)


@final
class ProjectionGroup:
    """Several projections of one store kept current together: one follower reads each batch
    of the log once, and the store applies it to all of them in one transaction. Each keeps
    its own checkpoint (a batch skips what a projection already has); the group reads on from
    the lowest. A projection that fails stops alone, with a `failed` status."""

    def __init__(
        self,
        runners: Sequence[ProjectionRunner],
        *,
        batch: int = GROUP_BATCH_EVENTS,
        applied: Callable[[], None] | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a projection group needs at least one projection")
        self.runners = list(runners)
        self.log = runners[0].log
        self.store = runners[0].store
        self._batch = batch
        self._applied = applied  # told after each batch the store applied
        self._wanted = trio.Event()  # set when a reader starts to wait for a projection
        self._want_pending = False  # a reader asked while the group was not gathering
        self._scope: trio.CancelScope | None = None
        self._handing_over = False
        self.read_seconds = 0.0  # CPU seconds spent reading the log's batches
        for runner in self.runners:
            runner.on_wait = self.want

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch every projection up, then apply each commit as it comes, until the log ends
        its subscriptions (or `hand_over`); a store that cannot be reached is retried every
        second."""
        self._handing_over = False
        task_status.started()
        try:
            with trio.CancelScope() as self._scope:
                while True:
                    try:
                        await self._follow()
                        return
                    except LogUnavailable as exc:
                        logger.warning("projection store unavailable", error=str(exc))
                        await trio.sleep(RETRY_SECONDS)
        finally:
            self._scope = None
            if not self._handing_over:
                for runner in self.runners:
                    if runner._phase != "failed":
                        runner._phase = "stopped"
                    runner._wake()

    def cpu_seconds(self) -> float:
        """CPU seconds the group has taken in this process: reading the log's batches and
        applying them."""
        return self.read_seconds + self.store.apply_seconds

    def hand_over(self) -> None:
        """Stop applying, leaving the projections' phases as they are: another process (which
        shares the store) keeps them current from here. `run` returns at its next checkpoint."""
        self._handing_over = True
        if self._scope is not None:
            self._scope.cancel()

    async def _starting(self) -> tuple[list[ProjectionRunner], int]:
        """The projections to keep (not failed), each at the version it is now, and the seq the
        group reads on from."""
        live: list[ProjectionRunner] = []
        seqs: list[int] = []
        for runner in self.runners:
            checkpoint = self.store.checkpoint(runner.name)
            if checkpoint.failed_seq is not None:
                runner._phase = "failed"
                runner._wake()
                continue
            if checkpoint.version != runner.projection.version:
                await self.store.reset(runner.projection)  # another shape of state: start over
                checkpoint = self.store.checkpoint(runner.name)
            live.append(runner)
            seqs.append(checkpoint.seq)
        return live, min(seqs, default=0)

    async def _follow(self) -> None:
        live, cursor = await self._starting()
        target = self.log.head().seq  # caught up, a projection goes live
        for runner in live:
            caught_up = self.store.checkpoint(runner.name).seq >= target
            runner._phase = "live" if caught_up else "catching_up"

        def next_batch() -> list[RecordedEvent]:
            started = time.thread_time()
            try:
                return self.log.read_all(cursor, self._batch, max_bytes=SUBSCRIBER_BATCH_BYTES * 4)
            finally:
                self.read_seconds += time.thread_time() - started

        if not live:
            return
        batches = self.log.follow_batches(next_batch)
        async with aclosing(batches):  # type: ignore[type-var]
            async for events in batches:
                results = await self.store.apply_all([runner.projection for runner in live], events)
                going: list[ProjectionRunner] = []
                seqs: list[int] = []
                for runner, result in zip(live, results, strict=True):
                    if isinstance(result, ProjectionFailed):
                        runner._phase = "failed"
                        _log_failure(result)
                    else:
                        going.append(runner)
                        seqs.append(result.seq)
                        if result.seq >= target:
                            runner._phase = "live"
                    runner._wake()
                if self._applied is not None:
                    self._applied()
                if not going:
                    return
                live, cursor = going, min(seqs)
                if len(events) < self._batch:
                    await self._gather(live)

    async def _gather(self, live: Sequence[ProjectionRunner]) -> None:
        """Caught up: let the next commits gather into one batch for a moment, unless a reader
        waits for a projection to reach the head."""
        if self._want_pending or any(runner.waiting for runner in live):
            self._want_pending = False
            return
        self._wanted = trio.Event()
        with trio.move_on_after(GATHER_SECONDS):
            await self._wanted.wait()
        self._want_pending = False

    def want(self) -> None:
        """A reader waits for the head: read and apply now rather than after the gathering."""
        self._want_pending = True
        self._wanted.set()
