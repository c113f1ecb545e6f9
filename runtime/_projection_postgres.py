"""Projections on a PostgreSQL log: their state and checkpoints in two tables of the log's own
database, a batch and its checkpoint written in one transaction (the checkpoint row locked, so
servers sharing the database apply each event once between them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeVar, final

import psycopg
import trio

from cuelog.runtime._errors import LogUnavailable, ProjectionFailed
from cuelog.runtime._open import redact_url
from cuelog.runtime._projection import (
    Checkpoint,
    Projection,
    ProjectionState,
    ProjectionStore,
    _apply_batch,
    _prefix_end,
    apply_together_or_alone,
)
from cuelog.runtime._records import RecordedEvent

T = TypeVar("T")

_SCAN_PAGE: Final = 256

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cuelog_projection_state (
    name text NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS cuelog_projection_checkpoints (
    name text PRIMARY KEY,
    seq bigint NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 0,
    failed_seq bigint,
    error text
);
"""


class _PostgresState:
    """One projection's rows, as the connection's current transaction sees them."""

    def __init__(self, conn: psycopg.Connection[Any], name: str) -> None:
        self._conn = conn
        self._name = name

    def get(self, key: bytes) -> bytes | None:
        row = self._conn.execute(
            "SELECT value FROM cuelog_projection_state WHERE name = %s AND key = %s",
            (self._name, key),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: bytes, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO cuelog_projection_state (name, key, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (name, key) DO UPDATE SET value = EXCLUDED.value",
            (self._name, key, value),
        )

    def delete(self, key: bytes) -> None:
        self._conn.execute(
            "DELETE FROM cuelog_projection_state WHERE name = %s AND key = %s", (self._name, key)
        )

    def scan(
        self, prefix: bytes, *, start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        end = _prefix_end(prefix)
        bound = start
        while True:
            clauses = ["name = %s", "key >= %s"]
            params: list[Any] = [self._name, prefix]
            if end is not None:
                clauses.append("key < %s")
                params.append(end)
            if bound is not None:
                clauses.append("key < %s" if reverse else "key > %s")
                params.append(bound)
            order = "DESC" if reverse else "ASC"
            rows = self._conn.execute(
                f"SELECT key, value FROM cuelog_projection_state WHERE {' AND '.join(clauses)} "
                f"ORDER BY key {order} LIMIT {_SCAN_PAGE}",
                params,
            ).fetchall()
            for key, value in rows:
                yield bytes(key), bytes(value)
            if len(rows) < _SCAN_PAGE:
                return
            bound = bytes(rows[-1][0])


def _read_checkpoint(conn: psycopg.Connection[Any], name: str, *, lock: bool) -> Checkpoint:
    row = conn.execute(
        "SELECT seq, version, failed_seq, error FROM cuelog_projection_checkpoints "
        "WHERE name = %s" + (" FOR UPDATE" if lock else ""),
        (name,),
    ).fetchone()
    return Checkpoint() if row is None else Checkpoint(row[0], row[1], row[2], row[3])


def _write_checkpoint(conn: psycopg.Connection[Any], name: str, checkpoint: Checkpoint) -> None:
    conn.execute(
        "INSERT INTO cuelog_projection_checkpoints (name, seq, version, failed_seq, error) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, "
        "version = EXCLUDED.version, failed_seq = EXCLUDED.failed_seq, error = EXCLUDED.error",
        (name, checkpoint.seq, checkpoint.version, checkpoint.failed_seq, checkpoint.error),
    )


def _lock_checkpoint(conn: psycopg.Connection[Any], name: str) -> Checkpoint:
    conn.execute(
        "INSERT INTO cuelog_projection_checkpoints (name) VALUES (%s) ON CONFLICT DO NOTHING",
        (name,),
    )
    return _read_checkpoint(conn, name, lock=True)


@final
class PostgresProjectionStore(ProjectionStore):
    """State in the log's database: a writer connection used from a worker thread, and a
    reader that sees one committed batch per read."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._writer = self._connect()
        self._reader = self._connect()
        self._reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._writer.execute(_SCHEMA)
        # A batch's commit does not wait for its WAL flush: the state is the log's, folded, and
        # a crash can only take the last batches with their checkpoint (applied again at start).
        self._writer.execute("SET synchronous_commit TO off")
        self._lock = trio.Lock()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._url, autocommit=True, connect_timeout=10, application_name="cuelog"
            )
        except psycopg.Error as exc:
            raise LogUnavailable(
                f"cannot connect to the PostgreSQL log at {redact_url(self._url)}: {exc}"
            ) from None

    def close(self) -> None:
        for conn in (self._writer, self._reader):
            conn.close()

    def checkpoint(self, name: str) -> Checkpoint:
        try:
            return _read_checkpoint(self._reader, name, lock=False)
        except psycopg.Error as exc:
            raise LogUnavailable(f"projection checkpoint unreadable: {exc}") from None

    async def apply(self, projection: Projection, events: Sequence[RecordedEvent]) -> Checkpoint:
        async with self._lock:
            return await trio.to_thread.run_sync(self._apply_sync, projection, events)

    def _apply_sync(self, projection: Projection, events: Sequence[RecordedEvent]) -> Checkpoint:
        name = projection.name
        conn = self._writer
        try:
            try:
                with conn.transaction():
                    current = _lock_checkpoint(conn, name)
                    done = _apply_batch(
                        projection, _PostgresState(conn, name), current, events, (psycopg.Error,)
                    )
                    _write_checkpoint(conn, name, done)
                return done
            except ProjectionFailed as failed:
                with conn.transaction():
                    current = _lock_checkpoint(conn, name)
                    _write_checkpoint(
                        conn,
                        name,
                        Checkpoint(current.seq, current.version, failed.seq, failed.error),
                    )
                raise
        except psycopg.Error as exc:
            raise LogUnavailable(f"projection {name!r} could not be written: {exc}") from None

    async def apply_all(
        self, projections: Sequence[Projection], events: Sequence[RecordedEvent]
    ) -> list[Checkpoint | ProjectionFailed]:
        async with self._lock:
            return await trio.to_thread.run_sync(self._apply_all_sync, projections, events)

    def _apply_all_sync(
        self, projections: Sequence[Projection], events: Sequence[RecordedEvent]
    ) -> list[Checkpoint | ProjectionFailed]:
        conn = self._writer

        def together() -> list[Checkpoint]:
            # Checkpoint rows are locked in one order (the group's) by every process.
            with conn.transaction():
                done: list[Checkpoint] = []
                for projection in projections:
                    current = _lock_checkpoint(conn, projection.name)
                    applied = _apply_batch(
                        projection,
                        _PostgresState(conn, projection.name),
                        current,
                        events,
                        (psycopg.Error,),
                    )
                    _write_checkpoint(conn, projection.name, applied)
                    done.append(applied)
                return done

        try:
            return apply_together_or_alone(
                projections, together, lambda p: self._apply_sync(p, events)
            )
        except psycopg.Error as exc:
            raise LogUnavailable(f"projections could not be written: {exc}") from None

    async def reset(self, projection: Projection, seq: int = 0) -> None:
        name = projection.name

        def run() -> None:
            with self._writer.transaction():
                _lock_checkpoint(self._writer, name)
                self._writer.execute("DELETE FROM cuelog_projection_state WHERE name = %s", (name,))
                _write_checkpoint(self._writer, name, Checkpoint(seq, projection.version))

        async with self._lock:
            try:
                await trio.to_thread.run_sync(run)
            except psycopg.Error as exc:
                raise LogUnavailable(f"projection {name!r} could not be reset: {exc}") from None

    def read(self, name: str, fn: Callable[[ProjectionState], T]) -> T:
        try:
            with self._reader.transaction():
                return fn(_PostgresState(self._reader, name))
        except psycopg.Error as exc:
            raise LogUnavailable(f"projection {name!r} unreadable: {exc}") from None
