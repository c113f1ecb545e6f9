"""cuelog.runtime: the event log, the actor system, logging. Knows nothing of agents or HTTP."""

from cuelog.runtime._errors import ActorError as ActorError
from cuelog.runtime._errors import ActorStopped as ActorStopped
from cuelog.runtime._errors import CommandRejected as CommandRejected
from cuelog.runtime._errors import CuelogError as CuelogError
from cuelog.runtime._errors import IdempotencyConflict as IdempotencyConflict
from cuelog.runtime._errors import LogClosed as LogClosed
from cuelog.runtime._errors import LogError as LogError
from cuelog.runtime._errors import LogFormatError as LogFormatError
from cuelog.runtime._errors import LogLocked as LogLocked
from cuelog.runtime._errors import MailboxFull as MailboxFull
from cuelog.runtime._errors import PayloadTooLarge as PayloadTooLarge
from cuelog.runtime._errors import StorageFull as StorageFull
from cuelog.runtime._errors import WrongExpectedVersion as WrongExpectedVersion
from cuelog.runtime._logging import configure_logging as configure_logging

__all__ = [
    "ActorError",
    "ActorStopped",
    "CommandRejected",
    "CuelogError",
    "IdempotencyConflict",
    "LogClosed",
    "LogError",
    "LogFormatError",
    "LogLocked",
    "MailboxFull",
    "PayloadTooLarge",
    "StorageFull",
    "WrongExpectedVersion",
    "configure_logging",
]
