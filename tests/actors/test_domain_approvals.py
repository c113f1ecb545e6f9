"""Approvals: bound to an args digest, decided, per-tool overrides, timeouts, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from cuelog.actors import AgentSpec, Domain
from cuelog.actors._errors import Conflict, Invalid, NotFound
from cuelog.actors._events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    ToolCallFailed,
    ToolCallRequested,
)
from cuelog.actors._run import args_digest
from tests.actors.domain_support import (
    decoded,
    make_settings,
    runtime_at,
    tool_line,
    types_of,
    wait_for_event,
)

ASKING = AgentSpec(tools=["calculator"], approval="ask")
SIX_BY_SEVEN = '{"expr": "6*7"}'


async def requested(rt: Domain, run_id: str) -> ApprovalRequested:
    """The run's approval request, once it is committed."""
    await wait_for_event(rt.log, f"run:{run_id}", "ApprovalRequested")
    [request] = decoded(rt.log, f"run:{run_id}", ApprovalRequested)
    assert isinstance(request, ApprovalRequested)
    return request


async def test_ask_records_the_digest_and_a_matching_grant_runs_the_tool(tmp_path: Path) -> None:
    """`ask` waits with the call's digest; a wrong digest is refused, the right one runs it."""
    async with runtime_at(tmp_path / "log", make_settings(), agents={"ask": ASKING}) as rt:
        sent = await rt.send("ask", [tool_line("calculator", SIX_BY_SEVEN)])
        request = await requested(rt, sent.run_id)
        [call] = decoded(rt.log, f"run:{sent.run_id}", ToolCallRequested)
        assert request.args_digest == args_digest(call.call)
        view = await rt.get_run(sent.run_id)
        assert view.status == "waiting_approval"
        assert view.pending_approvals == [request.approval_id]
        assert rt.pending_approvals() == {request.approval_id: sent.run_id}
        with pytest.raises(Invalid):
            await rt.decide_approval(request.approval_id, approve=True, args_digest="0" * 64)
        assert "ApprovalGranted" not in types_of(rt.log, f"run:{sent.run_id}")
        await rt.decide_approval(
            request.approval_id, approve=True, args_digest=request.args_digest, by="alice"
        )
        view = await rt.wait_run(sent.run_id)
        assert (view.status, view.content) == ("completed", "Tool calculator returned: 42")
        [granted] = decoded(rt.log, f"run:{sent.run_id}", ApprovalGranted)
        assert granted.by == "alice"
        assert rt.pending_approvals() == {}
        with pytest.raises(NotFound):
            await rt.decide_approval(
                request.approval_id, approve=True, args_digest=request.args_digest
            )


async def test_digest_changes_with_the_arguments() -> None:
    """The digest covers the exact arguments, ignoring only key order and spacing."""
    from cuelog.actors import ToolCall

    base = args_digest(ToolCall(id="a", name="calculator", arguments='{"expr":"1+1","x":1}'))
    same = args_digest(ToolCall(id="b", name="calculator", arguments='{"x": 1, "expr": "1+1"}'))
    other = args_digest(ToolCall(id="a", name="calculator", arguments='{"expr":"1+2","x":1}'))
    renamed = args_digest(ToolCall(id="a", name="clock", arguments='{"expr":"1+1","x":1}'))
    assert base == same
    assert len({base, other, renamed}) == 3


async def test_deny_fails_the_call_with_the_reason(tmp_path: Path) -> None:
    """A denial becomes a ToolCallFailed carrying the approver's reason; the run completes."""
    async with runtime_at(tmp_path / "log", make_settings(), agents={"ask": ASKING}) as rt:
        sent = await rt.send("ask", [tool_line("calculator", SIX_BY_SEVEN)])
        request = await requested(rt, sent.run_id)
        await rt.decide_approval(
            request.approval_id,
            approve=False,
            args_digest=request.args_digest,
            reason="not today",
        )
        view = await rt.wait_run(sent.run_id)
        assert view.status == "completed"
        [failed] = decoded(rt.log, f"run:{sent.run_id}", ToolCallFailed)
        assert "not today" in failed.error
        assert "ToolCallCompleted" not in types_of(rt.log, f"run:{sent.run_id}")
        with pytest.raises((Conflict, NotFound)):
            await rt.decide_approval(
                request.approval_id, approve=True, args_digest=request.args_digest
            )


