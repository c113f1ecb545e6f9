"""Sessions: history, busy policies, reset, delete, patch, ownership, fork, state at a seq."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cuelog.actors import AgentSpec, ChatMessage
from cuelog.actors._agent import AgentActor, AgentState, GetAgent
from cuelog.actors._commands import Caller
from cuelog.actors._errors import Conflict, NotFound
from cuelog.actors._events import MessageAccepted, RunAssigned, RunStarted, SessionCreated
from cuelog.actors._session import SessionView
from cuelog.actors._session_fold import SessionState
from cuelog.runtime import Event, open_event_log
from tests.actors.domain_support import (
    SlowModel,
    decoded,
    make_settings,
    runtime_at,
    types_of,
    user,
    wait_for_event,
)

ALICE = Caller(owner="alice", admin=False)
BOB = Caller(owner="bob", admin=False)


def contents(messages: list[ChatMessage]) -> list[tuple[str, str | None]]:
    return [(m.role, m.content) for m in messages]


async def test_history_keeps_every_message_in_order(tmp_path: Path) -> None:
    """Several messages to one session build one history in the order they were sent."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        for text in ("one", "two", "three"):
            sent = await rt.send("default", [user(text)], session_key="s")
            await rt.wait_run(sent.run_id)
        session = await rt.get_session("s")
        assert contents(session.messages) == [
            ("user", "one"),
            ("assistant", "Echo: one"),
            ("user", "two"),
            ("assistant", "Echo: two"),
            ("user", "three"),
            ("assistant", "Echo: three"),
        ]
        assert len(session.recent_runs) == 3


