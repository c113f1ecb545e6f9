"""The PostgreSQL event log: the same chain and envelope bytes as LMDB, in tables a team operates.

Tables, in the connection's current schema (see docs/log-format.md):

    cuelog_meta       key -> value: schema version, log id, anchor
    cuelog_head       one row: the last seq and its hash; locked by every append transaction
    cuelog_events     seq -> stream, version, record (hash || prev || body); UNIQUE(stream, version)
    cuelog_streams    stream -> current version (expected-version checks, stream listing)
    cuelog_idem       idempotency key -> first seq, count, request digest
    cuelog_snapshots  stream -> version, state
    cuelog_content    digest -> blob (the content store)
    cuelog_leases     actor key -> node, epoch, expiry (cluster mode, see cuelog.runtime._leases)
    cuelog_nodes      node -> internal address, heartbeat
    cuelog_data_keys  key id -> a data key sealing secrets (see cuelog.runtime._postgres_keys)

One writer task per process gathers pending appends into one transaction (group commit) that
starts by locking the head row: writers in several processes queue on that row, so seqs stay
gapless and the chain linear. psycopg's async mode is asyncio-only, so every transaction runs in a
worker thread (`trio.to_thread`). The protocol's reads are synchronous (LMDB answers them from
memory); here each is one round trip on a connection of their own.

Subscribers pull by seq. A commit sends `NOTIFY` on the log's channel; a listening connection in a
thread wakes local subscribers when another process commits, and subscribers also poll, so a lost
notification delays them by one poll at most.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, TypeVar, final

import msgspec
import psycopg
import structlog
import trio

from cuelog.runtime._content import with_content_check
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
    LogUnavailable,
    WrongExpectedVersion,
)
from cuelog.runtime._follow import CommitSignal, PullSubscriptions
from cuelog.runtime._leases import CREATE_TABLES as CREATE_LEASE_TABLES
from cuelog.runtime._leases import LeaseTable
from cuelog.runtime._lmdb import prepare_copy_dest, write_data_dir
from cuelog.runtime._open import redact_url
from cuelog.runtime._pending import GroupCommitAppends, PendingAppend
from cuelog.runtime._postgres_content import CREATE_TABLE, PostgresContentStore, import_blobs
from cuelog.runtime._postgres_keys import CREATE_TABLE as CREATE_KEYS_TABLE
from cuelog.runtime._postgres_keys import PostgresKeyStore
from cuelog.runtime._records import (
    Anchor,
    Head,
    LogStatistics,
    Progress,
    RecordedEvent,
    StoredRecord,
    VerifyReport,
)
from cuelog.runtime._verify import verify_chain

log = structlog.get_logger("cuelog.log")

T = TypeVar("T")
SCHEMA_VERSION: Final = 4
# Taken while creating or migrating the schema, so two processes opening a new log at once
# create it once.
_SCHEMA_LOCK: Final = 0x6375656C6F67  # "cuelog"
_CONNECT_SECONDS: Final = 5
_LISTEN_SECONDS: Final = 0.5  # how long a listening thread waits before checking for close
_POLL_SECONDS: Final = 1.0  # subscribers re-read this often even without a notification
_RETRY_SECONDS: Final = 0.5
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

# Index i takes the schema from version i to i + 1.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE cuelog_events (
            seq bigint PRIMARY KEY,
            stream text COLLATE "C" NOT NULL,
            version integer NOT NULL,
            record bytea NOT NULL,
            UNIQUE (stream, version))""",
        """CREATE TABLE cuelog_streams (
            stream text COLLATE "C" PRIMARY KEY,
            version integer NOT NULL)""",
        """CREATE TABLE cuelog_head (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            seq bigint NOT NULL,
            hash bytea NOT NULL)""",
        """CREATE TABLE cuelog_idem (
            key text PRIMARY KEY,
            first_seq bigint NOT NULL,
            count integer NOT NULL,
            digest bytea NOT NULL)""",
        """CREATE TABLE cuelog_snapshots (
            stream text PRIMARY KEY,
            version integer NOT NULL,
            state bytea NOT NULL)""",
    ),
    (CREATE_TABLE,),
    CREATE_LEASE_TABLES,
    (CREATE_KEYS_TABLE,),
)


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (code point order), if any."""
    while prefix:
        last = ord(prefix[-1]) + 1
        if last == 0xD800:
            last = 0xE000  # surrogates are not UTF-8
        if last <= 0x10FFFF:
            return prefix[:-1] + chr(last)
        prefix = prefix[:-1]
    return None


class _OtherWrite:
    """A write outside the chain (snapshot, anchor) that rides on the next group commit."""

    __slots__ = ("done", "error", "params", "sql")

    def __init__(self, sql: str, params: Sequence[object]) -> None:
        self.sql = sql
        self.params = params
        self.done = trio.Event()
        self.error: BaseException | None = None


class _Committed:
    """What one group commit did, for the counters and the cached tail."""

    __slots__ = ("conflicts", "events", "replays", "tail_hash", "tail_seq")

    def __init__(self) -> None:
        self.conflicts = 0
        self.replays = 0
        self.events = 0
        self.tail_seq = 0
        self.tail_hash = b""


class _Ambiguous(Exception):
    """The connection broke while COMMIT was in flight: the outcome is unknown."""


def _connect(url: str, *, readonly: bool = False) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=_CONNECT_SECONDS,
            application_name="cuelog",
        )
    except psycopg.Error as exc:
        raise LogUnavailable(
            f"cannot connect to the PostgreSQL log at {redact_url(url)}: {_reason(exc)}"
        ) from None
    if readonly:
        conn.execute("SET default_transaction_read_only = on")
    return conn


def connect_writer(url: str) -> psycopg.Connection[Any]:
    """A new autocommit connection to the log's database, for a writer beside the log's own."""
    return _connect(url)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with suppress(psycopg.Error):
            conn.close()


@final
class PostgresEventLog(GroupCommitAppends, PullSubscriptions):
    """The shared event log. Open it with `open_event_log("postgresql://…")`, never directly."""

    def __init__(
        self,
        url: str,
        *,
        readonly: bool,
        max_event_bytes: int,
        clock: Callable[[], int],
    ) -> None:
        self.url = url
        self.readonly = readonly
        self.content = PostgresContentStore(
            lambda: _connect(url, readonly=readonly), readonly=readonly
        )
        # The keys sealing secrets recorded in the log (see cuelog.runtime._postgres_keys).
        self.data_keys = PostgresKeyStore(
            lambda: _connect(url, readonly=readonly), readonly=readonly
        )
        self.max_event_bytes = max_event_bytes
        self._clock = clock
        self._instance = os.urandom(6).hex()  # tells this process's notifications apart
        self._closed = False
        self._pending: list[PendingAppend] = []
        self._other: list[_OtherWrite] = []
        self._wake_writer = trio.Event()
        self._commits = CommitSignal()
        self._writer_limiter = trio.CapacityLimiter(1)
        self._reader_limiter = trio.CapacityLimiter(2)  # verify and copies
        self._writer_conn: psycopg.Connection[Any] | None = None
        self._reader: psycopg.Connection[Any] | None = None
        self._listening = False
        self._subscribers = 0
        self._subscriptions_ended = False
        self._log_id = b""
        self._genesis = b""
        self._channel = ""
        self._tail_seq = 0
        self._tail_hash = b""
        # This node's leases while it runs in cluster mode (set by `open_leases`): commits
        # then fence the appends of leased actors. None costs nothing.
        self.fence: LeaseTable | None = None
        # counters
        self._appends = 0
        self._events_appended = 0
        self._batches = 0
        self._largest_batch = 0
        self._commit_seconds = 0.0
        self._conflicts = 0
        self._replays = 0

    # -- opening -------------------------------------------------------------------------------

    def _open_sync(self) -> None:
        """Create or migrate the schema, load the log id and head (in a worker thread)."""
        conn = _connect(self.url, readonly=self.readonly)
        try:
            if self.readonly:
                self._log_id = self._load_meta(conn)
            else:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
                    self._log_id = self._create_or_migrate(conn)
            row = conn.execute("SELECT seq, hash FROM cuelog_head").fetchone()
        except psycopg.OperationalError as exc:
            _close_quietly(conn)
            raise LogUnavailable(f"the PostgreSQL log is unreachable: {_reason(exc)}") from None
        except psycopg.Error as exc:
            _close_quietly(conn)
            raise LogFormatError(
                f"{redact_url(self.url)} does not hold a usable cuelog log: {_reason(exc)}"
            ) from None
        except BaseException:
            _close_quietly(conn)
            raise
        if row is None:
            _close_quietly(conn)
            raise LogFormatError(f"{redact_url(self.url)}: the cuelog_head row is missing")
        self._genesis = genesis_hash(self._log_id)
        self._channel = f"cuelog_{self._log_id.hex()}"
        self._tail_seq, self._tail_hash = int(row[0]), bytes(row[1])
        self._reader = conn

    def _load_meta(self, conn: psycopg.Connection[Any]) -> bytes:
        exists = conn.execute("SELECT to_regclass('cuelog_meta') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            raise LogFormatError(f"no cuelog log at {redact_url(self.url)} (no cuelog_meta table)")
        version = self._schema_version(conn)
        if version != SCHEMA_VERSION:
            self._refuse_version(version)
        return self._log_id_in(conn)

    def _create_or_migrate(
        self, conn: psycopg.Connection[Any], log_id: bytes | None = None
    ) -> bytes:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS cuelog_meta (key text PRIMARY KEY, value bytea NOT NULL)"
        )
        version = self._schema_version(conn)
        if version > SCHEMA_VERSION:
            self._refuse_version(version)
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
            log.info("log schema migrated", schema=step + 1)
        if version == 0:
            log_id = log_id or os.urandom(16)
            conn.execute("INSERT INTO cuelog_meta VALUES ('log_id', %s)", [log_id])
            conn.execute("INSERT INTO cuelog_head VALUES (true, 0, %s)", [genesis_hash(log_id)])
        if version != SCHEMA_VERSION:
            conn.execute(
                "INSERT INTO cuelog_meta VALUES ('schema', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                [str(SCHEMA_VERSION).encode()],
            )
        return self._log_id_in(conn)

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT value FROM cuelog_meta WHERE key = 'schema'").fetchone()
        if row is None:
            return 0
        try:
            return int(bytes(row[0]).decode())
        except ValueError:
            raise LogFormatError(
                f"{redact_url(self.url)}: the schema version row is garbled"
            ) from None

    def _refuse_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise LogFormatError(
                f"{redact_url(self.url)} holds a cuelog log in schema version {version}; this "
                f"cuelog knows schema {SCHEMA_VERSION}: upgrade cuelog to open it"
            )
        raise LogFormatError(
            f"{redact_url(self.url)} holds a cuelog log in schema version {version}; open it "
            "once for writing to migrate it"
        )

    def _log_id_in(self, conn: psycopg.Connection[Any]) -> bytes:
        row = conn.execute("SELECT value FROM cuelog_meta WHERE key = 'log_id'").fetchone()
        if row is None:
            raise LogFormatError(f"{redact_url(self.url)}: the log id row is missing")
        return bytes(row[0])

    # -- appending -----------------------------------------------------------------------------

    async def save_snapshot(self, stream: str, version: int, state: bytes) -> None:
        """Store a snapshot of a stream's folded state (not part of the chain)."""
        await self._write_other(
            "INSERT INTO cuelog_snapshots VALUES (%s, %s, %s) ON CONFLICT (stream) "
            "DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state",
            [stream, version, bytes(state)],
        )

    async def anchor(self, key: bytes) -> Anchor:
        """Seal the current head with `key`, store the seal in cuelog_meta and return it."""
        head = self.head()
        sealed = Anchor.seal(key, head.seq, head.hash, self._clock())
        await self._write_other(
            "INSERT INTO cuelog_meta VALUES ('anchor', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            [msgspec.msgpack.encode(sealed)],
        )
        return sealed

    async def _write_other(self, sql: str, params: Sequence[object]) -> None:
        if self._closed or self.readonly:
            raise LogClosed("the log is closed" if self._closed else "the log is read-only")
        write = _OtherWrite(sql, params)
        self._other.append(write)
        self._wake_writer.set()
        await write.done.wait()
        if write.error is not None:
            raise write.error

    async def _writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake_writer.wait()
            # Let every appender that is already runnable join this group.
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._wake_writer = trio.Event()
            batch, self._pending = self._pending, []
            other, self._other = self._other, []
            for request in batch:
                request.taken = True
            if batch or other:
                with trio.CancelScope(shield=True):
                    await self._commit_group(batch, other)
            if self._closed and not self._pending and not self._other:
                return

    async def _commit_group(self, batch: list[PendingAppend], other: list[_OtherWrite]) -> None:
        error: BaseException | None = None
        done: _Committed | None = None
        started = time.perf_counter()
        try:
            # The clock is read here: a test's clock may only work on the trio thread.
            done = await trio.to_thread.run_sync(
                self._commit_sync, batch, other, self._clock(), limiter=self._writer_limiter
            )
        except LogError as exc:
            error = exc
        except Exception as exc:  # a bug in one commit must not kill the writer
            log.error("group commit failed", error=repr(exc))
            error = LogError(f"cannot append: {exc}")
        if done is not None:
            self._tail_seq, self._tail_hash = done.tail_seq, done.tail_hash
            self._batches += 1
            self._largest_batch = max(self._largest_batch, len(batch))
            self._commit_seconds += time.perf_counter() - started
            self._events_appended += done.events
            self._conflicts += done.conflicts
            self._replays += done.replays
        for request in batch:
            self._appends += 1
            if error is not None:
                request.error = error
                request.result = None
            assert request.task is not None
            trio.lowlevel.reschedule(request.task)
        for write in other:
            write.error = error
            write.done.set()
        if done is not None and done.events:
            self._wake_subscribers(
                part[0] for request in batch if request.result for part in request.parts
            )

    def _commit_sync(
        self, batch: list[PendingAppend], other: list[_OtherWrite], ts: int
    ) -> _Committed:
        """One transaction for the whole group; retried once on a fresh connection when the
        old one turns out to be dead before COMMIT was sent (nothing was written then)."""
        for attempt in (1, 2):
            for request in batch:
                request.result = request.error = None
            conn = self._writer_conn or _connect(self.url)
            self._writer_conn = conn
            try:
                return self._commit_on(conn, batch, other, ts)
            except _Ambiguous as exc:
                self._drop_writer()
                raise LogUnavailable(
                    f"the connection to PostgreSQL broke during COMMIT ({exc}); the append may "
                    "or may not be stored: retry it with the same idempotency key"
                ) from None
            except psycopg.OperationalError as exc:
                self._drop_writer()
                if attempt == 2:
                    raise LogUnavailable(
                        f"the PostgreSQL log is unreachable ({_reason(exc)}); nothing was stored"
                    ) from None
                log.warning("log connection lost; reconnecting", error=_reason(exc))
            except psycopg.Error as exc:
                self._roll_back(conn)
                raise LogError(f"commit failed: {_reason(exc)}") from None
            except Exception:
                self._roll_back(conn)
                raise
        raise AssertionError("unreachable")

    def _roll_back(self, conn: psycopg.Connection[Any]) -> None:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                self._drop_writer()

    def _drop_writer(self) -> None:
        _close_quietly(self._writer_conn)
        self._writer_conn = None
        self.content.close()

    def _commit_on(
        self,
        conn: psycopg.Connection[Any],
        batch: list[PendingAppend],
        other: list[_OtherWrite],
        ts: int,
    ) -> _Committed:
        done = _Committed()
        cur = conn.cursor(binary=True)
        cur.execute("BEGIN")
        row = cur.execute("SELECT seq, hash FROM cuelog_head FOR UPDATE").fetchone()
        if row is None:
            raise LogFormatError("the cuelog_head row is missing")
        seq, prev = int(row[0]), bytes(row[1])
        versions: dict[str, int] = {}
        stored_idem: dict[str, tuple[int, int, bytes]] = {}
        if batch:
            names = list({part[0] for request in batch for part in request.parts})
            cur.execute(
                "SELECT stream, version FROM cuelog_streams WHERE stream = ANY(%s)", [names]
            )
            versions = {name: int(version) for name, version in cur.fetchall()}
            keys = list({request.idem for request in batch if request.idem is not None})
            if keys:
                cur.execute(
                    "SELECT key, first_seq, count, digest FROM cuelog_idem WHERE key = ANY(%s)",
                    [keys],
                )
                stored_idem = {k: (int(f), int(c), bytes(d)) for k, f, c, d in cur.fetchall()}
        fence = self.fence
        fenced = fence.fence(cur, batch) if fence is not None and batch else {}
        rows_seq: list[int] = []
        rows_stream: list[str] = []
        rows_version: list[int] = []
        rows_record: list[bytes] = []
        touched: dict[str, int] = {}
        idem_rows: list[tuple[str, int, int, bytes]] = []
        claimed: dict[str, PendingAppend] = {}
        repeats: list[tuple[PendingAppend, PendingAppend]] = []
        for request in batch:
            if request.idem is not None:
                first = claimed.get(request.idem)
                if first is not None:
                    repeats.append((request, first))
                    continue
                stored = stored_idem.get(request.idem)
                if stored is not None:
                    first_seq, count, original = stored
                    if self._is_repeat(request, original, done):
                        request.result = self._read_range(cur, first_seq, count)
                    continue
            if fenced:
                for part_stream, _, _, _ in request.parts:
                    lost = fenced.get(part_stream)
                    if lost is not None:
                        request.error = lost
                        break
                if request.error is not None:
                    continue
            # A conflict in any part fails the whole append and writes nothing.
            currents: list[int] = []
            for part_stream, _, expected, _ in request.parts:
                current = versions.get(part_stream, 0)
                if expected is not None and expected != current:
                    done.conflicts += 1
                    request.error = WrongExpectedVersion(part_stream, expected, current)
                    break
                currents.append(current)
            if request.error is not None:
                continue
            records: list[RecordedEvent] = []
            for record, value in request.encode(currents, seq, prev, ts):
                rows_seq.append(record.seq)
                rows_stream.append(record.stream)
                rows_version.append(record.version)
                rows_record.append(value)
                records.append(record)
                seq, prev = record.seq, record.hash
            for (part_stream, events, _, _), base in zip(request.parts, currents, strict=True):
                versions[part_stream] = touched[part_stream] = base + len(events)
            request.result = records
            if request.idem is not None:
                claimed[request.idem] = request
                idem_rows.append((request.idem, records[0].seq, len(records), request.digest))
        for request, first in repeats:
            if self._is_repeat(request, first.digest, done):
                request.result = first.result
        if rows_seq:
            # Pipelined: the writes depend on nothing they return, so they cost one round trip.
            with conn.pipeline():
                cur.execute(
                    "INSERT INTO cuelog_events (seq, stream, version, record) SELECT * FROM "
                    "unnest(%s::bigint[], %s::text[], %s::integer[], %s::bytea[])",
                    [rows_seq, rows_stream, rows_version, rows_record],
                )
                cur.execute(
                    "INSERT INTO cuelog_streams (stream, version) SELECT * FROM "
                    "unnest(%s::text[], %s::integer[]) ON CONFLICT (stream) "
                    "DO UPDATE SET version = EXCLUDED.version",
                    [list(touched), list(touched.values())],
                )
                if idem_rows:
                    cur.execute(
                        "INSERT INTO cuelog_idem (key, first_seq, count, digest) SELECT * FROM "
                        "unnest(%s::text[], %s::bigint[], %s::integer[], %s::bytea[])",
                        [list(column) for column in zip(*idem_rows, strict=True)],
                    )
                cur.execute("UPDATE cuelog_head SET seq = %s, hash = %s", [seq, prev])
                # Delivered on COMMIT only, to every listener of this log.
                cur.execute("SELECT pg_notify(%s, %s)", [self._channel, self._instance])
                for write in other:
                    cur.execute(write.sql, write.params)
        else:
            for write in other:
                cur.execute(write.sql, write.params)
        try:
            cur.execute("COMMIT")
        except psycopg.OperationalError as exc:
            raise _Ambiguous(_reason(exc)) from None
        done.events = len(rows_seq)
        done.tail_seq, done.tail_hash = seq, prev
        return done

    def _is_repeat(self, request: PendingAppend, original_digest: bytes, done: _Committed) -> bool:
        """A reused idempotency key: the same body is a repeat, another body a conflict."""
        assert request.idem is not None
        if original_digest != request.digest:
            done.conflicts += 1
            request.error = IdempotencyConflict(request.idem)
            return False
        done.replays += 1
        return True

    def _read_range(
        self, cur: psycopg.Cursor[Any], first_seq: int, count: int
    ) -> list[RecordedEvent]:
        cur.execute(
            "SELECT record FROM cuelog_events WHERE seq >= %s AND seq < %s ORDER BY seq",
            [first_seq, first_seq + count],
        )
        out = [decode_record(bytes(value)) for (value,) in cur.fetchall()]
        if len(out) != count:
            raise LogFormatError(f"events {first_seq}..{first_seq + count - 1} are missing")
        return out

    # -- reading -------------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        """Run one query on the reader connection; reconnect once if it was lost."""
        for attempt in (1, 2):
            conn = self._reader
            if conn is None:
                if self._closed:
                    raise LogClosed("the log is closed")
                conn = self._reader = _connect(self.url, readonly=self.readonly)
            try:
                return conn.cursor(binary=True).execute(sql, params).fetchall()
            except psycopg.OperationalError as exc:
                _close_quietly(conn)
                self._reader = None
                if attempt == 2:
                    raise LogUnavailable(
                        f"the PostgreSQL log is unreachable: {_reason(exc)}"
                    ) from None
        raise AssertionError("unreachable")

    def stream_version(self, stream: str) -> int:
        """The stream's current version (0 when it has no events)."""
        rows = self._read("SELECT version FROM cuelog_streams WHERE stream = %s", [stream])
        return int(rows[0][0]) if rows else 0

    def _records(
        self, where: str, order: str, params: list[object], limit: int, max_bytes: int | None
    ) -> list[bytes]:
        # Stop once `max_bytes` of stored records are read (but take at least one), as LMDB
        # does, without fetching the rows past the budget.
        if limit <= 0:
            return []
        if max_bytes is None:
            sql = f"SELECT record FROM cuelog_events WHERE {where} ORDER BY {order} LIMIT %s"
            rows = self._read(sql, [*params, limit])
        else:
            sql = (
                "SELECT record FROM (SELECT record, sum(octet_length(record)) OVER "
                f"(ORDER BY {order} ROWS UNBOUNDED PRECEDING) - octet_length(record) AS before "
                f"FROM cuelog_events WHERE {where} ORDER BY {order} LIMIT %s) AS page "
                "WHERE before < greatest(%s, 1)"
            )
            rows = self._read(sql, [*params, limit, max_bytes])
        return [bytes(value) for (value,) in rows]

    def read_stream(
        self,
        stream: str,
        from_version: int = 1,
        *,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]:
        """The stream's events from `from_version` on (see `EventLog.read_stream`)."""
        values = self._records(
            "stream = %s AND version >= %s",
            "version",
            [stream, max(from_version, 1)],
            (1 << 31) if limit is None else limit,
            max_bytes,
        )
        return [decode_record(value) for value in values]

    def list_streams(self, prefix: str, *, after: str | None = None, limit: int = 100) -> list[str]:
        """Names of streams starting with `prefix`, in byte order, after `after` (a cursor)."""
        end = _prefix_end(prefix)
        sql = "SELECT stream FROM cuelog_streams WHERE stream >= %s"
        params: list[object] = [prefix]
        if after is not None:
            sql += " AND stream > %s"
            params.append(after)
        if end is not None:
            sql += " AND stream < %s"
            params.append(end)
        sql += " ORDER BY stream LIMIT %s"
        return [str(name) for (name,) in self._read(sql, [*params, max(limit, 0)])]

    def read_all(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[RecordedEvent]:
        """Up to `limit` events with seq > `after_seq`, in order (see `EventLog.read_all`)."""
        values = self._records("seq > %s", "seq", [after_seq], limit, max_bytes)
        return [decode_record(value) for value in values]

    def read_event(self, seq: int) -> RecordedEvent | None:
        rows = self._read("SELECT record FROM cuelog_events WHERE seq = %s", [seq])
        return decode_record(bytes(rows[0][0])) if rows else None

    def read_records(
        self, after_seq: int = 0, limit: int = 1000, *, max_bytes: int | None = None
    ) -> list[StoredRecord]:
        """Like `read_all`, with each event's exact hashed body, for export."""
        out = []
        for value in self._records("seq > %s", "seq", [after_seq], limit, max_bytes):
            event = decode_record(value)
            out.append(StoredRecord(event.seq, event, value[BODY_OFFSET:]))
        return out

    def load_snapshot(self, stream: str) -> tuple[int, bytes] | None:
        rows = self._read("SELECT version, state FROM cuelog_snapshots WHERE stream = %s", [stream])
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def head(self) -> Head:
        """The last committed seq and hash, whichever process committed it."""
        rows = self._read("SELECT seq, hash FROM cuelog_head", [])
        if not rows:
            raise LogFormatError("the cuelog_head row is missing")
        return Head(int(rows[0][0]), bytes(rows[0][1]))

    def stored_anchor(self) -> Anchor | None:
        rows = self._read("SELECT value FROM cuelog_meta WHERE key = 'anchor'", [])
        if not rows:
            return None
        try:
            return msgspec.msgpack.decode(bytes(rows[0][0]), type=Anchor)
        except msgspec.DecodeError:
            return Anchor(-1, b"", b"")

    # -- following -----------------------------------------------------------------------------

    async def _follow(
        self, next_batch: Callable[[], list[RecordedEvent]], stream: str | None = None
    ) -> AsyncIterator[list[RecordedEvent]]:
        """Yield batches as `next_batch` finds them; between batches wait for a commit (touching
        `stream`, when given: another process's commit wakes everyone), a notification or the
        next poll, until the log closes. A lost connection makes the subscriber wait and retry,
        not fail."""
        self._subscribers += 1
        if stream is not None:
            self._commits.follow(stream)
        try:
            while True:
                committed = self._commits.waiter(stream)
                try:
                    events = next_batch()
                except LogUnavailable as exc:
                    if self._closed:
                        return
                    log.warning("subscriber cannot read the log; retrying", error=str(exc))
                    await trio.sleep(_RETRY_SECONDS)
                    continue
                if events:
                    yield events
                    await trio.lowlevel.checkpoint()
                    continue
                if self._closed or self._subscriptions_ended:
                    return
                with trio.move_on_after(_POLL_SECONDS if self._listening else _RETRY_SECONDS):
                    await committed.wait()
        finally:
            self._subscribers -= 1
            if stream is not None:
                self._commits.unfollow(stream)

    def _wake_subscribers(self, streams: Iterable[str] | None = None) -> None:
        """After a commit that touched `streams` (None: any, such as another process's)."""
        self._commits.notify(streams)

    def end_subscriptions(self) -> None:
        """Make every subscriber return once it has caught up (a server shutting down)."""
        self._subscriptions_ended = True
        self._wake_subscribers()

    async def _listen(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake local subscribers when another process commits to this log."""
        task_status.started()
        while not self._closed:
            try:
                conn = await trio.to_thread.run_sync(self._start_listening)
            except LogUnavailable as exc:
                log.warning("cannot listen for commits; polling", error=str(exc))
                await trio.sleep(_RETRY_SECONDS)
                continue
            self._listening = True
            try:
                while not self._closed:
                    if await trio.to_thread.run_sync(self._wait_for_notification, conn):
                        self._wake_subscribers()
            except psycopg.OperationalError as exc:
                log.warning("commit listener lost its connection", error=_reason(exc))
            finally:
                self._listening = False
                _close_quietly(conn)
            self._wake_subscribers()  # catch up on whatever was missed while it was down

    def _start_listening(self) -> psycopg.Connection[Any]:
        conn = _connect(self.url)
        try:
            conn.execute(f'LISTEN "{self._channel}"')
        except psycopg.Error as exc:
            _close_quietly(conn)
            raise LogUnavailable(f"cannot LISTEN: {_reason(exc)}") from None
        return conn

    def _wait_for_notification(self, conn: psycopg.Connection[Any]) -> bool:
        """True when another process committed; returns within `_LISTEN_SECONDS` regardless."""
        woke = False
        for note in conn.notifies(timeout=_LISTEN_SECONDS):
            if note.payload == f"{self._instance}:stop":
                return woke
            if note.payload != self._instance:
                woke = True
            # Drain what is already here, then hand the wake-up over.
            break
        return woke

    def _stop_listening(self) -> None:
        """Wake this process's listening thread now rather than at its next timeout."""
        with suppress(LogError, psycopg.Error):
            self._read("SELECT pg_notify(%s, %s)", [self._channel, f"{self._instance}:stop"])

    # -- verification and copies ---------------------------------------------------------------

    async def _in_snapshot(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `fn` in a worker thread, in one REPEATABLE READ transaction: one commit's view."""

        def run() -> T:
            conn = _connect(self.url)
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                result = fn(conn)
                conn.execute("COMMIT")
                return result
            except psycopg.OperationalError as exc:
                raise LogUnavailable(f"the PostgreSQL log is unreachable: {_reason(exc)}") from None
            finally:
                _close_quietly(conn)

        return await trio.to_thread.run_sync(run, limiter=self._reader_limiter)

    async def verify(
        self,
        *,
        anchor_key: bytes | None = None,
        anchor: Anchor | None = None,
        progress: Progress | None = None,
        jobs: int = 1,
    ) -> VerifyReport:
        """Walk the chain, the stream index, the stream versions and the head row in one snapshot
        in a worker thread; name the first bad seq and why (in one process, whatever `jobs`)."""
        if anchor is None:
            anchor = self.stored_anchor()
        genesis = self._genesis
        report = await self._in_snapshot(
            lambda conn: _verify_tables(conn, genesis, anchor, anchor_key, progress)
        )
        return await with_content_check(report, self.content)

    async def copy_to(self, dest: Path) -> None:
        """Write the log as of one commit into `dest` as an ordinary LMDB data dir (same log id,
        same records), while appends go on."""
        prepare_copy_dest(dest)
        log_id = self._log_id

        def copy(conn: psycopg.Connection[Any]) -> None:
            cur = conn.cursor(binary=True)
            idem = {
                str(k): (int(f), int(c), bytes(d))
                for k, f, c, d in cur.execute(
                    "SELECT key, first_seq, count, digest FROM cuelog_idem"
                ).fetchall()
            }
            snapshots = {
                str(s): (int(v), bytes(state))
                for s, v, state in cur.execute(
                    "SELECT stream, version, state FROM cuelog_snapshots"
                ).fetchall()
            }
            row = cur.execute("SELECT value FROM cuelog_meta WHERE key = 'anchor'").fetchone()
            anchor = None
            if row is not None:
                with suppress(msgspec.DecodeError):
                    anchor = msgspec.msgpack.decode(bytes(row[0]), type=Anchor)
            write_data_dir(
                dest,
                log_id=log_id,
                records=((decode_record(v), v) for _, v in _stored_records(conn)),
                idempotency=idem,
                snapshots=snapshots,
                anchor=anchor,
            )

        await self._in_snapshot(copy)
        await self.content.copy_into(dest)

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            head_seq=self._tail_seq if not self.readonly else self.head().seq,
            appends=self._appends,
            events_appended=self._events_appended,
            batches=self._batches,
            largest_batch=self._largest_batch,
            commit_seconds_total=self._commit_seconds,
            conflicts=self._conflicts,
            idempotent_replays=self._replays,
            map_size=0,  # the metric is LMDB's
            pending=len(self._pending),
            subscribers=self._subscribers,
        )

    def _close(self) -> None:
        self._closed = True
        self._wake_subscribers()
        self.data_keys.close()
        _close_quietly(self._reader)
        self._reader = None
        _close_quietly(self._writer_conn)
        self._writer_conn = None


_FETCH_ROWS: Final = 2000


def _stored_records(conn: psycopg.Connection[Any]) -> Iterator[tuple[bytes, bytes]]:
    """(u64be seq, stored record) in seq order, streamed through a server-side cursor."""
    pack = _U64.pack
    with conn.cursor(name="cuelog_records", binary=True) as cur:
        cur.itersize = _FETCH_ROWS
        cur.execute("SELECT seq, record FROM cuelog_events ORDER BY seq")
        for seq, value in cur:
            yield pack(seq), bytes(value)


def _stream_index(conn: psycopg.Connection[Any]) -> Iterator[tuple[bytes, bytes]]:
    """(stream || 0x00 || u32be version, u64be seq): the LMDB index layout, from the columns."""
    pack32, pack64 = _U32.pack, _U64.pack
    with conn.cursor(name="cuelog_index", binary=True) as cur:
        cur.itersize = _FETCH_ROWS * 4
        cur.execute("SELECT stream, version, seq FROM cuelog_events")
        for stream, version, seq in cur:
            yield str(stream).encode() + b"\x00" + pack32(version & 0xFFFFFFFF), pack64(seq)


def _verify_tables(
    conn: psycopg.Connection[Any],
    genesis: bytes,
    anchor: Anchor | None,
    anchor_key: bytes | None,
    progress: Progress | None,
) -> VerifyReport:
    cur = conn.cursor(binary=True)
    head = cur.execute("SELECT seq, hash FROM cuelog_head").fetchone()
    head_seq = int(head[0]) if head is not None else 0

    def get_record(key: bytes) -> bytes | None:
        seq = _U64.unpack(key)[0] if len(key) == 8 else 0
        row = cur.execute("SELECT record FROM cuelog_events WHERE seq = %s", [seq]).fetchone()
        return bytes(row[0]) if row is not None else None

    def get_index(key: bytes) -> bytes | None:
        stream, version = key[:-5], key[-4:]
        if len(key) < 6 or key[-5] != 0:
            return None
        row = cur.execute(
            "SELECT seq FROM cuelog_events WHERE stream = %s AND version = %s",
            [stream.decode(errors="replace"), _U32.unpack(version)[0]],
        ).fetchone()
        return _U64.pack(int(row[0])) if row is not None else None

    report = verify_chain(
        lambda: _stored_records(conn),
        lambda: _stream_index(conn),
        get_record,
        get_index,
        genesis,
        head_seq,
        anchor=anchor,
        anchor_key=anchor_key,
        progress=progress,
    )
    if not report.ok:
        return report
    last = cur.execute(
        "SELECT seq, substring(record FROM 1 FOR %s) FROM cuelog_events ORDER BY seq DESC LIMIT 1",
        [HASH_SIZE],
    ).fetchone()
    last_seq, last_hash = (int(last[0]), bytes(last[1])) if last is not None else (0, genesis)
    if head is None or (head_seq, bytes(head[1])) != (last_seq, last_hash):
        return VerifyReport(
            ok=False,
            checked=report.checked,
            head_seq=head_seq,
            first_bad_seq=last_seq + 1 if head_seq > last_seq else max(head_seq, 1),
            reason=f"the head row says seq {head_seq} but the events end at seq {last_seq}"
            + (" (tail truncated)" if head_seq > last_seq else ""),
        )
    wrong = cur.execute(
        "SELECT coalesce(s.stream, e.stream), s.version, e.version, e.seq FROM cuelog_streams s "
        "FULL JOIN (SELECT DISTINCT ON (stream) stream, version, seq FROM cuelog_events "
        "ORDER BY stream, version DESC) e ON e.stream = s.stream "
        "WHERE s.version IS DISTINCT FROM e.version ORDER BY e.seq NULLS LAST LIMIT 1"
    ).fetchone()
    if wrong is not None:
        stream, listed, actual, seq = wrong
        return VerifyReport(
            ok=False,
            checked=report.checked,
            head_seq=head_seq,
            first_bad_seq=int(seq) if seq is not None else 0,
            reason=f"cuelog_streams lists {stream!r} at version {listed}, its events end at "
            f"version {actual or 0}",
        )
    return report


def import_log(
    url: str,
    *,
    log_id: bytes,
    records: Iterable[tuple[int, str, int, bytes]],
    idempotency: Mapping[str, tuple[int, int, bytes]],
    snapshots: Mapping[str, tuple[int, bytes]],
    anchor: bytes | None,
    content_dir: Path | None = None,
) -> int:
    """Write a whole log (seq, stream, version, stored record in seq order) and the blobs of a
    data dir's `content_dir` into the empty database at `url` under `log_id`, in one
    transaction; return how many events it holds.

    A database that already holds events is refused: a copy never merges two logs.
    """
    importer = PostgresEventLog(url, readonly=False, max_event_bytes=0, clock=now_us)
    conn = _connect(url)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
            if importer._create_or_migrate(conn, log_id) != log_id:
                raise LogError(
                    f"{redact_url(url)} already holds another cuelog log; copy into an empty "
                    "database"
                )
            row = conn.execute("SELECT seq FROM cuelog_head FOR UPDATE").fetchone()
            if row is None or row[0] != 0:
                raise LogError(
                    f"{redact_url(url)} already holds events; copy into an empty database"
                )
            versions: dict[str, int] = {}
            seq, last_hash = 0, genesis_hash(log_id)
            cur = conn.cursor()
            with cur.copy(
                "COPY cuelog_events (seq, stream, version, record) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "text", "int4", "bytea"])
                for seq, stream, version, value in records:
                    copy.write_row((seq, stream, version, value))
                    versions[stream] = version
                    last_hash = value[:HASH_SIZE]
            if versions:
                cur.execute(
                    "INSERT INTO cuelog_streams SELECT * FROM unnest(%s::text[], %s::integer[])",
                    [list(versions), list(versions.values())],
                )
            for key, (first_seq, count, digest) in idempotency.items():
                cur.execute(
                    "INSERT INTO cuelog_idem VALUES (%s, %s, %s, %s)",
                    [key, first_seq, count, digest],
                )
            for stream, (version, state) in snapshots.items():
                cur.execute(
                    "INSERT INTO cuelog_snapshots VALUES (%s, %s, %s)", [stream, version, state]
                )
            if anchor is not None:
                cur.execute("INSERT INTO cuelog_meta VALUES ('anchor', %s)", [anchor])
            cur.execute("UPDATE cuelog_head SET seq = %s, hash = %s", [seq, last_hash])
            if content_dir is not None:
                import_blobs(conn, content_dir)
    except psycopg.OperationalError as exc:
        raise LogUnavailable(f"the PostgreSQL log is unreachable: {_reason(exc)}") from None
    except psycopg.Error as exc:
        raise LogError(f"cannot copy into {redact_url(url)}: {_reason(exc)}") from None
    finally:
        _close_quietly(conn)
    return seq


@asynccontextmanager
async def open_postgres_event_log(
    url: str,
    *,
    readonly: bool = False,
    max_event_bytes: int = 1 << 20,
    clock: Callable[[], int] = now_us,
) -> AsyncIterator[PostgresEventLog]:
    """Open the log in the PostgreSQL database at `url`, creating or migrating its tables.

    On exit, appends already queued are committed before the writer stops.
    """
    event_log = PostgresEventLog(
        url, readonly=readonly, max_event_bytes=max_event_bytes, clock=clock
    )
    await trio.to_thread.run_sync(event_log._open_sync)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(event_log._listen)
            if not readonly:
                await nursery.start(event_log._writer)
            try:
                yield event_log
            finally:
                event_log._closed = True
                event_log._wake_writer.set()
                # The writer drains what is queued, then returns; the listener is told to stop.
                event_log._stop_listening()
    finally:
        event_log._close()
