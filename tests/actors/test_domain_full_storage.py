"""A log that takes a session's message but not its run's end: the waiters hear `StorageFull` at
once instead of waiting for an end that never comes, nothing committed is damaged, the run is
closed as interrupted and the session goes on; with more room the same reply commits."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import trio

from cuelog.actors import RUN_FAILED, Domain
from cuelog.actors._messages import Usage
from cuelog.actors._models import Finished, ModelChunk, ModelRequest, TextDelta
from cuelog.actors._names import run_stream, session_stream
from cuelog.actors._run import RunSettings
from cuelog.runtime import StorageFull
from tests.actors.domain_support import make_settings, runtime_at, types_of, user
from tests.support import CUELOG

SMALL = 1 << 20  # the first map size and the ceiling: the first MapFullError is final
LARGE = 64 << 20
# Under the log's event limit, but the end stores it three times (the last delta, the message
# and the answer): more than SMALL holds whatever else is there.
BIG = "y" * 900_000


class BigOnAsk:
    """Answers "big" with a reply larger than the small log, anything else with "ok"."""

    name = "echo"

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        last = request.messages[-1].content
        yield TextDelta(BIG if last == "big" else "ok")
        yield Finished(finish_reason="stop", usage=Usage())


def settings() -> RunSettings:
    # No delta is recorded before the answer: the run's end commit is its only write.
    return make_settings(BigOnAsk(), delta_chars=1 << 30, delta_interval=3600.0)


def verify(path: Path) -> None:
    result = subprocess.run(
        [CUELOG, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def follow_to_end(domain: Domain, run_id: str) -> None:
    async for _ in await domain.follow_run(run_id):
        pass


async def test_a_run_end_the_full_log_refuses_fails_its_waiters_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log"
    async with runtime_at(path, settings(), initial_map_size=SMALL, max_map_size=SMALL) as domain:
        sent = await domain.send("default", [user("big")])
        assert not sent.queued
        failures: list[BaseException] = []

        async def stream() -> None:
            try:
                await follow_to_end(domain, sent.run_id)
            except StorageFull as exc:
                failures.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)  # a streaming client, following from the start
                with pytest.raises(StorageFull, match=r"log\.max_size"):
                    await domain.wait_sent(sent)  # a synchronous wake or chat
        assert len(failures) == 1, "the stream did not end with the log's error"
        # The log kept the message and the run's start, never half of its end.
        types = types_of(domain.log, run_stream(sent.run_id))
        assert types[0] == "RunStarted" and "AssistantMessage" not in types, types
        assert "MessageAccepted" in types_of(domain.log, session_stream(sent.session_key))

        # The run is closed as interrupted, and the session settles it and takes the next turn.
        with trio.fail_after(10):
            again = await domain.send("default", [user("small")], session_key=sent.session_key)
            view = await domain.wait_sent(again)
        assert view.status == "completed" and view.content == "ok", view
        failed = await domain.get_run(sent.run_id)
        assert failed.status == "failed" and failed.error == "interrupted", failed
        assert types_of(domain.log, run_stream(sent.run_id))[-1] == RUN_FAILED
        session = await domain.get_session(sent.session_key)
        assert session.current_run is None
        assert [m.content for m in session.messages][-2:] == ["small", "ok"]
    verify(path)

    async with runtime_at(path, settings(), initial_map_size=LARGE, max_map_size=LARGE) as domain:
        with trio.fail_after(10):
            assert (await domain.get_run(sent.run_id)).status == "failed"
            more = await domain.send("default", [user("big")], session_key=sent.session_key)
            view = await domain.wait_sent(more)
        assert view.status == "completed" and view.content == BIG
    verify(path)
