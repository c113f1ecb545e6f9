"""What sessions and runs tell each other, and who a command comes from.

`_session` and `_run` both import this module and nothing of each other: a session starts and
cancels runs, and a run tells its session it is done, through `ActorRef`s addressed by kind and
id (`cuelog.actors._names`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from cuelog.actors._events import AgentSpec, RunFailed, RunStarted
from cuelog.actors._messages import ChatMessage, ToolCall, Usage
from cuelog.runtime import AppendPart, Event


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
    # Its `RunStarted` is already in the log (the session's commit carried it, and the run is
    # handed the records): the run folds it and starts working.
    started: bool = False


def start_events(run_id: str, command: StartRun, error: str | None = None) -> list[Event]:
    """What starting a run records: its `RunStarted`, then `RunFailed` when it cannot run
    (`error`, else the command's own)."""
    error = error or command.error
    spec = command.spec or AgentSpec()
    referenced = command.history_stream is not None
    started = RunStarted(
        run_id=run_id,
        session_key=command.session_key,
        agent_id=command.agent_id,
        spec=spec,
        # With a history reference the prompt is put in front when the conversation is
        # rebuilt, not copied into every run.
        messages=command.messages if referenced else with_system_prompt(spec, command.messages),
        owner=command.owner,
        history_stream=command.history_stream,
        history_version=command.history_version if referenced else 0,
    )
    return [started] if error is None else [started, RunFailed(reason=error)]


def with_system_prompt(spec: AgentSpec, messages: list[ChatMessage]) -> list[ChatMessage]:
    if spec.system_prompt and not (messages and messages[0].role == "system"):
        return [ChatMessage(role="system", content=spec.system_prompt), *messages]
    return list(messages)


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
    """A run ended: the session settles it and starts the next one it has queued.

    With `part` (the run's last events at its version) the session commits them together with
    its settlement and answers with their records; the run folds them instead of appending.
    """

    run_id: str
    status: str
    messages: list[ChatMessage]
    part: AppendPart | None = None
