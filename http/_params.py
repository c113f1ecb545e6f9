"""Query and header parameters: each is one object that both reads the request and describes
itself in the OpenAPI document, so what a route accepts and what the spec says cannot drift.

A route lists its parameters in `routes.add(..., params=[...])` and reads them with `.get()`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import msgspec
from quart import request

from cuelog.actors import ID_RE, ID_RULE, MAX_IDEMPOTENCY_KEY_LENGTH
from cuelog.http._wire import ApiError

MAX_SEQ: Final = 1 << 62
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class Param(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""

    location: ClassVar[str] = "query"

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "in": self.location, "schema": self.schema()}
        if self.description:
            out["description"] = self.description
        return out

    def raw(self) -> str | None:
        if self.location == "header":
            return request.headers.get(self.name)
        return request.args.get(self.name)


class IntParam(Param, frozen=True, kw_only=True):
    """An integer query argument between `lo` and `hi`; absent, `default`."""

    default: int
    lo: int = 0
    hi: int = MAX_SEQ

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}

    def get(self) -> int:
        raw = self.raw()
        if raw is None:
            return self.default
        # Digits only: `int()` would also take " 1", "+1" and "1_000", which the spec does not.
        digits = raw[1:] if raw.startswith("-") else raw
        if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
            raise ApiError(400, f"{self.name} must be an integer", param=self.name)
        value = int(raw)
        if not self.lo <= value <= self.hi:
            raise ApiError(
                400, f"{self.name} must be between {self.lo} and {self.hi}", param=self.name
            )
        return value


class TextParam(Param, frozen=True, kw_only=True):
    """Free text; absent or empty, None."""

    def get(self) -> str | None:
        return self.raw() or None


class ChoiceParam(Param, frozen=True, kw_only=True):
    """One of `choices`; absent, `default`."""

    choices: tuple[str, ...]
    default: str

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}

    def get(self) -> str:
        raw = self.raw()
        if raw is None:
            return self.default
        if raw not in self.choices:
            raise ApiError(
                400, f"{self.name} must be one of {', '.join(self.choices)}", param=self.name
            )
        return raw


class TimeParam(Param, frozen=True, kw_only=True):
    """An RFC 3339 date-time with its offset; absent, None. Read as microseconds since the
    Unix epoch (0 for any time before it)."""

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}

    def get(self) -> int | None:
        raw = self.raw()
        if raw is None:
            return None
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            when = None
        if when is None or when.tzinfo is None or "T" not in raw.upper():
            raise ApiError(
                400,
                f"{self.name} must be an RFC 3339 date-time with an offset, "
                "such as 2026-01-31T12:00:00Z",
                param=self.name,
            )
        # Before 1970 is before any event: it counts as the epoch. Subtracting keeps microsecond
        # precision and cannot overflow the way `timestamp()` does near year 1.
        return max((when - _EPOCH) // timedelta(microseconds=1), 0)


class HeaderParam(Param, frozen=True, kw_only=True):
    """A header holding text of at most `max_length` characters matching `pattern`."""

    pattern: str | None = None
    max_length: int = 255
    rule: str = ""
    empty_is_absent: bool = False

    location: ClassVar[str] = "header"

    def schema(self) -> dict[str, Any]:
        shortest = 0 if self.empty_is_absent else 1
        out: dict[str, Any] = {
            "type": "string",
            "minLength": shortest,
            "maxLength": self.max_length,
        }
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out

    def get(self) -> str | None:
        raw = self.raw()
        if raw is None or (raw == "" and self.empty_is_absent):
            return None
        too_long = not raw or len(raw) > self.max_length
        if too_long or (self.pattern is not None and not _matches(self.pattern, raw)):
            rule = self.rule or f"1-{self.max_length} characters"
            raise ApiError(400, f"{self.name} must be {rule}", param=self.name)
        return raw


def _matches(pattern: str, value: str) -> bool:
    # fullmatch, not the pattern's own anchors: `$` also matches before a final newline.
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None


def limit(default: int, hi: int) -> IntParam:
    return IntParam(name="limit", default=default, lo=1, hi=hi, description="Page size.")


EVENTS_LIMIT: Final = IntParam(name="limit", default=100, lo=1, hi=1000, description="Page size.")
CURSOR: Final = TextParam(name="cursor", description="From the previous page's next_cursor.")
AFTER: Final = IntParam(name="after", default=0, description="Only events after this log seq.")
LAST_EVENT_ID: Final = HeaderParam(
    name="Last-Event-ID",
    description="Resume an SSE stream after this log seq.",
    pattern="^[0-9]{0,18}$",
    max_length=18,
    rule="a log seq (a non-negative integer)",
    empty_is_absent=True,
)
IDEMPOTENCY_KEY: Final = HeaderParam(
    name="Idempotency-Key",
    description="The same key returns the original result; with another body it is 409.",
    max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
)
END_USER: Final = HeaderParam(
    name="X-End-User",
    description="Who the client acts for (one API key, many end users); recorded as user_id. "
    "The body's safety_identifier or user wins over it.",
    max_length=512,
)
SESSION_KEY: Final = HeaderParam(
    name="X-Session-Key",
    description="Keep the conversation in this session; send only the new messages.",
    pattern=ID_RE.pattern,
    max_length=128,
    rule=ID_RULE,
)


def after_seq() -> int:
    """Where a stream resumes: `Last-Event-ID`, else `?after=`, else the start."""
    after = AFTER.get()  # checked even when the header wins
    header = LAST_EVENT_ID.get()
    return int(header) if header is not None else after


PREFER: Final = HeaderParam(
    name="Prefer",
    description="RFC 7240 preferences; `respond-async` answers 202 with the run id at once "
    "instead of waiting for the run (not with `stream: true`).",
    max_length=1024,
)
CALLBACK_URL: Final = HeaderParam(
    name="X-Callback-Url",
    description="Deliver the run's outcome to this URL when it settles (a signed webhook).",
    max_length=2048,
)


def prefers_async() -> bool:
    """Whether the `Prefer` header holds `respond-async` (RFC 7240: a comma-separated list of
    preferences, each maybe with a value and `;` parameters)."""
    header = PREFER.get()
    if header is None:
        return False
    for preference in header.split(","):
        token = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
        if token == "respond-async":
            return True
    return False
