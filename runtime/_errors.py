"""Errors raised by cuelog.

CuelogError
├── LogError
│   ├── WrongExpectedVersion      an append's expected version is not the stream's
│   ├── IdempotencyConflict       an idempotency key reused with a different body
│   ├── PayloadTooLarge           one event's encoded size is over the limit
│   ├── LogLocked                 another process holds the data dir for writing
│   ├── LogLost                   the data dir was removed or replaced under its writer
│   ├── LogFormatError            the data dir is unreadable or from a newer format
│   ├── LogClosed                 the log was closed before the append was written
│   ├── LogUnavailable            the log's database cannot be reached now (retry later)
│   ├── LeaseLost                 an append for an actor whose lease this node no longer holds
│   └── StorageFull               the map cannot grow any further
├── ProjectionFailed              a projection raised on an event and stopped there
└── ActorError
    ├── MailboxFull               tell_nowait on a full mailbox
    ├── ActorStopped              the actor gave up after repeated failures or shut down
    ├── ActorOwnedElsewhere       another live node holds the actor's lease
    └── CommandRejected           an actor's decide step refused a command
"""

from __future__ import annotations


class CuelogError(Exception):
    """Base of every error cuelog raises on purpose."""


class LogError(CuelogError):
    """Something about the event log."""


class WrongExpectedVersion(LogError):
    """The stream is not at the version the appender expected."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, the append expected {expected}"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class IdempotencyConflict(LogError):
    """An idempotency key was reused with a different body."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used with a different body")
        self.key = key


class PayloadTooLarge(LogError):
    """An event is larger than the log accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event of {size} bytes is over the {limit}-byte limit")
        self.size = size
        self.limit = limit


class LogLocked(LogError):
    """Another process has the data dir open for writing."""

    def __init__(self, path: str, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"data dir {path} is locked by {who}; stop it or open read-only")
        self.path = path
        self.pid = pid


class LogLost(LogError):
    """The log's file was removed or replaced under its writer; it can no longer write."""


class LogFormatError(LogError):
    """The data dir cannot be read by this version of cuelog."""


class LogClosed(LogError):
    """The log is closed; nothing more can be appended."""


class LogUnavailable(LogError):
    """The log's database cannot be reached now; nothing was acknowledged, retrying is safe."""


class LeaseLost(LogError):
    """An append for an actor whose lease this node no longer holds (it expired, or another node
    took it over): the append was fenced off and nothing of it was written."""

    def __init__(self, stream: str, owner: str | None) -> None:
        held = f"node {owner!r} holds it now" if owner else "its lease expired"
        super().__init__(f"this node no longer owns the actor of stream {stream!r} ({held})")
        self.stream = stream
        self.owner = owner


class StorageFull(LogError):
    """The log reached its configured maximum size."""


class ActorError(CuelogError):
    """Something about an actor."""


class MailboxFull(ActorError):
    """The actor's mailbox has no room."""


class ActorStopped(ActorError):
    """The actor is not running and will not take the message."""


class ActorOwnedElsewhere(ActorError):
    """Another live node holds the actor's lease: send the message to that node instead."""

    def __init__(self, key: str, node: str, address: str) -> None:
        where = f" at {address}" if address else ""
        super().__init__(f"actor {key!r} is owned by node {node!r}{where}")
        self.key = key
        self.node = node
        self.address = address


class CommandRejected(ActorError):
    """The actor refused the command; its state is unchanged."""


class ProjectionFailed(CuelogError):
    """A projection raised on an event: it stopped there, and applies nothing until rebuilt."""

    def __init__(self, name: str, seq: int, error: str) -> None:
        super().__init__(f"projection {name!r} failed at seq {seq}: {error}")
        self.name = name
        self.seq = seq
        self.error = error
