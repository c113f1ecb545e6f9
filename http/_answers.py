"""Domain and log errors as HTTP answers: the status, code and message of each kind.

Used by the app's error handlers and by streams, whose failures end them with an `error` frame
in the same shape.
"""

from __future__ import annotations

import time

import structlog

from cuelog.actors import (
    BudgetExceeded,
    Conflict,
    IdempotencyKeyReused,
    Invalid,
    ModelError,
    NotFound,
    Unavailable,
)
from cuelog.http._wire import ApiError
from cuelog.runtime import (
    ActorOwnedElsewhere,
    ActorStopped,
    CuelogError,
    IdempotencyConflict,
    LeaseLost,
    LogClosed,
    LogUnavailable,
    MailboxFull,
    PayloadTooLarge,
    StorageFull,
    WrongExpectedVersion,
)

logger = structlog.get_logger("cuelog.http")

# Domain and log errors as HTTP answers: status and, where clients tell them apart, a code.
_ERRORS: list[tuple[type[Exception], int, str | None]] = [
    (BudgetExceeded, 429, "budget_exceeded"),
    (NotFound, 404, None),
    (IdempotencyKeyReused, 409, "idempotency_key_reused"),
    (Conflict, 409, None),
    (Invalid, 400, None),
    (Unavailable, 503, None),
    (IdempotencyConflict, 409, None),
    (WrongExpectedVersion, 409, None),
    (PayloadTooLarge, 413, None),
    (StorageFull, 503, None),
    (LogClosed, 503, None),
    (LogUnavailable, 503, None),
    (ActorStopped, 503, None),
    (ActorOwnedElsewhere, 503, "owned_elsewhere"),
    (LeaseLost, 503, "owned_elsewhere"),
    (MailboxFull, 503, None),
    (ModelError, 502, None),
]


_ELSEWHERE = "another node serves this resource just now; retry after the Retry-After seconds"
# What a 503 from the runtime says: a fixed text per kind (the details, which name actors,
# streams and recovery steps, go to the server log).
_UNAVAILABLE: list[tuple[type[Exception], str]] = [
    (StorageFull, "the log reached its maximum size (log.max_size); the operator must free space"),
    (LogClosed, "the server is shutting down; retry after the Retry-After seconds"),
    (MailboxFull, "the server is busy; retry after the Retry-After seconds"),
    (ActorStopped, "this resource is unavailable just now; retry after the Retry-After seconds"),
    (
        ActorOwnedElsewhere,
        "another node serves this resource just now; retry after the Retry-After seconds",
    ),
    (LeaseLost, "another node serves this resource just now; retry after the Retry-After seconds"),
]


def error_answer(exc: CuelogError) -> ApiError:
    """The HTTP answer to a domain or log error: its status, code and a message fit to show."""
    for cls, status, code in _ERRORS:
        if not isinstance(exc, cls):
            continue
        message = str(exc)
        if status == 503:
            generic = next((text for kind, text in _UNAVAILABLE if isinstance(exc, kind)), None)
            if generic is not None:
                logger.warning("unavailable", error_type=type(exc).__name__, detail=message)
                message = generic
        headers = {"Retry-After": "1"} if status == 503 else None
        if isinstance(exc, BudgetExceeded):
            wait = max(1, exc.reset_at - int(time.time()))
            headers = {"Retry-After": str(wait)}
        param = exc.param if isinstance(exc, Invalid) else None
        return ApiError(status, message, code=code, param=param, headers=headers)
    logger.error("unhandled cuelog error", error_type=type(exc).__name__, detail=str(exc))
    return ApiError(500, "internal error; the server log has the details")
