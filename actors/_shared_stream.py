"""A registry folded from one stream (providers, MCP servers, webhook secrets) that several
processes sharing a PostgreSQL log change.

Each process folds the stream at start, catches up before it decides on a change, and appends
the change at the version it caught up to: a change another process recorded meanwhile fails the
append (`WrongExpectedVersion`), and the change is decided again on the newer state. So the data
key a change retires (and destroys) is the one the state just before it held, whichever process
recorded that one. `follow` takes up other processes' changes as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar, final

import structlog
import trio

from cuelog.actors._errors import Conflict
from cuelog.actors._events import DOMAIN_CODEC
from cuelog.runtime import Event, EventLog, LogClosed, LogError, WrongExpectedVersion

logger = structlog.get_logger("cuelog.domain")
T = TypeVar("T")

_APPEND_ATTEMPTS: Final = 5  # other processes changing the stream meanwhile: decide again
_RETRY_SECONDS: Final = 0.5


@final
class SharedStream:
    """Stream `stream` of `log`, applied event by event with `apply`."""

    def __init__(self, log: EventLog, stream: str, apply: Callable[[object], None]) -> None:
        self.log = log
        self.stream = stream
        self._apply = apply
        self.version = 0  # the last version applied
        self.on_change: Callable[[], None] | None = None  # after catching up applied something

    def catch_up(self) -> bool:
        """Apply what the stream holds beyond the version applied (one read when nothing is
        new); return whether anything was."""
        changed = False
        for record in self.log.read_stream(self.stream, self.version + 1):
            self._apply(DOMAIN_CODEC.decode(record.type, record.data))
            self.version = record.version
            changed = True
        if changed and self.on_change is not None:
            self.on_change()
        return changed

    async def follow(self) -> None:
        """Take up changes other processes record, as they come (until cancelled or the log
        closes); a change that cannot be read just now (the database unreachable, a data key
        with it) is read again until it is."""
        async for record in self.log.subscribe_stream(self.stream, self.version):
            while record.version > self.version:
                try:
                    self.catch_up()
                except LogClosed:
                    return
                except LogError as exc:
                    logger.warning("cannot take a change up", stream=self.stream, error=str(exc))
                    await trio.sleep(_RETRY_SECONDS)

    async def record(self, event: Event, decide: Callable[[], T], *, actor: str | None) -> T:
        """Catch up, `decide` on the change (raise to refuse it; return what the caller needs
        of the state before it), append `event` right after the version caught up to, and
        apply it; decide again when another process changed the stream first."""
        for _ in range(_APPEND_ATTEMPTS):
            self.catch_up()
            decided = decide()
            try:
                await self.log.append(
                    self.stream, [event], expected_version=self.version, actor=actor
                )
            except WrongExpectedVersion:
                continue
            self.catch_up()
            return decided
        raise Conflict(f"{self.stream} is being changed elsewhere; try again")
