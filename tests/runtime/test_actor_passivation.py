"""Passivation and rehydration: idle actors are forgotten and come back from snapshot + events."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cuelog.runtime import (
    ActorConfig,
    ActorContext,
    ActorSystem,
    open_actor_system,
    open_event_log,
)
from tests.runtime.actor_models import (
    Add,
    Counter,
    CounterState,
    Fail,
    Get,
    RepairingCounter,
    running,
)

IDLE = 10.0
CONFIG = ActorConfig(passivate_after=IDLE, snapshot_every=0)


async def test_idle_actor_is_passivated_and_rehydrates_its_state(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An actor idle for passivate_after is forgotten; the next message finds its state intact."""
    async with running(tmp_path, CONFIG, counter=Counter) as (_, system):
        ref = system.ref("counter", "p")
        for n in (1, 2, 3):
            await ref.ask(Add(n))
        await trio.sleep(IDLE / 2)
        assert system.is_live("counter", "p")
        await trio.sleep(IDLE)
        assert not system.is_live("counter", "p")
        stats = system.statistics()
        assert (stats.live_actors, stats.passivated, stats.events_replayed) == (0, 1, 0)
        assert await ref.ask(Add(4)) == CounterState(10, (1, 2, 3, 4))
        assert system.statistics().events_replayed == 3