async def test_enqueue_runs_the_second_message_after_the_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A message sent during a run waits in the inbox and runs once the first run is over."""
    model = SlowModel(words=5, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        first = await rt.send("default", [user("a")], session_key="s")
        await wait_for_event(rt.log, f"run:{first.run_id}", "AssistantDelta")
        second = await rt.send("default", [user("b")], session_key="s")
        assert second.queued and not first.queued
        assert (await rt.get_run(second.run_id)).status == "queued"
        assert (await rt.get_session("s")).queued_runs == [second.run_id]
        done = await rt.wait_run(second.run_id)
        assert done.status == "completed"
        first_end = rt.log.read_stream(f"run:{first.run_id}")[-1]
        second_start = rt.log.read_stream(f"run:{second.run_id}")[0]
        assert first_end.type == "RunCompleted"
        assert second_start.seq > first_end.seq
        session = await rt.get_session("s")
        assert [m.role for m in session.messages] == ["user", "assistant", "user", "assistant"]
        assert [m.content for m in session.messages if m.role == "user"] == ["a", "b"]


async def test_reject_policy_refuses_a_message_while_busy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A `reject` session answers Conflict while a run is going, and takes messages after it."""
    model = SlowModel(words=5, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        first = await rt.send("default", [user("a")], session_key="s", busy_policy="reject")
        with pytest.raises(Conflict):
            await rt.send("default", [user("b")], session_key="s")
        with pytest.raises(NotFound):
            await rt.get_run("never")
        await rt.wait_run(first.run_id)
        after = await rt.send("default", [user("c")], session_key="s")
        assert (await rt.wait_run(after.run_id)).status == "completed"
        users = [m.content for m in (await rt.get_session("s")).messages if m.role == "user"]
        assert users == ["a", "c"]


async def test_interrupt_policy_cancels_the_run_and_starts_the_new_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An `interrupt` session cancels the running run when a message arrives, then runs it."""
    model = SlowModel(words=50, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        first = await rt.send("default", [user("a")], session_key="s", busy_policy="interrupt")
        await wait_for_event(rt.log, f"run:{first.run_id}", "AssistantDelta")
        model.words = 2
        second = await rt.send("default", [user("b")], session_key="s")
        view = await rt.wait_run(first.run_id)
        assert (view.status, view.error) == ("cancelled", "interrupted")
        assert (await rt.wait_run(second.run_id)).status == "completed"
        assert types_of(rt.log, f"run:{first.run_id}")[-1] == "RunCancelled"


async def test_reset_empties_history_by_an_event(tmp_path: Path) -> None:
    """Reset empties the history but keeps the earlier events; the next run starts fresh."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user("remember me")], session_key="s")
        await rt.wait_run(sent.run_id)
        before = rt.log.stream_version("session:s")
        view = await rt.reset_session("s")
        assert view.messages == []
        types = types_of(rt.log, "session:s")
        assert len(types) == before + 1 and types[-1] == "SessionReset"
        assert "MessageAccepted" in types
        sent = await rt.send("default", [user("fresh")], session_key="s")
        run = await rt.wait_run(sent.run_id)
        started = rt.log.read_stream(f"run:{sent.run_id}")[0]
        assert b"remember me" not in started.data
        assert contents((await rt.get_session("s")).messages) == [
            ("user", "fresh"),
            ("assistant", run.content),
        ]


async def test_deleted_session_is_not_found(tmp_path: Path) -> None:
    """After delete, reading, patching and sending to the session all answer NotFound."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user("x")], session_key="s")
        await rt.wait_run(sent.run_id)
        await rt.delete_session("s")
        with pytest.raises(NotFound):
            await rt.get_session("s")
        with pytest.raises(NotFound):
            await rt.send("default", [user("y")], session_key="s")
        with pytest.raises(NotFound):
            await rt.patch_session("s", label="z")
        assert types_of(rt.log, "session:s")[-1] == "SessionDeleted"
        page, _ = await rt.list_sessions()
        assert "s" not in [v.key for v in page]


async def test_patch_label_and_metadata(tmp_path: Path) -> None:
    """Patching sets the label and merges metadata; a later patch keeps what it does not name."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user("x")], session_key="s", metadata={"a": 1})
        await rt.wait_run(sent.run_id)
        view = await rt.patch_session("s", label="first", metadata={"b": 2})
        assert (view.label, view.metadata) == ("first", {"a": 1, "b": 2})
        view = await rt.patch_session("s", metadata={"a": 3})
        assert (view.label, view.metadata) == ("first", {"a": 3, "b": 2})
        assert (await rt.get_session("s")).label == "first"


async def test_other_owner_sees_not_found(tmp_path: Path) -> None:
    """A session and its runs are invisible to another non-admin caller; admins see them."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        sent = await rt.send("default", [user("mine")], session_key="s", caller=ALICE)
        await rt.wait_run(sent.run_id, caller=ALICE)
        with pytest.raises(NotFound):
            await rt.get_session("s", caller=BOB)
        with pytest.raises(NotFound):
            await rt.get_run(sent.run_id, caller=BOB)
        with pytest.raises(NotFound):
            await rt.send("default", [user("theirs")], session_key="s", caller=BOB)
        with pytest.raises(NotFound):
            await rt.reset_session("s", caller=BOB)
        with pytest.raises(NotFound):
            await rt.delete_session("s", caller=BOB)
        assert (await rt.get_session("s", caller=ALICE)).owner == "alice"
        assert (await rt.get_session("s")).owner == "alice"
        bobs, _ = await rt.list_sessions(caller=BOB)
        assert bobs == []


async def test_fork_copies_history_at_a_seq_and_continues_alone(tmp_path: Path) -> None:
    """A fork at a seq has the parent's history as of that seq; the two then diverge."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        first = await rt.send("default", [user("one")], session_key="p")
        await rt.wait_run(first.run_id)
        at_seq = rt.log.read_stream("session:p")[-1].seq
        second = await rt.send("default", [user("two")], session_key="p")
        await rt.wait_run(second.run_id)
        fork = await rt.fork_session("p", at_seq)
        assert (fork.parent_session, fork.parent_seq) == ("p", at_seq)
        assert contents(fork.messages) == [("user", "one"), ("assistant", "Echo: one")]
        sent = await rt.send("default", [user("three")], session_key=fork.key)
        await rt.wait_run(sent.run_id)
        forked = await rt.get_session(fork.key)
        parent = await rt.get_session("p")
        assert [m.content for m in forked.messages if m.role == "user"] == ["one", "three"]
        assert [m.content for m in parent.messages if m.role == "user"] == ["one", "two"]
        with pytest.raises(NotFound):
            await rt.fork_session("p", rt.log.head().seq + 100)


async def test_state_at_every_seq_matches_the_live_state(tmp_path: Path) -> None:
    """Reading a session at each seq gives what the live session held right then."""
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        seen: dict[int, SessionView] = {}

        async def note() -> None:
            view = await rt.get_session("s")
            seen[rt.log.read_stream("session:s")[-1].seq] = view

        for step in range(6):
            sent = await rt.send("default", [user(f"m{step}")], session_key="s")
            await note()
            await rt.wait_run(sent.run_id)
            await note()
            if step == 2:
                await rt.patch_session("s", label="mid", metadata={"step": step})
                await note()
            if step == 4:
                await rt.reset_session("s")
                await note()
        records = rt.log.read_stream("session:s")
        assert set(seen) <= {r.seq for r in records}
        assert len(seen) >= 12
        previous = 0
        for record in records:
            state = rt.session_state_at("s", record.seq)
            assert state.exists
            if record.type == "SessionReset":
                assert state.history == []
            else:
                assert len(state.history) >= previous, record.seq
            previous = len(state.history)
            if record.seq in seen:
                view = seen[record.seq]
                assert state.history == view.messages, record.seq
                assert (state.label, state.metadata) == (view.label, view.metadata)
                assert state.current_run == view.current_run, record.seq
                assert [q.run_id for q in state.inbox] == view.queued_runs
                assert state.recent_runs == view.recent_runs
        assert rt.session_state_at("s", records[0].seq - 1) == SessionState()


async def test_cancelled_run_leaves_no_unanswered_tool_call_in_history(tmp_path: Path) -> None:
    """A run cancelled while its tool call awaits approval adds no dangling call to the history."""
    agent = AgentSpec(tools=["calculator"], approval="ask")
    async with runtime_at(tmp_path / "log", make_settings(), agents={"ask": agent}) as rt:
        sent = await rt.send("ask", [user('/tool calculator {"expr": "1+1"}')], session_key="s")
        await wait_for_event(rt.log, f"run:{sent.run_id}", "ApprovalRequested")
        await rt.cancel_run(sent.run_id)
        await rt.wait_run(sent.run_id)
        session = await rt.get_session("s")
        answered = {m.tool_call_id for m in session.messages if m.role == "tool"}
        calls = [c.id for m in session.messages for c in m.tool_calls or []]
        assert all(call in answered for call in calls)
        assert contents(session.messages)[0] == ("user", '/tool calculator {"expr": "1+1"}')


async def test_deleting_a_busy_session_ends_its_running_and_queued_runs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Deleting a session cancels its running run and fails its queued ones, so every wait on
    them ends instead of hanging."""
    model = SlowModel(words=5, delay=1.0)
    async with runtime_at(tmp_path / "log", make_settings(model), commit_in_thread=False) as rt:
        first = await rt.send("default", [user("a")], session_key="s")
        await wait_for_event(rt.log, f"run:{first.run_id}", "AssistantDelta")
        second = await rt.send("default", [user("b")], session_key="s")
        await rt.delete_session("s")
        with trio.fail_after(30):
            running = await rt.wait_run(first.run_id)
            queued = await rt.wait_run(second.run_id)
        assert running.status == "cancelled"
        assert queued.status == "failed"
        assert queued.error == "the session was deleted before this run started"
        assert types_of(rt.log, f"run:{second.run_id}") == ["RunStarted", "RunFailed"]


async def test_one_message_asks_the_agent_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's definition read by `send` travels with the message to the run: a chat, even
    a queued one, asks the agent actor for it once."""
    asked: list[str] = []
    decide = AgentActor.decide

    async def counting(self: AgentActor, state: AgentState, command: Any) -> Sequence[Event]:
        if isinstance(command, GetAgent):
            asked.append(self.ctx.id)
        return await decide(self, state, command)

    monkeypatch.setattr(AgentActor, "decide", counting)
    async with runtime_at(tmp_path / "log", make_settings()) as rt:
        first = await rt.send("default", [user("one")], session_key="s")
        second = await rt.send("default", [user("two")], session_key="s")
        await rt.wait_run(first.run_id)
        view = await rt.wait_run(second.run_id)
        assert view.content == "Echo: two"
    assert asked == ["default", "default"]


async def test_message_recorded_without_the_agent_definition_still_runs(tmp_path: Path) -> None:
    """A log written before the definition travelled with the message (MessageAccepted without
    `spec`) still starts its run after a restart, with the agent's definition asked for then."""
    path = tmp_path / "log"
    async with open_event_log(path) as log:
        await log.append(
            "session:old",
            [
                SessionCreated(session_key="old", agent_id="default"),
                MessageAccepted(run_id="run_old", messages=[user("from before")]),
                RunAssigned(run_id="run_old"),
            ],
        )
    async with runtime_at(path, make_settings()) as rt:
        view = await rt.wait_run("run_old")
        assert (view.status, view.content) == ("completed", "Echo: from before")
        [started] = decoded(rt.log, "run:run_old", RunStarted)
        assert started.spec == (await rt.get_agent("default")).spec
