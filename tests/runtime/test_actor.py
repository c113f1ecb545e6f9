"""The actor kernel: ordering, ask/tell, mailboxes, event-sourced commands, tasks, shutdown."""

from __future__ import annotations

import contextvars
import gc
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from cuelog.runtime import (
    ActorConfig,
    ActorContext,
    ActorStopped,
    CommandRejected,
    MailboxFull,
    RecordedEvent,
    WrongExpectedVersion,
    open_actor_system,
    open_event_log,
)
from tests.runtime.actor_models import (
    Add,
    Counted,
    Counter,
    CounterState,
    EffectfulCounter,
    Gated,
    Get,
    Noted,
    Probe,
    running,
)


async def test_messages_to_one_actor_are_handled_in_order(tmp_path: Path) -> None:
    """Commands from several senders are applied one at a time, each sender's in its order."""
    async with running(tmp_path, counter=Counter) as (log, system):
        ref = system.ref("counter", "a")

        async def sender(base: int) -> None:
            for i in range(1, 51):
                await ref.tell(Add(base + i))

        async with trio.open_nursery() as nursery:
            for base in (0, 1000, 2000):
                nursery.start_soon(sender, base)
        state = await ref.ask(Get())
        assert isinstance(state, CounterState)
        for base in (0, 1000, 2000):
            mine = [x for x in state.history if base < x <= base + 50]
            assert mine == [base + i for i in range(1, 51)]
        recorded = [r.version for r in log.read_stream("counter:a")]
        assert recorded == list(range(1, 151))


async def test_plain_actor_handles_one_message_at_a_time_in_order(tmp_path: Path) -> None:
    """A plain actor sees messages in the order they were sent, never two at once."""
    probe = Probe()
    probe.gate.set()
    async with running(tmp_path, gated=lambda ctx: Gated(ctx, probe)) as (_, system):
        ref = system.ref("gated", "p")
        for i in range(30):
            if i % 2:
                ref.tell_nowait(i)
            else:
                await ref.tell(i)
        assert await ref.ask("last") == ("done", "last")
    assert probe.handled == [*range(30), "last"]


async def test_ask_gets_the_reply_and_the_handlers_errors(tmp_path: Path) -> None:
    """ask returns the reply; CommandRejected and a plain handler's error reach the asker."""
    probe = Probe()
    async with running(tmp_path, counter=Counter, gated=lambda ctx: Gated(ctx, probe)) as (
        log,
        system,
    ):
        ref = system.ref("counter", "x")
        assert await ref.ask(Add(2)) == CounterState(2, (2,))
        with pytest.raises(CommandRejected, match="cannot add -1"):
            await ref.ask(Add(-1))
        assert await ref.ask(Get()) == CounterState(2, (2,))
        assert log.stream_version("counter:x") == 1
        with pytest.raises(ValueError, match="plain handler failed"):
            await system.ref("gated", "y").ask("raise")
        assert system.statistics().failures == 1  # the plain error, not the rejection


async def test_told_commands_run_their_effects_after_the_commit(tmp_path: Path) -> None:
    """A told command (nobody waits for a reply) runs its effect like an asked one: once its
    events are durable, in mailbox order; a rejected command runs none."""
    effects: list[Noted] = []
    async with running(tmp_path, counter=lambda ctx: EffectfulCounter(ctx, effects)) as (_, system):
        ref = system.ref("counter", "told")
        await ref.tell(Add(2))
        await ref.tell(Add(-1))
        ref.tell_nowait(Add(3))
        # Handled after the tells (one mailbox, in order): their effects have run by the reply.
        assert await ref.ask(Get()) == CounterState(5, (2, 3))
        assert effects == [
            Noted(2, (1,), True),
            Noted(5, (2,), True),
            Noted(5, (), True),  # the ask's, though it recorded nothing
        ]


