"""Where a log lives, and opening it: a data dir path, `lmdb:///abs/path`, `memory:` or
`postgresql://…`.

Layers above name a log by location and get an `EventLog`; which backend serves it is decided
here and nowhere else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from cuelog.runtime._envelope import now_us
from cuelog.runtime._errors import LogError
from cuelog.runtime._lmdb import open_lmdb_event_log
from cuelog.runtime._memory import MemoryEventLog
from cuelog.runtime._protocol import EventLog

if TYPE_CHECKING:  # the PostgreSQL backend (and psycopg) loads only for a PostgreSQL log
    from cuelog.runtime._postgres import PostgresEventLog
    from cuelog.runtime._postgres_keys import PostgresKeyStore

_POSTGRES = ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable PostgreSQL URL>"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class LogLocation(msgspec.Struct, frozen=True):
    """A parsed log location: the backend and, for LMDB, its data dir; for PostgreSQL, its URL
    (which may carry a password: show `redacted` instead)."""

    backend: Literal["lmdb", "memory", "postgresql"]
    path: Path | None = None
    url: str | None = None

    @property
    def redacted(self) -> str:
        """The location as it may be shown: a path, or the URL without its password."""
        if self.url is not None:
            return redact_url(self.url)
        return "memory:" if self.path is None else str(self.path)

    def __repr__(self) -> str:
        return f"LogLocation({self.backend!r}, {self.redacted!r})"


def parse_log_location(location: str | os.PathLike[str]) -> LogLocation:
    """Read a data dir path, `lmdb:///abs/path`, `memory:` or a PostgreSQL URL
    (`postgresql://user@host/db`, libpq's URI form); raise `LogError` for the rest."""
    if not isinstance(location, str):
        return LogLocation("lmdb", Path(location))
    if location.startswith("memory:"):
        if location != "memory:":
            raise LogError(f"a memory log is named exactly 'memory:', not {location!r}")
        return LogLocation("memory")
    if "://" not in location:
        return LogLocation("lmdb", Path(location))  # a data dir, even one with a colon
    url = urlsplit(location)
    scheme = url.scheme.lower()
    if scheme == "lmdb":
        if url.netloc or not url.path.startswith("/") or url.query or url.fragment:
            raise LogError(f"an LMDB log URL is lmdb:///absolute/path, not {location!r}")
        return LogLocation("lmdb", Path(unquote(url.path)))
    if scheme in _POSTGRES:
        try:
            url.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise LogError(f"the PostgreSQL URL {redact_url(location)} has a bad port") from None
        return LogLocation("postgresql", url=location)
    # Only the scheme is named: a URL may carry a password.
    raise LogError(
        f"unknown log scheme {scheme!r}: use a data dir, lmdb:///path, memory: or postgresql://"
    )


@asynccontextmanager
async def open_event_log(
    location: str | os.PathLike[str],
    *,
    readonly: bool = False,
    sync: bool = True,
    initial_map_size: int = 64 << 20,
    max_map_size: int = 1 << 40,
    max_event_bytes: int = 1 << 20,
    clock: Callable[[], int] = now_us,
    commit_in_thread: bool = True,
) -> AsyncIterator[EventLog]:
    """Open (or create) the log at `location` (see `parse_log_location`).

    LMDB: read-only opens work beside a running writer; on exit, appends already queued are
    committed before the writer stops. Memory: a new empty log that lives until exit.
    PostgreSQL: the tables are created or migrated on open (not when read-only); several
    processes may write to one database. The LMDB-only options (sync, map sizes,
    commit_in_thread) apply to LMDB only.
    """
    where = parse_log_location(location)
    if where.backend == "memory":
        if readonly:
            raise LogError("a memory: log starts empty, so opening it read-only makes no sense")
        memory = MemoryEventLog(max_event_bytes=max_event_bytes, clock=clock)
        try:
            yield memory
        finally:
            memory._close()
        return
    if where.backend == "postgresql":
        from cuelog.runtime._postgres import open_postgres_event_log

        assert where.url is not None
        async with open_postgres_event_log(
            where.url, readonly=readonly, max_event_bytes=max_event_bytes, clock=clock
        ) as pg_log:
            yield pg_log
        return
    assert where.path is not None
    async with open_lmdb_event_log(
        where.path,
        readonly=readonly,
        sync=sync,
        initial_map_size=initial_map_size,
        max_map_size=max_map_size,
        max_event_bytes=max_event_bytes,
        clock=clock,
        commit_in_thread=commit_in_thread,
    ) as lmdb_log:
        yield lmdb_log


def shared_data_keys(log: EventLog) -> PostgresKeyStore | None:
    """The table of data keys beside the log, when it has one (PostgreSQL: every process sharing
    the log reads it); None for a log whose keys live in a key file of the process."""
    postgres = sys.modules.get("cuelog.runtime._postgres")
    if postgres is None:
        return None  # never loaded: no log here is a PostgreSQL one
    backend: type[PostgresEventLog] = postgres.PostgresEventLog
    return log.data_keys if isinstance(log, backend) else None
