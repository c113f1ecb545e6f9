"""The PostgreSQL log's content store: blobs in the log's own database.

Every process sharing the log sees every blob, a blob is committed before `put` returns (so the
event naming it never dangles), and the same bytes are stored once (the digest is the key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Final, TypeVar, final

import psycopg
import trio

from cuelog.runtime._content import CONTENT_DIR, ContentMissing, check_digest, write_blob
from cuelog.runtime._errors import LogError, LogUnavailable

T = TypeVar("T")

CREATE_TABLE: Final = """CREATE TABLE cuelog_content (
    digest text COLLATE "C" PRIMARY KEY,
    data bytea NOT NULL)"""
_FETCH_ROWS: Final = 16  # blobs may be large: a few per round trip


@final
class PostgresContentStore:
    """Blobs by sha256 hex digest in the `cuelog_content` table, over one connection of its own
    (used by one worker thread at a time)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], *, readonly: bool) -> None:
        self._connect = connect
        self.readonly = readonly
        self._conn: psycopg.Connection[Any] | None = None
        self._limiter = trio.CapacityLimiter(1)

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        def run() -> T:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                return fn(self._conn)
            except psycopg.OperationalError as exc:
                self.close()  # the next call connects again
                reason = str(exc).strip().splitlines()
                raise LogUnavailable(
                    f"the PostgreSQL content store is unreachable: {reason[0] if reason else exc}"
                ) from None

        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    async def put(self, data: bytes) -> str:
        """Store `data` (committed before this returns); return its digest."""
        if self.readonly:
            raise LogError("the content store is open for reading only")
        digest = hashlib.sha256(data).hexdigest()
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO cuelog_content (digest, data) VALUES (%s, %s) "
                "ON CONFLICT (digest) DO NOTHING",
                [digest, data],
            )
        )
        return digest

    async def get(self, digest: str) -> bytes:
        check_digest(digest)
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT data FROM cuelog_content WHERE digest = %s", [digest]
            ).fetchone()
        )
        if row is None:
            raise ContentMissing(f"content {digest} is not in the content store")
        return bytes(row[0])

    async def verify(self) -> tuple[int, str | None]:
        """Re-hash every blob; return how many were checked and the first bad digest, if any."""

        def walk(conn: psycopg.Connection[Any]) -> tuple[int, str | None]:
            checked = 0
            for digest, data in _blobs(conn):
                checked += 1
                if hashlib.sha256(data).hexdigest() != digest:
                    return checked, digest
            return checked, None

        return await self._run(walk)

    async def copy_into(self, dest: Path) -> None:
        """Write every blob into `dest/content/` (a data dir copy of the log)."""
        target = dest / CONTENT_DIR

        def copy(conn: psycopg.Connection[Any]) -> None:
            for digest, data in _blobs(conn):
                check_digest(digest)  # a file name: only the exact hex shape may become one
                write_blob(target, digest, data, sync=False)

        await self._run(copy)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()


def _blobs(conn: psycopg.Connection[Any]) -> Iterator[tuple[str, bytes]]:
    """(digest, bytes) of every blob in digest order, streamed through a server-side cursor."""
    with conn.transaction(), conn.cursor(name="cuelog_content", binary=True) as cur:
        cur.itersize = _FETCH_ROWS
        cur.execute("SELECT digest, data FROM cuelog_content ORDER BY digest")
        for digest, data in cur:
            yield str(digest), bytes(data)


def import_blobs(conn: psycopg.Connection[Any], directory: Path) -> int:
    """Insert every blob file of a data dir's `content/` (inside the caller's transaction);
    return how many. A file whose bytes do not hash to its name is refused."""
    if not directory.is_dir():
        return 0
    count = 0
    for path in sorted(directory.iterdir()):
        try:
            check_digest(path.name)
        except ContentMissing:
            continue  # a temp file a crash left behind: never referenced
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != path.name:
            raise LogError(f"content blob {path.name} does not match its digest; run cuelog verify")
        conn.execute(
            "INSERT INTO cuelog_content (digest, data) VALUES (%s, %s) "
            "ON CONFLICT (digest) DO NOTHING",
            [path.name, data],
        )
        count += 1
    return count
