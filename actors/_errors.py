"""Errors raised by the actors layer.

CuelogError (cuelog.runtime)
├── ModelError      a model provider could not produce a reply (upstream status, network, config)
├── ToolError       a tool refused its arguments, failed or timed out; becomes a tool message
├── PayloadTooLarge (cuelog.runtime)
│   └── InputTooLarge  a request's messages would make an event over the log's limit
└── CommandRejected (cuelog.runtime): an actor refused a command, its state unchanged
    ├── NotFound    no such agent, session, run or approval (or not the caller's)
    ├── Conflict    the command clashes with the current state (exists, busy, finished)
    │   └── IdempotencyKeyReused  an Idempotency-Key came back with another request
    ├── Invalid     the command's content is wrong (a digest that does not match, a bad value)
    ├── Unavailable runs are refused for now (emergency stop)
    └── BudgetExceeded  an agent's or a key's budget for the period is spent
"""

from __future__ import annotations

from cuelog.runtime import CommandRejected, CuelogError, PayloadTooLarge


class ModelError(CuelogError):
    """The model provider failed; `status` is the upstream HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ToolError(CuelogError):
    """A tool call failed; the message is written for the model to read."""


class NotFound(CommandRejected):
    """No such agent, session, run or approval, or it belongs to someone else."""


class Conflict(CommandRejected):
    """The command clashes with the current state."""


class IdempotencyKeyReused(Conflict):
    """An `Idempotency-Key` was already used with a different request."""


class Invalid(CommandRejected):
    """The command's content is wrong; `param` names the field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Unavailable(CommandRejected):
    """New work is refused for now."""


class BudgetExceeded(CommandRejected):
    """A budget of the agent or the calling key is spent; `reset_at` (seconds since the Unix
    epoch) is when runs may start again."""

    def __init__(self, message: str, *, reset_at: int) -> None:
        super().__init__(message)
        self.reset_at = reset_at


class InputTooLarge(PayloadTooLarge):
    """A request's input would make an event larger than the log accepts; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(size, limit)
        self.args = (
            f"the input needs {size} bytes in one log event, over the log's {limit}-byte event "
            "limit; send less (or a shorter conversation)",
        )
