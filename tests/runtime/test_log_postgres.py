"""The PostgreSQL event log: the shared contract, plus what only a database-backed log shows."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from cuelog.runtime import (
    ContentMissing,
    EventLog,
    LogError,
    LogFormatError,
    LogUnavailable,
    RecordedEvent,
    open_event_log,
)
from cuelog.runtime._postgres import PostgresEventLog
from tests.postgres import fresh_database, run_sql
from tests.runtime.log_contract import GUARD_SECONDS, EventLogContract, raw, seqs


class TestPostgresEventLog(EventLogContract):
    """The PostgreSQL backend passes the whole event log contract, each test in a new database."""

    url: str

    @pytest.fixture(autouse=True)
    def _database(self) -> Iterator[None]:
        with fresh_database() as url:
            self.url = url
            yield

    def open_log(self, path: Path) -> AbstractAsyncContextManager[EventLog]:
        return open_event_log(self.url, max_event_bytes=self.max_event_bytes)


async def eventually(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds (a failing test stops at the guard)."""
    with trio.fail_after(GUARD_SECONDS):
        while True:
            if check():
                return
            await trio.sleep(0.005)


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as created:
        yield created


async def test_a_newer_schema_is_refused_clearly(url: str) -> None:
    """A database whose schema version row is newer than this cuelog's is refused, not touched."""
    async with open_event_log(url) as log:
        await log.append("s", [raw(1)])
    run_sql(url, "UPDATE cuelog_meta SET value = '99' WHERE key = 'schema'")
    for readonly in (False, True):
        with pytest.raises(LogFormatError, match=r"schema version 99.*upgrade cuelog"):
            async with open_event_log(url, readonly=readonly):
                pass  # pragma: no cover - the open must fail
    assert run_sql(url, "SELECT count(*) FROM cuelog_events") == [(1,)]


async def test_a_read_only_open_of_an_empty_database_is_refused(url: str) -> None:
    """Opening a database without cuelog tables read-only says so and creates nothing."""
    with pytest.raises(LogFormatError, match="no cuelog log"):
        async with open_event_log(url, readonly=True):
            pass  # pragma: no cover - the open must fail
    assert run_sql(url, "SELECT to_regclass('cuelog_meta') IS NULL") == [(True,)]


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    """A URL nothing answers on raises LogUnavailable that names the host, never the password."""
    with pytest.raises(LogUnavailable) as caught:
        async with open_event_log("postgresql://cuelog:hunter2@127.0.0.1:1/log"):
            pass  # pragma: no cover - the open must fail
    assert "127.0.0.1" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_two_writers_on_one_database_keep_one_linear_chain(url: str) -> None:
    """Two logs open on one database (two processes' writers) interleave into one gapless chain."""
    async with open_event_log(url) as one, open_event_log(url) as two:

        async def write(log: EventLog, name: str) -> None:
            for i in range(20):
                await log.append(name, [raw(i), raw(i)])
                await log.append("shared", [raw(name)])

        with trio.fail_after(GUARD_SECONDS * 3):
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(write, one if n % 2 else two, f"w{n}")
        everything = one.read_all(limit=1000)
        assert seqs(everything) == list(range(1, 4 * 60 + 1))
        assert [r.version for r in two.read_stream("shared")] == list(range(1, 81))
        assert one.head() == two.head()
        report = await two.verify()
        assert (report.ok, report.checked) == (True, 240)


async def test_a_commit_in_another_process_wakes_a_subscriber(url: str) -> None:
    """A subscriber on one log instance gets another instance's commit through NOTIFY, quickly."""
    async with open_event_log(url) as writer, open_event_log(url, readonly=True) as reader:
        got: list[RecordedEvent] = []

        async def follow() -> None:
            async for event in reader.subscribe():
                got.append(event)
                return

        assert isinstance(reader, PostgresEventLog)
        await eventually(lambda: reader._listening)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.sleep(0.05)
            started = trio.current_time()
            await writer.append("s", [raw(1)])
            await eventually(lambda: bool(got))
        # Well under the poll interval: the notification woke it.
        assert trio.current_time() - started < 0.3
        assert seqs(got) == [1]


async def test_a_killed_connection_loses_no_ack_and_recovers(url: str) -> None:
    """After pg_terminate_backend on every cuelog connection, appends either land (and stay) or
    raise LogUnavailable; while the database refuses connections they raise it, and once it
    accepts them again appends and subscribers carry on without reopening the log."""
    async with open_event_log(url) as log:
        acked: list[RecordedEvent] = []
        followed: list[RecordedEvent] = []

        async def follow() -> None:
            async for event in log.subscribe():
                followed.append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            acked += await log.append("s", [raw(0)])
            name = url.rsplit("/", 1)[1]
            kill = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'cuelog'"
            )
            assert len(run_sql(url.rsplit("/", 1)[0] + "/postgres", kill, [name])) >= 3
            # A dead connection found before COMMIT is replaced: this append still lands.
            acked += await log.append("s", [raw(1)])
            postgres = url.rsplit("/", 1)[0] + "/postgres"
            run_sql(postgres, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            run_sql(postgres, kill, [name])
            with pytest.raises(LogUnavailable, match=r"unreachable|cannot connect"):
                await log.append("s", [raw(2)])
            run_sql(postgres, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            acked += await log.append("s", [raw(3)])
            await eventually(lambda: len(followed) == 3)
            nursery.cancel_scope.cancel()
        stored = log.read_all()
        assert [r.data for r in stored] == [raw(0).data, raw(1).data, raw(3).data]
        assert stored == acked == followed
        assert (await log.verify()).ok


async def test_stored_contents_are_shared_verified_and_migrated(url: str) -> None:
    """A blob put through one open log is read through another (another process would see it
    the same way); a read-only open refuses to store; a changed blob fails verify by name; and a
    schema 1 database (no content table) gets one when opened for writing."""
    blob = b"a large tool output " * 4096
    digest = hashlib.sha256(blob).hexdigest()
    async with open_event_log(url) as writer, open_event_log(url, readonly=True) as reader:
        assert writer.content is not None and reader.content is not None
        assert await writer.content.put(blob) == digest
        assert await writer.content.put(blob) == digest  # the same bytes: stored once
        assert await reader.content.get(digest) == blob
        with pytest.raises(ContentMissing):
            await reader.content.get("0" * 64)
        with pytest.raises(ContentMissing):
            await reader.content.get("../../etc/passwd")
        with pytest.raises(LogError, match="reading only"):
            await reader.content.put(b"x")
        report = await reader.verify()
        assert report.ok and report.content_checked == 1
    assert run_sql(url, "SELECT count(*) FROM cuelog_content") == [(1,)]
    run_sql(url, "UPDATE cuelog_content SET data = %s", [blob[:-1] + b"!"])
    async with open_event_log(url, readonly=True) as log:
        report = await log.verify()
        assert not report.ok and report.bad_content == digest
        assert report.reason is not None and digest in report.reason
    run_sql(url, "DROP TABLE cuelog_content")
    run_sql(url, "UPDATE cuelog_meta SET value = '1' WHERE key = 'schema'")
    with pytest.raises(LogFormatError, match="schema version 1; open it once for writing"):
        async with open_event_log(url, readonly=True):
            pass
    async with open_event_log(url) as log:
        assert log.content is not None
        assert await log.content.put(blob) == digest
    assert run_sql(url, "SELECT value FROM cuelog_meta WHERE key = 'schema'") == [(b"4",)]
