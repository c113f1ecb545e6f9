"""`Idempotency-Key`: the first request with a key claims it in the log; repeats attach to its run.

The claim is an append with expected version 0 to `idem:<sha256(scope, key)>`, so of many
concurrent requests exactly one wins, whatever process or retry it comes from. A repeat with the
same request gets the original run; with another request it is refused.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from cuelog.actors._errors import IdempotencyKeyReused, Invalid
from cuelog.actors._events import DOMAIN_CODEC, RequestClaimed
from cuelog.actors._names import idempotency_stream
from cuelog.runtime import NO_STREAM, EventLog, WrongExpectedVersion

MAX_KEY_LENGTH: Final = 255


class Claim(msgspec.Struct, frozen=True):
    """The run and session a key stands for; `repeated` when another request claimed it first."""

    run_id: str
    session_key: str
    repeated: bool


def request_digest(*parts: bytes) -> str:
    """What a claim compares: the sha256 of the request's bytes."""
    return hashlib.sha256(b"".join(parts)).hexdigest()


async def claim_request(
    log: EventLog,
    *,
    scope: str,
    key: str,
    route: str,
    digest: str,
    run_id: str,
    session_key: str,
) -> Claim:
    """Claim `key` for this request, or return the run of the request that claimed it first."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Invalid(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters")
    stream = idempotency_stream(scope, key)
    event = RequestClaimed(body_digest=digest, route=route, run_id=run_id, session_key=session_key)
    try:
        await log.append(stream, [event], expected_version=NO_STREAM)
    except WrongExpectedVersion:
        pass
    else:
        return Claim(run_id, session_key, repeated=False)
    first = log.read_stream(stream, 1, limit=1)[0]
    original = DOMAIN_CODEC.decode(first.type, first.data)
    assert isinstance(original, RequestClaimed)
    if original.body_digest != digest or original.route != route:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body"
        )
    return Claim(original.run_id, original.session_key, repeated=True)
