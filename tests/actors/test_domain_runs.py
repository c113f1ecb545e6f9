"""Runs end to end on real logs: echo replies, tools, step limits, deltas, cancel, stop."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import trio
import trio.testing

from cuelog.actors import AgentSpec, ModelChunk, ModelRequest, TextDelta, ToolCall
from cuelog.actors._commands import StartRun
from cuelog.actors._errors import Unavailable
from cuelog.actors._events import (
    AssistantDelta,
    MessageAccepted,
    RunFailed,
    ToolCallCompleted,
    ToolCallFailed,
)
from tests.actors.domain_support import (
    CALCULATOR,
    ScriptedModel,
    SlowModel,
    decoded,
    make_settings,
    runtime_at,
    task_names,
    tool_line,
    types_of,
    user,
    wait_for_event,
)


async def test_told_start_runs_the_run(tmp_path: Path) -> None:
    """A run started by a tell (nobody waits for the reply) is driven to its answer: its effects
    run after the commit as an ask's do."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        start = StartRun(
            session_key="told",
            agent_id="default",
            owner=None,
            spec=AgentSpec(name="default"),
            messages=[user("told hello")],
        )
        await rt.system.ref("run", "told-run").tell(start)
        with trio.fail_after(10):
            await wait_for_event(rt.log, "run:told-run", "RunCompleted")
        view = await rt.get_run("told-run")
        assert (view.status, view.content) == ("completed", "Echo: told hello")


async def test_plain_reply_records_events_in_order(tmp_path: Path) -> None:
    """A plain message gets the echo reply, its usage, the events in order and a session history."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user("hello  big world")])
        view = await rt.wait_run(sent.run_id)
        assert view.status == "completed"
        assert view.content == "Echo: hello  big world"
        assert (view.usage.prompt_tokens, view.usage.completion_tokens) == (3, 4)
        assert view.usage.total_tokens == 7
        types = types_of(rt.log, f"run:{sent.run_id}")
        assert types[:2] == ["RunStarted", "ModelRequested"]
        assert types[-2:] == ["AssistantMessage", "RunCompleted"]
        assert set(types[2:-2]) == {"AssistantDelta"}
        session = await rt.get_session(sent.session_key)
        assert [(m.role, m.content) for m in session.messages] == [
            ("user", "hello  big world"),
            ("assistant", "Echo: hello  big world"),
        ]
        assert session.current_run is None


async def test_tool_round_trip(tmp_path: Path) -> None:
    """A `/tool calculator` line runs the tool, feeds its result to a second model step."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [tool_line("calculator", '{"expr": "6*7"}')])
        view = await rt.wait_run(sent.run_id)
        assert view.status == "completed"
        assert view.content == "Tool calculator returned: 42"
        assert view.step == 2
        types = types_of(rt.log, f"run:{sent.run_id}")
        assert types.index("ToolCallRequested") < types.index("ToolCallCompleted")
        assert types.count("ModelRequested") == 2
        assert types.index("ToolCallCompleted") < len(types) - 1 - types[::-1].index(
            "ModelRequested"
        )
        [done] = decoded(rt.log, f"run:{sent.run_id}", ToolCallCompleted)
        assert (done.name, done.output) == ("calculator", "42")
        assert [m.role for m in view.messages] == ["assistant", "tool", "assistant"]