async def test_per_tool_override_beats_the_agent_policy(tmp_path: Path) -> None:
    """An agent that asks for everything but marks calculator `auto` runs it without asking."""
    agent = AgentSpec(tools=["calculator"], approval="ask", tool_approval={"calculator": "auto"})
    strict = AgentSpec(tools=["calculator"], approval="auto", tool_approval={"calculator": "ask"})
    async with runtime_at(
        tmp_path / "log", make_settings(), agents={"lenient": agent, "strict": strict}
    ) as rt:
        sent = await rt.send("lenient", [tool_line("calculator", SIX_BY_SEVEN)])
        view = await rt.wait_run(sent.run_id)
        assert view.content == "Tool calculator returned: 42"
        assert "ApprovalRequested" not in types_of(rt.log, f"run:{sent.run_id}")
        sent = await rt.send("strict", [tool_line("calculator", SIX_BY_SEVEN)])
        await requested(rt, sent.run_id)
        assert (await rt.get_run(sent.run_id)).status == "waiting_approval"
        await rt.cancel_run(sent.run_id)


async def test_reject_policy_fails_the_call_without_asking(tmp_path: Path) -> None:
    """`reject` refuses the call outright; the model hears of it and the run completes."""
    agent = AgentSpec(tools=["calculator"], approval="reject")
    async with runtime_at(tmp_path / "log", make_settings(), agents={"no": agent}) as rt:
        sent = await rt.send("no", [tool_line("calculator", SIX_BY_SEVEN)])
        view = await rt.wait_run(sent.run_id)
        assert view.status == "completed"
        types = types_of(rt.log, f"run:{sent.run_id}")
        assert "ApprovalRequested" not in types and "ToolCallCompleted" not in types
        [failed] = decoded(rt.log, f"run:{sent.run_id}", ToolCallFailed)
        assert "approval policy" in failed.error


async def test_auto_approve_setting_skips_asking(tmp_path: Path) -> None:
    """With the environment's auto_approve on, an `ask` agent's call runs at once."""
    async with runtime_at(
        tmp_path / "log", make_settings(auto_approve=True), agents={"ask": ASKING}
    ) as rt:
        sent = await rt.send("ask", [tool_line("calculator", SIX_BY_SEVEN)])
        view = await rt.wait_run(sent.run_id)
        assert view.content == "Tool calculator returned: 42"
        assert "ApprovalRequested" not in types_of(rt.log, f"run:{sent.run_id}")


async def test_approval_timeout_records_a_denial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An approval nobody decides within the timeout is denied as timed out; the run completes."""
    settings = make_settings(approval_timeout=600.0)
    async with runtime_at(
        tmp_path / "log", settings, agents={"ask": ASKING}, commit_in_thread=False
    ) as rt:
        sent = await rt.send("ask", [tool_line("calculator", SIX_BY_SEVEN)])
        await requested(rt, sent.run_id)
        start = trio.current_time()
        view = await rt.wait_run(sent.run_id)
        assert trio.current_time() >= start + 600.0  # the deadline, computed the same way
        assert view.status == "completed"
        [denied] = decoded(rt.log, f"run:{sent.run_id}", ApprovalDenied)
        assert "timed out" in denied.reason
        assert denied.by is None
        assert rt.pending_approvals() == {}


async def test_cancelled_run_leaves_no_pending_approval(tmp_path: Path) -> None:
    """Cancelling a run that waits for approval removes its approval from the pending list."""
    async with runtime_at(tmp_path / "log", make_settings(), agents={"ask": ASKING}) as rt:
        sent = await rt.send("ask", [tool_line("calculator", SIX_BY_SEVEN)])
        request = await requested(rt, sent.run_id)
        await rt.cancel_run(sent.run_id)
        assert rt.pending_approvals() == {}
        with pytest.raises(NotFound):
            await rt.decide_approval(
                request.approval_id, approve=True, args_digest=request.args_digest
            )


async def test_pending_approval_survives_a_restart(tmp_path: Path) -> None:
    """A run waiting for approval is still waiting after a restart, listed, and resumes on grant."""
    path = tmp_path / "log"
    async with runtime_at(path, make_settings(), agents={"ask": ASKING}) as rt:
        sent = await rt.send("ask", [tool_line("calculator", SIX_BY_SEVEN)])
        request = await requested(rt, sent.run_id)
    async with runtime_at(path, make_settings(), agents={"ask": ASKING}) as rt:
        view = await rt.get_run(sent.run_id)
        assert view.status == "waiting_approval"
        assert view.pending_approvals == [request.approval_id]
        assert rt.pending_approvals() == {request.approval_id: sent.run_id}
        await rt.decide_approval(request.approval_id, approve=True, args_digest=request.args_digest)
        view = await rt.wait_run(sent.run_id)
        assert (view.status, view.content) == ("completed", "Tool calculator returned: 42")
        session = await rt.get_session(sent.session_key)
        assert session.current_run is None
        assert session.messages[-1].content == "Tool calculator returned: 42"
