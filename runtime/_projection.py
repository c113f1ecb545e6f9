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
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
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
) -> Checkpoint:
    """Apply the events after `checkpoint` (an event at or before it was already applied,
    by this process or another one sharing the store); raise `ProjectionFailed` on the first
    one that fails."""
    seq = checkpoint.seq
    for event in events:
        if event.seq <= seq:
            continue
        try:
            projection.apply(event, state)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise ProjectionFailed(projection.name, event.seq, error) from exc
        seq = event.seq
    return Checkpoint(seq, projection.version)


class ProjectionStore(ABC):
    """Every projection's state and checkpoint, written together."""

    @abstractmethod
    def checkpoint(self, name: str) -> Checkpoint: ...

    @abstractmethod
    async def apply(self, projection: Projection, events: Sequence[RecordedEvent]) -> Checkpoint:
        """Apply `events` and move the checkpoint past them in one transaction; on
        `ProjectionFailed` nothing of the batch is kept and the failure is recorded."""

    @abstractmethod
    async def reset(self, projection: Projection) -> None:
        """Drop the projection's state and set its checkpoint to 0 (version: the projection's)."""

    @abstractmethod
    def read(self, name: str, fn: Callable[[ProjectionState], T]) -> T:
        """Call `fn` with the projection's state as of one committed batch."""


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

    async def reset(self, projection: Projection) -> None:
        self._data[projection.name] = {}
        self._checkpoints[projection.name] = Checkpoint(0, projection.version)

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


@final
class LmdbProjectionStore(ProjectionStore):
    """State in an LMDB environment of its own: a named db per projection, and the
    checkpoints in a db beside them, written in the same transaction."""

    def __init__(self, path: Path, *, sync: bool = True, map_size: int = 1 << 30) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._sync = sync
        self._env = lmdb.open(
            str(path), map_size=map_size, max_dbs=64, sync=sync, metasync=sync, readahead=False
        )
        self._env.reader_check()
        self._checkpoints = self._env.open_db(_CHECKPOINTS_DB)
        self._dbs: dict[str, Any] = {}
        self._lock = trio.Lock()  # one write transaction of this process at a time

    def close(self) -> None:
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
                with self._env.begin(write=True) as txn:
                    # Read under the writer lock: another process may have moved it.
                    current = self._read_checkpoint(txn, name)
                    done = _apply_batch(projection, _LmdbState(txn, db), current, events)
                    self._write_checkpoint(txn, name, done)
                return done
            except ProjectionFailed as failed:
                with self._env.begin(write=True) as txn:
                    current = self._read_checkpoint(txn, name)
                    self._write_checkpoint(
                        txn,
                        name,
                        Checkpoint(current.seq, current.version, failed.seq, failed.error),
                    )
                raise
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    async def reset(self, projection: Projection) -> None:
        def run() -> None:
            with self._env.begin(write=True) as txn:
                txn.drop(db, delete=False)
                self._write_checkpoint(txn, projection.name, Checkpoint(0, projection.version))

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
                logger.error(
                    "projection failed", projection=self.name, seq=failed.seq, error=failed.error
                )
                raise
            self._wake()
            if progress is not None:
                progress(checkpoint.seq, max(total, checkpoint.seq))
            await trio.lowlevel.checkpoint()  # a store that applies inline still lets others run

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up, then apply each commit as it comes, until the log ends its subscriptions.
        A failing event stops it with a `failed` status (it does not take the caller down); a
        store that cannot be reached is retried every second."""
        task_status.started()
        try:
            while True:
                try:
                    await self._follow()
                    return
                except LogUnavailable as exc:
                    logger.warning(
                        "projection store unavailable", projection=self.name, error=str(exc)
                    )
                    await trio.sleep(RETRY_SECONDS)
        except ProjectionFailed:
            return
        finally:
            if self._phase != "failed":
                self._phase = "stopped"
            self._wake()

    async def _follow(self) -> None:
        checkpoint = await self.catch_up()
        self._phase = "live"
        # The subscription wakes on each commit; what it yields at or before the checkpoint
        # was already applied, read in a batch with the event that woke it.
        async for event in self.log.subscribe(checkpoint.seq, batch=self._batch):
            if event.seq <= checkpoint.seq:
                continue
            events = [event]
            events += self.log.read_all(
                event.seq, self._batch - 1, max_bytes=SUBSCRIBER_BATCH_BYTES * 4
            )
            try:
                checkpoint = await self.store.apply(self.projection, events)
            except ProjectionFailed as failed:
                self._phase = "failed"
                logger.error(
                    "projection failed",
                    projection=self.name,
                    seq=failed.seq,
                    error=failed.error,
                )
                raise
            self._wake()

    def _wake(self) -> None:
        woken, self._advanced = self._advanced, trio.Event()
        woken.set()

    async def wait_caught_up(self, seq: int) -> bool:
        """Wait until the projection has applied seq `seq`; False if it failed or stopped."""
        while True:
            advanced = self._advanced
            status = self.status()
            if status.checkpoint >= seq:
                return True
            if status.phase in ("failed", "stopped"):
                return False
            await advanced.wait()