async def test_tool_error_becomes_a_tool_message(tmp_path: Path) -> None:
    """A calculator error is recorded as a failed call, sent to the model, and the run completes."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [tool_line("calculator", '{"expr": "2 +* 3"}')])
        view = await rt.wait_run(sent.run_id)
        assert view.status == "completed"
        [failed] = decoded(rt.log, f"run:{sent.run_id}", ToolCallFailed)
        tool_message = view.messages[1]
        assert tool_message.role == "tool"
        assert tool_message.content == f"error: {failed.error}"
        assert view.content.startswith("Tool calculator returned: error: ")


async def test_tool_outside_the_agents_tools_fails_the_call_not_the_run(tmp_path: Path) -> None:
    """A call to a tool the agent does not have is a ToolCallFailed; the run still completes."""
    model = ScriptedModel([ToolCall(id="c1", name="clock")], answer="fine")
    async with runtime_at(
        tmp_path / "log", make_settings(model), agents={"calc": CALCULATOR}
    ) as rt:
        sent = await rt.send("calc", [user("what time is it")])
        view = await rt.wait_run(sent.run_id)
        assert view.status == "completed"
        assert view.content == "fine"
        [failed] = decoded(rt.log, f"run:{sent.run_id}", ToolCallFailed)
        assert failed.name == "clock"
        assert "not available" in failed.error
        assert "ToolCallCompleted" not in types_of(rt.log, f"run:{sent.run_id}")


async def test_step_limit_fails_the_run(tmp_path: Path) -> None:
    """With max_steps=1 a tool call leaves no step for the answer: RunFailed names the limit."""
    agent = AgentSpec(tools=["calculator"], max_steps=1)
    async with runtime_at(tmp_path / "log", make_settings(), agents={"one": agent}) as rt:
        sent = await rt.send("one", [tool_line("calculator", '{"expr": "1+1"}')])
        view = await rt.wait_run(sent.run_id)
        assert view.status == "failed"
        assert view.error is not None and "step limit of 1" in view.error
        types = types_of(rt.log, f"run:{sent.run_id}")
        assert types[-1] == "RunFailed"
        assert types.count("ModelRequested") == 1
        assert "ToolCallCompleted" in types
        [failed] = decoded(rt.log, f"run:{sent.run_id}", RunFailed)
        assert failed.usage is not None and failed.usage.total_tokens > 0


async def test_long_reply_deltas_are_coalesced(tmp_path: Path) -> None:
    """A 500-word reply is recorded in few deltas (at most one per 64 chars) that join to it."""
    text = " ".join(f"w{i}" for i in range(500))
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user(text)])
        view = await rt.wait_run(sent.run_id)
        deltas = decoded(rt.log, f"run:{sent.run_id}", AssistantDelta)
        assert "".join(d.text for d in deltas) == view.content == f"Echo: {text}"
        assert len(deltas) <= len(view.content) // 64 + 1
        assert len(deltas) < 500 / 10


async def test_slow_stream_deltas_flush_on_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Chunks a second apart are each recorded at once: the interval bounds how stale a delta is."""
    model = SlowModel(words=5, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        sent = await rt.send("default", [user("x")])
        await rt.wait_run(sent.run_id)
        deltas = decoded(rt.log, f"run:{sent.run_id}", AssistantDelta)
        assert [d.text for d in deltas] == ["word "] * 5


async def test_message_accepted_is_durable_when_send_returns(tmp_path: Path) -> None:
    """Once `send` returns, the session's stream holds MessageAccepted with the message."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user("keep me")], session_key="inbox")
        [accepted] = decoded(rt.log, "session:inbox", MessageAccepted)
        assert accepted.run_id == sent.run_id
        assert [m.content for m in accepted.messages] == ["keep me"]
        await rt.wait_run(sent.run_id)


async def test_cancel_mid_stream_stops_the_model_and_leaves_no_task(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """cancel_run ends the run with RunCancelled, closes the stream and removes the driver."""
    model = SlowModel(words=100, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        sent = await rt.send("default", [user("go")])
        stream = f"run:{sent.run_id}"
        await wait_for_event(rt.log, stream, "AssistantDelta")
        assert f"run {sent.run_id}" in task_names()
        view = await rt.cancel_run(sent.run_id, reason="user pressed stop")
        assert view.status == "cancelled"
        assert view.error == "user pressed stop"
        sent_at_cancel = model.chunks_sent
        await trio.sleep(30)  # virtual: a live stream would send 30 more chunks meanwhile
        assert model.closed
        assert model.chunks_sent <= sent_at_cancel + 1
        assert types_of(rt.log, stream)[-1] == "RunCancelled"
        assert rt.registry.statistics().active_runs == 0
        assert f"run {sent.run_id}" not in task_names()
        session = await rt.get_session(sent.session_key)
        assert session.current_run is None


async def test_emergency_stop_cancels_runs_and_refuses_sends_until_released(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Emergency stop cancels what runs, refuses new sends, and release lets them through again."""
    model = SlowModel(words=100, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        first = await rt.send("default", [user("a")], session_key="one")
        second = await rt.send("default", [user("b")], session_key="two")
        await wait_for_event(rt.log, f"run:{first.run_id}", "AssistantDelta")
        await wait_for_event(rt.log, f"run:{second.run_id}", "AssistantDelta")
        assert await rt.emergency_stop() == 2
        for run_id in (first.run_id, second.run_id):
            view = await rt.wait_run(run_id)
            assert (view.status, view.error) == ("cancelled", "emergency stop")
        with pytest.raises(Unavailable):
            await rt.send("default", [user("c")], session_key="one")
        assert rt.registry.statistics().active_runs == 0
        await rt.release_emergency_stop()
        model.words = 2
        after = await rt.send("default", [user("d")], session_key="one")
        assert (await rt.wait_run(after.run_id)).status == "completed"


class BrokenModel:
    """Streams one chunk, then fails with an error no provider is supposed to raise."""

    name = "broken"

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        await trio.lowlevel.checkpoint()
        yield TextDelta("partial ")
        raise RuntimeError("provider bug")


async def test_driver_crash_fails_the_run_and_frees_the_session(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A driver that dies of an unexpected error fails its run, and the session takes new work."""
    async with runtime_at(
        tmp_path / "log", make_settings(BrokenModel()), commit_in_thread=False
    ) as rt:
        sent = await rt.send("default", [user("x")], session_key="s")
        with trio.fail_after(60):
            view = await rt.wait_run(sent.run_id)
        assert (view.status, view.error) == ("failed", "interrupted")
        assert rt.registry.statistics().active_runs == 0
        session = await rt.get_session("s")
        assert session.current_run is None


async def test_an_instant_run_costs_two_commits(tmp_path: Path) -> None:
    """An instant model's run costs two fsynced commits: the message with the run's assignment
    and start, then the answer with its completion and the session's settlement. A queued
    message's run starts in the commit that ends the run before it."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        for text in ("new session", "same session"):
            before = rt.log.statistics().batches
            sent = await rt.send("default", [user(text)], session_key="s")
            view = await rt.wait_sent(sent)
            assert view.status == "completed"
            assert rt.log.statistics().batches - before == 2, text
        await trio.sleep(0.2)  # nothing trails behind: no later commit for the same runs
        assert rt.log.statistics().batches - before == 2
        assert types_of(rt.log, f"run:{sent.run_id}") == [
            "RunStarted",
            "ModelRequested",
            "AssistantDelta",
            "AssistantMessage",
            "RunCompleted",
        ]

        model = SlowModel(words=2, delay=0.2)
        rt.settings.providers["echo"] = model
        before = rt.log.statistics().batches
        first = await rt.send("default", [user("A")], session_key="q")
        second = await rt.send("default", [user("B")], session_key="q")
        assert second.queued
        await rt.wait_sent(second)
        # A's message and start, B's message, A's 2 deltas, A's end with B's start, B's 2
        # deltas, B's end
        assert rt.log.statistics().batches - before == 8
        [b_start] = rt.log.read_stream(f"run:{second.run_id}", limit=1)
        a_end = rt.log.read_stream(f"run:{first.run_id}")[-1]
        assert a_end.type == "RunCompleted"
        # One commit: A's end, the session settling it and assigning B, B's start.
        settled = rt.log.read_all(a_end.seq, limit=3)
        assert [r.type for r in settled] == ["RunSettled", "RunAssigned", "RunStarted"]
        assert settled[-1].seq == b_start.seq
        assert {r.ts for r in settled} == {a_end.ts}


async def test_each_part_of_a_shared_commit_names_its_own_actor(tmp_path: Path) -> None:
    """The session's commit carries the run's start and the run's end carries the session's
    settlement: each part's envelope names who caused it, as if each had appended alone."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user("who")], session_key="w")
        await rt.wait_sent(sent)
        actors = {r.type: r.actor for r in rt.log.read_all(0) if r.stream != "session:w"}
        actors.update({r.type: r.actor for r in rt.log.read_stream("session:w")})
        assert actors["MessageAccepted"] == actors["RunStarted"] == "local"
        assert actors["RunCompleted"] == "agent:default"
        assert actors["RunSettled"] == f"run:{sent.run_id}"


async def test_a_queued_run_started_after_an_emergency_stop_is_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The stop cancels the running run; the commit that settles it starts the queued one, which
    the run refuses when it is handed over, and the session ends up idle."""
    model = SlowModel(words=100, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        first = await rt.send("default", [user("a")], session_key="s")
        second = await rt.send("default", [user("b")], session_key="s")
        assert second.queued
        await wait_for_event(rt.log, f"run:{first.run_id}", "AssistantDelta")
        assert await rt.emergency_stop() == 1
        a = await rt.wait_run(first.run_id)
        assert (a.status, a.error) == ("cancelled", "emergency stop")
        b = await rt.wait_run(second.run_id)
        assert (b.status, b.error) == ("failed", "emergency stop: new runs are refused")
        assert types_of(rt.log, f"run:{second.run_id}") == ["RunStarted", "RunFailed"]
        assert model.calls == 1
        session = await rt.get_session("s")
        assert session.current_run is None and session.queued_runs == []