async def test_message_arriving_as_the_actor_passivates_is_never_lost(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Messages sent at and just after the passivation deadline are all handled, in
    whichever order trio runs the sweeper and the senders (it shuffles them each round)."""
    async with running(tmp_path, CONFIG, counter=Counter) as (_, system):
        ref = system.ref("counter", "race")
        expected = 0
        rehydrations = 0
        for _ in range(40):
            await ref.ask(Add(1))
            expected += 1
            idle_since = trio.current_time()
            replayed = system.statistics().events_replayed
            async with trio.open_nursery() as nursery:
                for offset in (0.0, 0.0, 0.0, 1e-6):

                    async def send(at: float) -> None:
                        await trio.sleep_until(at)
                        ref.tell_nowait(Add(1))

                    nursery.start_soon(send, idle_since + IDLE + offset)
            expected += 4
            state = await ref.ask(Get())
            assert state.total == expected
            rehydrations += system.statistics().events_replayed > replayed
        assert 0 < rehydrations < 40  # both sides of the race were exercised
        assert system.statistics().passivated == rehydrations


async def test_snapshots_are_saved_every_n_events_and_shorten_rehydration(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With snapshot_every=10, 25 events leave a snapshot at version 20 and reloading reads 5."""
    config = ActorConfig(passivate_after=IDLE, snapshot_every=10)
    async with running(tmp_path, config, counter=Counter) as (log, system):
        ref = system.ref("counter", "s")
        for n in range(1, 26):
            await ref.ask(Add(n))
        snapshot = log.load_snapshot("counter:s")
        assert snapshot is not None
        version, data = snapshot
        assert version == 20
        assert msgspec.msgpack.decode(data, type=CounterState).total == sum(range(1, 21))
        assert system.statistics().snapshots_saved == 2
        await trio.sleep(IDLE * 2)
        assert not system.is_live("counter", "s")
        assert await ref.ask(Get()) == CounterState(325, tuple(range(1, 26)))
        assert system.statistics().events_replayed == 5


async def test_unreadable_snapshot_falls_back_to_a_full_replay(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A snapshot that no longer decodes as the state type is ignored, not fatal."""
    async with running(tmp_path, CONFIG, counter=Counter) as (log, system):
        ref = system.ref("counter", "u")
        await ref.ask(Add(2))
        await log.save_snapshot("counter:u", 1, msgspec.msgpack.encode({"total": "two"}))
        await trio.sleep(IDLE * 2)
        assert await ref.ask(Get()) == CounterState(2, (2,))


async def test_on_rehydrated_can_record_repairs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Events returned by on_rehydrated are recorded and applied before the next command."""
    async with running(tmp_path, CONFIG, counter=RepairingCounter) as (log, system):
        ref = system.ref("counter", "r")
        await ref.ask(Add(1))
        await trio.sleep(IDLE * 2)
        state = await ref.ask(Get())
        assert state.repairs == 1
        assert [r.type for r in log.read_stream("counter:r")] == ["Counted", "Repaired"]


async def test_least_recently_used_idle_actor_makes_room(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Spawning beyond max_live_actors passivates the actor idle the longest."""
    config = ActorConfig(max_live_actors=3, snapshot_every=0)
    async with running(tmp_path, config, counter=Counter) as (_, system):
        for name in ("a", "b", "c"):
            await system.ref("counter", name).ask(Add(1))
            await trio.sleep(1)
        await system.ref("counter", "a").ask(Add(1))  # b is now the least recently used
        await system.ref("counter", "d").ask(Add(1))
        live = [n for n in "abcd" if system.is_live("counter", n)]
        assert live == ["a", "c", "d"]
        assert await system.ref("counter", "b").ask(Get()) == CounterState(1, (1,))
        assert system.statistics().live_actors == 3


async def test_ten_thousand_actors_spawn_and_passivate(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """10,000 actors each record a command, all passivate, and any of them comes back."""
    count = 10_000
    async with running(tmp_path, CONFIG, counter=Counter) as (log, system):

        async def worker(start: int) -> None:
            for i in range(start, count, 50):
                await system.ref("counter", str(i)).ask(Add(i + 1))

        async with trio.open_nursery() as nursery:
            for start in range(50):
                nursery.start_soon(worker, start)
        stats = system.statistics()
        assert (stats.live_actors, stats.spawned) == (count, count)
        await trio.sleep(IDLE * 2)
        stats = system.statistics()
        assert (stats.live_actors, stats.passivated, stats.mailbox_depth) == (0, count, 0)
        assert log.statistics().events_appended == count
        for i in (0, 4321, count - 1):
            assert await system.ref("counter", str(i)).ask(Get()) == CounterState(i + 1, (i + 1,))


# -- property: passivating never changes what an actor knows ------------------------------------

command = st.one_of(
    st.builds(Add, st.integers(-3, 50)),
    st.just(Fail()),
    st.just(Get()),
    st.just("passivate"),
)


async def _drive(system: ActorSystem, kind: str, commands: list[Any]) -> list[Any]:
    ref = system.ref(kind, "x")
    replies: list[Any] = []
    for cmd in commands:
        if cmd == "passivate":
            continue
        try:
            replies.append(await ref.ask(cmd))
        except Exception as exc:
            replies.append(type(exc).__name__)
    return replies


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command, max_size=30))
def test_passivation_and_rehydration_give_the_same_state(commands: list[Any]) -> None:
    """Random commands with random passivation points end in the same state and replies as the
    same commands sent to an actor that is never passivated."""

    async def main(path: Path) -> None:
        often = ActorConfig(passivate_after=IDLE, snapshot_every=3, max_failures=100)
        never = ActorConfig(passivate_after=float("inf"), snapshot_every=0, max_failures=100)
        async with (
            open_event_log(path, sync=False, commit_in_thread=False) as log,
            open_actor_system(log, config=often) as passivating,
            open_actor_system(log, config=never) as steady,
        ):
            passivating.register("p", Counter)
            steady.register("s", Counter)
            replies_p: list[Any] = []
            ref = passivating.ref("p", "x")
            for cmd in commands:
                if cmd == "passivate":
                    await trio.sleep(IDLE * 2)
                    assert not passivating.is_live("p", "x")
                    continue
                try:
                    replies_p.append(await ref.ask(cmd))
                except Exception as exc:
                    replies_p.append(type(exc).__name__)
            replies_s = await _drive(steady, "s", commands)
            assert replies_p == replies_s
            final_p = await ref.ask(Get())
            assert final_p == await steady.ref("s", "x").ask(Get())
            assert steady.statistics().passivated == 0

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "log", clock=trio.testing.MockClock(autojump_threshold=0))


class _Finisher:
    """A plain actor whose work ends with `"done"`; a background task may still be running."""

    def __init__(self, ctx: ActorContext) -> None:
        self.ctx = ctx
        self.handled = 0
        self.release = trio.Event()

    async def handle(self, msg: Any) -> Any:
        self.handled += 1
        if msg == "done with task":
            self.ctx.start_task(self.release.wait)
        if msg in ("done", "done with task"):
            self.ctx.passivate_when_idle()
        if msg == "release":
            self.release.set()
        return self.handled


async def test_an_actor_whose_work_is_done_leaves_memory_once_idle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """`passivate_when_idle` forgets the actor as soon as its mailbox is empty and its tasks are
    done, long before `passivate_after`; messages queued meanwhile are handled first, and a
    later message starts a fresh incarnation."""
    async with running(tmp_path, CONFIG, finisher=_Finisher) as (_, system):
        ref = system.ref("finisher", "a")
        assert await ref.ask("work") == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.ask, "done")
            nursery.start_soon(ref.ask, "queued behind it")
        await trio.testing.wait_all_tasks_blocked()
        assert not system.is_live("finisher", "a")
        assert system.statistics().passivated == 1
        assert await ref.ask("again") == 1  # a fresh incarnation

        other = system.ref("finisher", "b")
        await other.ask("done with task")
        await trio.sleep(IDLE * 3)  # the task holds it, past passivate_after's sweep too
        assert system.is_live("finisher", "b")
        await other.ask("release")
        await trio.testing.wait_all_tasks_blocked()
        assert not system.is_live("finisher", "b")


async def test_a_passivated_actor_is_freed_without_the_cycle_collector(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Passivated actors leave no reference cycles behind: reference counting frees them at
    once, so a server's full collections do not grow with every actor it ever passivated."""
    async with running(tmp_path, CONFIG, counter=Counter) as (_, system):
        await system.ref("counter", "warm").ask(Add(1))
        await trio.sleep(IDLE * 2)
        gc.collect()
        gc.disable()
        try:
            count = 200
            for n in range(count):
                await system.ref("counter", str(n)).ask(Add(n + 1))
            await trio.sleep(IDLE * 2)
            assert system.statistics().live_actors == 0
            unreachable = gc.collect()
        finally:
            gc.enable()
    assert unreachable < count // 10, unreachable
