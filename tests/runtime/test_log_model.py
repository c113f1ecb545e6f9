"""The LMDB and PostgreSQL logs against a plain in-memory model: appends, reads, versions,
idempotency, reopen."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cuelog.runtime import (
    IdempotencyConflict,
    RawEvent,
    RecordedEvent,
    WrongExpectedVersion,
    open_event_log,
)
from tests.postgres import fresh_database

T = TypeVar("T")
STREAMS = ("a", "b", "chat/1", "chat/10")
KEYS = ("k1", "k2", "k3")
Body = tuple[tuple[str, bytes], ...]  # (type, payload) per event

bodies = st.lists(
    st.tuples(
        st.sampled_from(("Said", "Counted")),
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.binary(max_size=8)).map(
            msgspec.msgpack.encode
        ),
    ),
    min_size=1,
    max_size=3,
).map(tuple)


class LogThread:
    """An open log served by a trio loop on its own thread, so sync rules can call into it."""

    def __init__(self, path: Path | str) -> None:
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._serve, path), daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    async def _serve(self, path: Path | str) -> None:
        try:
            async with open_event_log(path, sync=False) as log:
                self.log = log
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._ready.set()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(run, trio_token=self._token)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()
        if self._failure is not None:
            raise self._failure


class LogModel(RuleBasedStateMachine):
    """Every step's outcome must match what a list of (stream, version, type, data) predicts."""

    def __init__(self) -> None:
        super().__init__()
        self.where = self.new_location()
        self.log = LogThread(self.where)
        self.order: list[tuple[str, int, str, bytes]] = []  # index = seq - 1
        self.keys: dict[str, tuple[str, Body, list[int]]] = {}

    def new_location(self) -> Path | str:
        self.dir = Path(tempfile.mkdtemp(prefix="cuelog-model-"))
        return self.dir / "log"

    def drop_location(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def teardown(self) -> None:
        try:
            self.log.close()
        finally:
            self.drop_location()

    def version(self, stream: str) -> int:
        return sum(1 for s, *_ in self.order if s == stream)

    def expect_records(self, records: list[RecordedEvent], wanted: list[int]) -> None:
        assert [r.seq for r in records] == wanted
        assert [(r.stream, r.version, r.type, r.data) for r in records] == [
            self.order[seq - 1] for seq in wanted
        ]

    @rule(
        stream=st.sampled_from(STREAMS),
        body=bodies,
        expectation=st.sampled_from(("any", "right", "wrong")),
        wrong_by=st.sampled_from((-1, 1, 2)),
        key=st.none() | st.sampled_from(KEYS),
    )
    def append(
        self, stream: str, body: Body, expectation: str, wrong_by: int, key: str | None
    ) -> None:
        current = self.version(stream)
        expected = {"any": None, "right": current, "wrong": max(current + wrong_by, 0)}[expectation]
        if expected == current and expectation == "wrong":
            expected = current + 1
        events = [RawEvent(t, d) for t, d in body]
        try:
            records = self.log.call(
                self.log.log.append,
                stream,
                events,
                expected_version=expected,
                idempotency_key=key,
            )
        except IdempotencyConflict:
            assert key in self.keys
            assert self.keys[key][:2] != (stream, body)
            return
        except WrongExpectedVersion as exc:
            assert key not in self.keys
            assert expected is not None
            assert expected != current
            assert (exc.expected, exc.actual) == (expected, current)
            return
        if key is not None and key in self.keys:
            assert self.keys[key][:2] == (stream, body)
            self.expect_records(records, self.keys[key][2])
            return
        assert expected is None or expected == current
        first = len(self.order) + 1
        for offset, (type_name, data) in enumerate(body):
            self.order.append((stream, current + offset + 1, type_name, data))
        wanted = list(range(first, len(self.order) + 1))
        self.expect_records(records, wanted)
        if key is not None:
            self.keys[key] = (stream, body, wanted)

    @rule(appends=st.lists(st.tuples(bodies, st.booleans()), min_size=2, max_size=len(STREAMS)))
    def append_concurrently(self, appends: list[tuple[Body, bool]]) -> None:
        """Appends to distinct streams in one group: each lands or conflicts on its own."""
        jobs = list(zip(STREAMS, appends, strict=False))
        outcomes: dict[str, list[RecordedEvent] | WrongExpectedVersion] = {}

        async def one(stream: str, body: Body, right: bool) -> None:
            expected = self.version(stream) + (0 if right else 1)
            try:
                outcomes[stream] = await self.log.log.append(
                    stream, [RawEvent(t, d) for t, d in body], expected_version=expected
                )
            except WrongExpectedVersion as exc:
                outcomes[stream] = exc

        async def group() -> None:
            async with trio.open_nursery() as nursery:
                for stream, (body, right) in jobs:
                    nursery.start_soon(one, stream, body, right)

        self.log.call(group)
        landed: list[tuple[int, str, Body]] = []
        for stream, (body, right) in jobs:
            outcome = outcomes[stream]
            if right:
                assert isinstance(outcome, list)
                landed.append((outcome[0].seq, stream, body))
            else:
                assert isinstance(outcome, WrongExpectedVersion)
                assert outcome.actual == self.version(stream)
        for first_seq, stream, body in sorted(landed):
            assert first_seq == len(self.order) + 1
            current = self.version(stream)
            for offset, (type_name, data) in enumerate(body):
                self.order.append((stream, current + offset + 1, type_name, data))
            records = outcomes[stream]
            assert isinstance(records, list)
            self.expect_records(records, list(range(first_seq, len(self.order) + 1)))

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = LogThread(self.where)

    @rule(stream=st.sampled_from(STREAMS), from_version=st.integers(0, 6), limit=st.integers(1, 4))
    def read_stream_page(self, stream: str, from_version: int, limit: int) -> None:
        log = self.log.log
        got = self.log.read(lambda: log.read_stream(stream, from_version, limit=limit))
        wanted = [
            seq
            for seq, (s, version, *_) in enumerate(self.order, 1)
            if s == stream and version >= from_version
        ][:limit]
        self.expect_records(got, wanted)

    @rule(after=st.integers(0, 40), limit=st.integers(1, 10))
    def read_all_page(self, after: int, limit: int) -> None:
        got = self.log.read(self.log.log.read_all, after, limit)
        self.expect_records(got, list(range(after + 1, len(self.order) + 1))[:limit])

    @invariant()
    def streams_and_head_match(self) -> None:
        for stream in STREAMS:
            records = self.log.read(self.log.log.read_stream, stream)
            wanted = [seq for seq, (s, *_) in enumerate(self.order, 1) if s == stream]
            self.expect_records(records, wanted)
            assert self.log.read(self.log.log.stream_version, stream) == len(wanted)
        assert self.log.read(self.log.log.head).seq == len(self.order)

    @rule()
    def verify(self) -> None:
        report = self.log.call(self.log.log.verify)
        assert (report.ok, report.checked) == (True, len(self.order))


LogModel.TestCase.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)
TestLogModel = LogModel.TestCase


class PostgresLogModel(LogModel):
    """The same model against a PostgreSQL log, each example in a database of its own."""

    def new_location(self) -> Path | str:
        self.database = fresh_database()
        return self.database.__enter__()

    def drop_location(self) -> None:
        self.database.__exit__(None, None, None)


PostgresLogModel.TestCase.settings = settings(max_examples=8, stateful_step_count=30, deadline=None)
TestPostgresLogModel = PostgresLogModel.TestCase
