"""An ask to an idle event-sourced actor runs in the asker's task: one command at a time, in
mailbox order, and an asker cancelled mid-command leaves the state and the log in step."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from cuelog.runtime import ActorContext, AppendPart, Event, RecordedEvent
from tests.runtime.actor_models import Add, Counter, CounterState, Fail, Get, running


@dataclass(frozen=True)
class Slow:
    """Add `by` once the actor's gate opens (decide waits for it)."""

    by: int


class Watched(Counter):
    """A counter that notes which task decides each command, and how many decide at once;
    `Slow` waits in decide for the gate, and with `hold_commit` its commits wait for it too."""

    def __init__(self, ctx: ActorContext, seen: dict[str, Any]) -> None:
        super().__init__(ctx)
        self.seen = seen

    async def decide(self, state: CounterState, command: Any) -> Sequence[Event]:
        seen = self.seen
        seen["tasks"].append(trio.lowlevel.current_task())
        seen["deciding"] += 1
        seen["most"] = max(seen["most"], seen["deciding"])
        try:
            if isinstance(command, Slow):
                seen["decide_started"].set()
                await seen["gate"].wait()
                command = Add(command.by)
            return await super().decide(state, command)
        finally:
            seen["deciding"] -= 1

    def commit_with(
        self, state: CounterState, part: AppendPart
    ) -> Awaitable[Sequence[RecordedEvent] | None] | None:
        if not self.seen["hold_commit"]:
            return None
        return self._held_commit(part)

    async def _held_commit(self, part: AppendPart) -> Sequence[RecordedEvent]:
        # Stands for another actor committing this part with its own: the append happens
        # whether or not the asker is still there.
        self.seen["commit_started"].set()
        await self.seen["gate"].wait()
        return await self.ctx.log.append(
            part.stream, part.events, expected_version=part.expected_version
        )


def _seen(hold_commit: bool = False) -> dict[str, Any]:
    return {
        "tasks": [],
        "deciding": 0,
        "most": 0,
        "gate": trio.Event(),
        "decide_started": trio.Event(),
        "commit_started": trio.Event(),
        "hold_commit": hold_commit,
    }


async def test_ask_to_an_idle_actor_runs_in_the_askers_task(tmp_path: Path) -> None:
    seen = _seen()
    async with running(tmp_path, counter=lambda ctx: Watched(ctx, seen)) as (log, system):
        ref = system.ref("counter", "a")
        await ref.ask(Add(1))  # spawns and loads it: its own task runs the first command
        me = trio.lowlevel.current_task()
        assert seen["tasks"] == [seen["tasks"][0]] and seen["tasks"][0] is not me
        state = await ref.ask(Add(2))
        assert seen["tasks"][-1] is me
        assert state.total == 3
        assert [r.version for r in log.read_stream("counter:a")] == [1, 2]
        assert system.statistics().asks_in_flight == 0


async def test_messages_sent_meanwhile_wait_their_turn_in_order(tmp_path: Path) -> None:
    seen = _seen()
    async with running(tmp_path, counter=lambda ctx: Watched(ctx, seen)) as (log, system):
        ref = system.ref("counter", "a")
        await ref.ask(Get())
        results: dict[str, Any] = {}

        async def ask(name: str, msg: Any) -> None:
            results[name] = await ref.ask(msg)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "slow", Slow(1))
            await seen["decide_started"].wait()  # the first asker is deciding in its task
            await ref.tell(Add(2))
            nursery.start_soon(ask, "after", Add(3))
            await trio.testing.wait_all_tasks_blocked()
            assert seen["deciding"] == 1
            assert system.statistics().mailbox_depth == 2
            seen["gate"].set()
        assert seen["most"] == 1  # never two commands of the actor at once
        assert results["slow"].history == (1,)
        assert results["after"].history == (1, 2, 3)
        assert [r.version for r in log.read_stream("counter:a")] == [1, 2, 3]


async def test_an_asker_cancelled_while_deciding_writes_nothing(tmp_path: Path) -> None:
    seen = _seen()
    async with running(tmp_path, counter=lambda ctx: Watched(ctx, seen)) as (log, system):
        ref = system.ref("counter", "a")
        await ref.ask(Add(1))
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.ask, Slow(10))
                await seen["decide_started"].wait()
                await ref.tell(Add(2))  # queued behind the command being decided
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        # The cancelled command was dropped; the one queued meanwhile ran after it.
        state = await ref.ask(Get())
        assert state.history == (1, 2)
        assert [r.version for r in log.read_stream("counter:a")] == [1, 2]
        stats = system.statistics()
        assert stats.asks_in_flight == 0 and stats.mailbox_depth == 0 and stats.failures == 0


async def test_an_asker_cancelled_while_committing_leaves_state_and_log_in_step(
    tmp_path: Path,
) -> None:
    seen = _seen(hold_commit=True)
    async with running(tmp_path, counter=lambda ctx: Watched(ctx, seen)) as (log, system):
        ref = system.ref("counter", "a")
        seen["gate"].set()
        await ref.ask(Add(1))
        seen["gate"] = trio.Event()
        seen["commit_started"] = trio.Event()
        cancelled_at: list[int] = []

        async def asker() -> None:
            with trio.CancelScope() as scope:
                seen["scope"] = scope
                await ref.ask(Add(5))
            cancelled_at.append(log.stream_version("counter:a"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(asker)
            await seen["commit_started"].wait()
            seen["scope"].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert not cancelled_at  # the commit is shielded: the asker waits for it
            seen["gate"].set()
        assert cancelled_at == [2]  # cancelled once its command was durable
        seen["hold_commit"] = False
        state = await ref.ask(Add(7))
        assert state.history == (1, 5, 7)
        assert [r.version for r in log.read_stream("counter:a")] == [1, 2, 3]
        assert system.statistics().failures == 0


async def test_a_command_failing_in_the_askers_task_fails_the_actor(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen = _seen()
    async with running(tmp_path, counter=lambda ctx: Watched(ctx, seen)) as (log, system):
        ref = system.ref("counter", "a")
        await ref.ask(Add(1))
        failed_types: list[str] = []
        try:
            await ref.ask(Fail("inline boom"))
        except RuntimeError as exc:
            assert str(exc) == "inline boom"
            # The asker hears of it once the failure is durable.
            failed_types = [r.type for r in log.read_stream("counter:a")]
        assert failed_types == ["Counted", "ActorFailed"]
        state = await ref.ask(Add(2))  # restarted from the log after the backoff
        assert state.history == (1, 2)
        stats = system.statistics()
        assert stats.failures == 1 and stats.restarts == 1 and stats.asks_in_flight == 0
