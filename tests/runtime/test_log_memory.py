"""The in-memory event log: the shared contract, plus what only a log in memory has to show."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path

import msgspec
import pytest

from cuelog.runtime import EventLog, LogClosed, LogError, open_event_log
from cuelog.runtime._memory import MemoryEventLog
from tests.runtime.log_contract import EventLogContract, raw


class TestMemoryEventLog(EventLogContract):
    """The in-memory backend passes the whole event log contract."""

    def open_log(self, path: Path) -> AbstractAsyncContextManager[EventLog]:
        return open_event_log("memory:", max_event_bytes=self.max_event_bytes)


async def test_each_open_is_a_new_log_with_its_own_genesis() -> None:
    """Two memory logs share nothing: each starts at seq 0 from its own random log id."""
    async with open_event_log("memory:") as one, open_event_log("memory:") as two:
        await one.append("s", [raw(1)])
        assert two.head().seq == 0
        assert one.read_all()[0].prev != two.head().hash


async def test_an_edited_record_fails_verify_at_its_seq() -> None:
    """verify re-hashes the stored bytes: editing one record's payload names that seq."""
    async with open_event_log("memory:") as log:
        for i in range(5):
            await log.append("s", [raw({"i": i})])
        assert isinstance(log, MemoryEventLog)
        stored = log._values[2]
        log._values[2] = stored.replace(msgspec.msgpack.encode({"i": 2}), b"\x81\xa1i\x07")
        report = await log.verify()
        assert (report.ok, report.first_bad_seq, report.checked) == (False, 3, 2)
        assert "payload edited" in (report.reason or "")


async def test_a_memory_log_cannot_be_opened_readonly() -> None:
    """A read-only memory log could never hold anything, so opening one is refused."""
    with pytest.raises(LogError, match="read-only"):
        async with open_event_log("memory:", readonly=True):
            pass  # pragma: no cover - the open must fail


async def test_appending_to_a_closed_memory_log_is_refused() -> None:
    """After the log's context exits, append raises LogClosed."""
    async with open_event_log("memory:") as log:
        await log.append("s", [raw(1)])
    with pytest.raises(LogClosed, match="closed"):
        await log.append("s", [raw(2)])
