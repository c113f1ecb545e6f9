"""What sessions and runs tell each other, and who a command comes from.

`_session` and `_run` both import this module and nothing of each other: a session starts and
cancels runs, and a run tells its session it is done, through `ActorRef`s addressed by kind and
id (`cuelog.actors._names`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from cuelog.actors._events import AgentSpec
from cuelog.actors._messages import ChatMessage, ToolCall, Usage


class Caller(msgspec.Struct, frozen=True):
    """Who sends a command: the owning key's id, and whether it may see everyone's."""

    owner: str | None = None
    admin: bool = True


ADMIN = Caller()


def caller_actor(command: Any) -> str | None:
    """The envelope `actor` for a command: the calling key's id, `local` without auth."""
    caller = getattr(command, "caller", None)
    if not isinstance(caller, Caller):
        return None
    return caller.owner or "local"


# -- to a run ----------------------------------------------------------------------------------


class StartRun(msgspec.Struct, frozen=True, kw_only=True):
    """Start the run with this conversation; with `error` it is recorded as started and failed.

    The conversation is the history of `history_stream` (a session) as of `history_version`,
    then `messages`; without `history_stream`, `messages` is all of it. `history` is that
    history when the sender has it at hand, so the run need not read it back from the log.
    """

    session_key: str
    agent_id: str
    owner: str | None
    spec: AgentSpec | None
    messages: list[ChatMessage]
    error: str | None = None
    history_stream: str | None = None
    history_version: int = 0
    history: list[ChatMessage] | None = None


class CancelRun(msgspec.Struct, frozen=True):
    reason: str = "cancelled"
    caller: Caller = ADMIN


class GetRun(msgspec.Struct, frozen=True):
    caller: Caller = ADMIN


class RunView(msgspec.Struct, frozen=True, kw_only=True):
    """What a run answers: its status, answer so far and the messages it produced."""

    id: str
    status: str
    session_key: str
    agent_id: str
    owner: str | None
    step: int
    content: str
    usage: Usage
    error: str | None
    pending_approvals: list[str]
    messages: list[ChatMessage]
    version: int
    finish_reason: str = "stop"
    # Calls of client functions the run ended with: the client runs them and sends the results.
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)


# -- to a session ------------------------------------------------------------------------------


class RunDone(msgspec.Struct, frozen=True):
    """A run ended: the session settles it and starts the next one it has queued."""

    run_id: str
    status: str
    messages: list[ChatMessage]