async def test_failing_effect_of_a_told_command_is_logged(tmp_path: Path) -> None:
    """An effect that raises for a told command is logged as an error (nobody else would hear
    of it); its events stay recorded and the actor goes on serving."""
    effects: list[Noted] = []
    with structlog.testing.capture_logs() as logs:
        async with running(tmp_path, counter=lambda ctx: EffectfulCounter(ctx, effects)) as (
            log,
            system,
        ):
            ref = system.ref("counter", "unlucky")
            await ref.tell(Add(13))
            assert await ref.ask(Get()) == CounterState(13, (13,))
            with pytest.raises(LookupError, match="unlucky effect"):
                await ref.ask(Add(13))  # an asker hears of it instead
            assert log.stream_version("counter:unlucky") == 2
    failed = [entry for entry in logs if entry["event"] == "effect of a told command failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error" and failed[0]["command"] == "Add"
    assert system.statistics().failures == 0


async def test_cancelled_ask_leaves_nothing_dangling(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An ask cancelled mid-handling or while queued leaves no waiter and blocks nobody."""
    probe = Probe()
    async with running(tmp_path, gated=lambda ctx: Gated(ctx, probe)) as (_, system):
        ref = system.ref("gated", "slow")
        with trio.move_on_after(1) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.ask, "block")
                await probe.started.wait()
                nursery.start_soon(ref.ask, "queued")
                await trio.sleep(2)
        assert scope.cancelled_caught
        assert system.statistics().asks_in_flight == 0
        probe.gate.set()  # the actor finishes "block" and replies into an abandoned slot
        assert await ref.ask("next") == ("done", "next")
        assert probe.handled == ["block", "next"]  # the cancelled queued ask was dropped
        stats = system.statistics()
        assert stats.asks_in_flight == 0
        assert stats.mailbox_depth == 0


async def test_full_mailbox_raises_mailbox_full_and_tell_waits_for_room(tmp_path: Path) -> None:
    """tell_nowait raises MailboxFull on a full mailbox; tell waits until there is room."""
    probe = Probe()
    config = ActorConfig(mailbox_size=2)
    async with running(tmp_path, config, gated=lambda ctx: Gated(ctx, probe)) as (_, system):
        ref = system.ref("gated", "m")
        ref.tell_nowait("block")
        await probe.started.wait()
        ref.tell_nowait(1)
        ref.tell_nowait(2)
        with pytest.raises(MailboxFull, match="gated:m"):
            ref.tell_nowait(3)
        assert system.statistics().mailbox_depth == 2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.tell, 3)
            await trio.testing.wait_all_tasks_blocked()
            assert probe.handled == []  # the waiting tell has not got in yet
            probe.gate.set()
        assert await ref.ask(4) == ("done", 4)
        assert probe.handled == ["block", 1, 2, 3, 4]


async def test_commands_are_recorded_then_applied(tmp_path: Path) -> None:
    """Each accepted command's events are in the actor's stream, at consecutive versions."""
    async with running(tmp_path, counter=Counter) as (log, system):
        ref = system.ref("counter", "r")
        for n in (5, 7):
            await ref.ask(Add(n))
        records = log.read_stream("counter:r")
        assert [(r.version, r.type) for r in records] == [(1, "Counted"), (2, "Counted")]
        assert [Counter.codec.decode(r.type, r.data) for r in records] == [
            Counted(by=5),
            Counted(by=7),
        ]


async def test_version_conflict_reloads_and_retries_once(tmp_path: Path) -> None:
    """An append by someone else between commands is folded in and the command retried."""
    async with running(tmp_path, counter=Counter) as (log, system):
        ref = system.ref("counter", "c")
        await ref.ask(Add(1))
        await log.append("counter:c", [Counted(by=100)], expected_version=1)
        state = await ref.ask(Add(2))
        assert state == CounterState(103, (1, 100, 2))
        assert log.stream_version("counter:c") == 3
        assert system.statistics().failures == 0


class Contested(Counter):
    """A decide that itself races the actor: another writer appends every time it decides."""

    async def decide(self, state: CounterState, command: Any) -> list[Counted]:
        if isinstance(command, Add):
            version = self.ctx.log.stream_version(self.ctx.stream)
            await self.ctx.log.append(self.ctx.stream, [Counted(by=1000)], expected_version=version)
            return [Counted(by=command.by)]
        return []


async def test_second_version_conflict_fails_the_command_not_the_actor(tmp_path: Path) -> None:
    """When the retry conflicts again the asker gets WrongExpectedVersion; the actor lives on."""
    async with running(tmp_path, contested=Contested) as (log, system):
        ref = system.ref("contested", "c")
        with pytest.raises(WrongExpectedVersion):
            await ref.ask(Add(1))
        assert await ref.ask(Get()) == CounterState(2000, (1000, 1000))
        assert log.stream_version("contested:c") == 2
        assert system.statistics().failures == 0


class Streamer:
    """Starts a background task that feeds the actor; "stop" cancels it."""

    def __init__(self, ctx: ActorContext, probe: Probe) -> None:
        self.ctx = ctx
        self.probe = probe
        self.task: Any = None

    async def feed(self) -> None:
        for i in range(3):
            await trio.sleep(100)
            await self.ctx.ref.tell(("chunk", i))
        await trio.sleep_forever()

    async def handle(self, msg: Any) -> Any:
        if msg == "start":
            self.task = self.ctx.start_task(self.feed)
        elif msg == "stop":
            self.task.cancel()
        elif msg == "crash-task":

            async def crash() -> None:
                raise OSError("stream broke")

            self.ctx.start_task(crash)
        else:
            self.probe.handled.append(msg)


async def test_background_task_feeds_its_actor_and_keeps_it_live(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A running task keeps its actor from passivating; once cancelled, the actor passivates."""
    probe = Probe()
    config = ActorConfig(passivate_after=50)
    async with running(tmp_path, config, s=lambda ctx: Streamer(ctx, probe)) as (_, system):
        ref = system.ref("s", "1")
        await ref.ask("start")
        await trio.sleep(1000)
        assert probe.handled == [("chunk", 0), ("chunk", 1), ("chunk", 2)]
        assert system.is_live("s", "1")
        await ref.ask("stop")
        await trio.sleep(60)
        assert not system.is_live("s", "1")
        assert system.statistics().passivated == 1


async def test_failing_background_task_fails_its_actor(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An exception in a task is recorded as the actor's failure and the actor restarts."""
    probe = Probe()
    async with running(tmp_path, s=lambda ctx: Streamer(ctx, probe)) as (log, system):
        ref = system.ref("s", "2")
        await ref.ask("crash-task")
        await ref.ask("after")
        assert probe.handled == ["after"]
        stats = system.statistics()
        assert (stats.failures, stats.restarts) == (1, 1)
        assert [r.type for r in log.read_stream("s:2")] == ["ActorFailed"]


async def test_shutdown_drains_mailboxes_then_refuses(tmp_path: Path) -> None:
    """Leaving the system's block handles every queued message; afterwards tell is refused."""
    async with open_event_log(tmp_path / "log", sync=False, commit_in_thread=False) as log:
        async with open_actor_system(log) as system:
            system.register("counter", Counter)
            refs = [system.ref("counter", str(i)) for i in range(5)]
            for ref in refs:
                for _ in range(20):
                    ref.tell_nowait(Add(1))
            assert system.statistics().mailbox_depth > 0
        for i in range(5):
            assert log.stream_version(f"counter:{i}") == 20
        assert system.statistics().live_actors == 0
        with pytest.raises(ActorStopped, match="shutting down"):
            await refs[0].tell(Add(1))


async def test_shutdown_deadline_cancels_stuck_actors(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An actor that cannot drain by the deadline is cancelled and its askers get ActorStopped."""
    probe = Probe()
    config = ActorConfig(shutdown_deadline=3)
    errors: list[BaseException] = []

    async def ask(ref: Any, msg: Any) -> None:
        try:
            await ref.ask(msg)
        except ActorStopped as exc:
            errors.append(exc)

    async with trio.open_nursery() as outside:
        async with running(tmp_path, config, gated=lambda ctx: Gated(ctx, probe)) as (_, system):
            ref = system.ref("gated", "stuck")
            outside.start_soon(ask, ref, "block")
            await probe.started.wait()
            outside.start_soon(ask, ref, "waiting")
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
        assert trio.current_time() - started == pytest.approx(3)
    assert len(errors) == 2
    assert "gated:stuck" in str(errors[0])
    assert probe.handled == []


async def test_unknown_kind_and_bad_ids_are_refused(tmp_path: Path) -> None:
    """ref() names an unregistered kind; ids that cannot make a stream name are refused."""
    async with running(tmp_path, counter=Counter) as (_, system):
        with pytest.raises(LookupError, match="nope"):
            system.ref("nope", "1")
        with pytest.raises(ValueError):
            system.ref("counter", "")
        with pytest.raises(ValueError):
            system.ref("counter", "x" * 300)
        with pytest.raises(ValueError):
            system.register("counter", Counter)
        assert system.ref("counter", "1") == system.ref("counter", "1")


class _Held:
    """What a request's context holds (for a server: Quart's request, its body, the
    connection); only a weak reference is kept to see whether anything else still does."""


_REQUEST: contextvars.ContextVar[_Held] = contextvars.ContextVar("request")


class _Starter(Counter):
    """A counter that starts a background task (waiting for the test to end) after each
    command, and notes whether the command saw the asker's context."""

    def __init__(self, ctx: ActorContext, gate: trio.Event, saw: list[bool]) -> None:
        super().__init__(ctx)
        self.gate = gate
        self.saw = saw

    def after_commit(
        self, state: CounterState, command: Any, recorded: Sequence[RecordedEvent]
    ) -> None:
        self.saw.append(_REQUEST.get(None) is not None)
        self.ctx.start_task(self.gate.wait)


async def test_a_live_actor_does_not_keep_the_context_that_spawned_it(tmp_path: Path) -> None:
    """An actor spawned by a task with context variables set (a request handler), and the
    tasks it starts (one while it runs a command inline in such a task), run without them:
    once the askers are done, what their contexts held can be freed although the actor and
    its tasks live on. (Holding them kept every live session's request in memory: 60 objects
    an actor for the collector to walk.)"""
    gate = trio.Event()
    saw: list[bool] = []
    async with running(tmp_path, starter=lambda ctx: _Starter(ctx, gate, saw)) as (_, system):
        watches: list[weakref.ref[_Held]] = []

        async def request() -> None:
            held = _Held()
            watches.append(weakref.ref(held))
            _REQUEST.set(held)
            await system.ref("starter", "a").ask(Add(1))

        for _ in range(2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(request)
        # The first command ran in the actor's own task, the second inline in the asker's.
        assert saw == [False, True]
        gc.collect()
        assert system.is_live("starter", "a")
        assert [watch() for watch in watches] == [None, None]
        gate.set()
