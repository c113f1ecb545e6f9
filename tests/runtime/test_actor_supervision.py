"""Supervision: failures are recorded, actors restart from the log with backoff, then give up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from cuelog.runtime import ActorConfig, ActorFailed, ActorStopped
from tests.runtime.actor_models import Add, Counter, CounterState, Fail, Get, running

CONFIG = ActorConfig(max_failures=4, failure_window=60, backoff_initial=0.5, backoff_max=1.5)


async def test_failure_is_recorded_and_the_actor_restarts_from_its_log(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The failing ask gets the error, ActorFailed is in the stream, state survives the restart."""
    async with running(tmp_path, CONFIG, counter=Counter) as (log, system):
        ref = system.ref("counter", "f")
        await ref.ask(Add(4))
        with pytest.raises(RuntimeError, match="boom"):
            await ref.ask(Fail())
        before = trio.current_time()
        assert await ref.ask(Add(1)) == CounterState(5, (4, 1))
        assert trio.current_time() - before >= 0.5  # waited out the backoff
        records = log.read_stream("counter:f")
        assert [r.type for r in records] == ["Counted", "ActorFailed", "Counted"]
        stats = system.statistics()
        assert (stats.failures, stats.restarts, stats.live_actors) == (1, 1, 1)


async def test_failure_record_holds_only_a_truncated_error(tmp_path: Path) -> None:
    """ActorFailed carries the error type and at most 200 characters of its message."""
    async with running(tmp_path, counter=Counter) as (log, system):
        with pytest.raises(RuntimeError):
            await system.ref("counter", "t").ask(Fail("x" * 5000))
        (record,) = log.read_stream("counter:t")
        failed = msgspec.msgpack.decode(record.data, type=ActorFailed)
        assert failed.error_type == "RuntimeError"
        assert failed.message == "x" * 200


async def test_backoff_doubles_up_to_its_maximum(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Each failure in the window doubles the wait before the next message, capped at the max."""
    config = ActorConfig(max_failures=10, backoff_initial=0.5, backoff_max=1.5)
    waits = []
    async with running(tmp_path, config, counter=Counter) as (_, system):
        ref = system.ref("counter", "b")
        for _ in range(4):
            with pytest.raises(RuntimeError):
                await ref.ask(Fail())
            before = trio.current_time()
            await ref.ask(Get())
            waits.append(trio.current_time() - before)
    assert waits == pytest.approx([0.5, 1.0, 1.5, 1.5])


async def test_gives_up_after_max_failures_then_restart_brings_it_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """After N failures in the window pending and later messages get ActorStopped until
    restart(), after which the actor rehydrates its state from the log."""
    async with running(tmp_path, CONFIG, counter=Counter) as (log, system):
        ref = system.ref("counter", "g")
        await ref.ask(Add(3))
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await ref.ask(Fail())
        pending: list[BaseException] = []

        async def ask_pending() -> None:
            try:
                await ref.ask(Add(1))
            except ActorStopped as exc:
                pending.append(exc)

        ref.tell_nowait(Fail())  # the fourth failure, queued before the pending ask
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_pending)
        assert len(pending) == 1
        assert "counter:g" in str(pending[0]) and "again in 1.5s" in str(pending[0])
        with pytest.raises(ActorStopped, match=r"counter:g stopped after 4 failures"):
            await ref.ask(Get())
        with pytest.raises(ActorStopped):
            ref.tell_nowait(Add(1))
        stats = system.statistics()
        assert (stats.stopped_actors, stats.live_actors, stats.failures) == (1, 0, 4)

        assert system.restart("counter", "g")
        assert not system.restart("counter", "g")
        assert await ref.ask(Add(2)) == CounterState(5, (3, 2))
        types = [r.type for r in log.read_stream("counter:g")]
        assert types == ["Counted", *["ActorFailed"] * 4, "Counted"]


async def test_an_actor_that_gave_up_comes_back_after_its_hold(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Without restart(), the first message after the hold (backoff_max) rehydrates the actor."""
    async with running(tmp_path, CONFIG, counter=Counter) as (log, system):
        ref = system.ref("counter", "h")
        await ref.ask(Add(3))
        for _ in range(4):
            with pytest.raises((RuntimeError, ActorStopped)):
                await ref.ask(Fail())
        with pytest.raises(ActorStopped, match=r"again in 1\.\ds"):
            await ref.ask(Get())
        await trio.sleep(1.5)
        assert await ref.ask(Add(2)) == CounterState(5, (3, 2))
        assert system.statistics().stopped_actors == 0
        types = [r.type for r in log.read_stream("counter:h")]
        assert types == ["Counted", *["ActorFailed"] * 4, "Counted"]


async def test_a_lasting_failure_costs_one_failure_per_hold_each_twice_as_long(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An actor that cannot load gives up, then each retry after its hold fails once and gives up
    again for twice as long: few failure events, no operator needed."""
    async with running(tmp_path, CONFIG, broken=BrokenOnLoad) as (log, system):
        ref = system.ref("broken", "2")
        with pytest.raises(ActorStopped, match=r"again in 1\.5s"):
            await ref.ask(Get())
        assert len(log.read_stream("broken:2")) == 4
        await trio.sleep(1.5)
        with pytest.raises(ActorStopped, match=r"again in 3\.0s"):
            await ref.ask(Get())
        assert len(log.read_stream("broken:2")) == 5
        await trio.sleep(1)
        with pytest.raises(ActorStopped, match=r"again in 2\.0s"):
            await ref.ask(Get())  # still held: nothing tried, nothing recorded
        assert len(log.read_stream("broken:2")) == 5


async def test_failures_outside_the_window_do_not_count(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Failures spread wider than failure_window never stop the actor."""
    async with running(tmp_path, CONFIG, counter=Counter) as (_, system):
        ref = system.ref("counter", "w")
        for _ in range(8):
            with pytest.raises(RuntimeError):
                await ref.ask(Fail())
            await trio.sleep(30)
        assert await ref.ask(Add(1)) == CounterState(1, (1,))
        assert system.statistics().stopped_actors == 0


class BrokenOnLoad(Counter):
    """Fails every time it is loaded."""

    async def on_rehydrated(self, state: CounterState) -> list[Any]:
        raise OSError("cannot load")


async def test_an_actor_that_cannot_load_gives_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Failing to rehydrate counts as failing: the asker gets ActorStopped, not a hang."""
    async with running(tmp_path, CONFIG, broken=BrokenOnLoad) as (log, system):
        with pytest.raises(ActorStopped, match="OSError: cannot load"):
            await system.ref("broken", "1").ask(Get())
        assert [r.type for r in log.read_stream("broken:1")] == ["ActorFailed"] * 4


async def test_batch_failure_commits_earlier_commands_and_keeps_later_ones(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A failure in the middle of queued commands records those before it and handles those after
    it once restarted."""
    async with running(tmp_path, CONFIG, counter=Counter) as (log, system):
        ref = system.ref("counter", "m")
        for msg in (Add(1), Add(2), Fail(), Add(3), Add(4)):
            ref.tell_nowait(msg)
        assert await ref.ask(Get()) == CounterState(10, (1, 2, 3, 4))
        types = [r.type for r in log.read_stream("counter:m")]
        assert types == ["Counted", "Counted", "ActorFailed", "Counted", "Counted"]
