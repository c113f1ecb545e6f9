"""The PostgreSQL event log: the shared contract, plus what only a database-backed log shows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from cuelog.runtime import EventLog, open_event_log
from tests.postgres import fresh_database
from tests.runtime.log_contract import EventLogContract


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
