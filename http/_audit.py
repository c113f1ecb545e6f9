"""The audit surface: the log's head and anchor, verification with progress, and the activity
view (who did what, filtered by actor, type, stream and time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Response, current_app, request

from cuelog.http._auth import Routes
from cuelog.http._params import EVENTS_LIMIT, IntParam, TextParam
from cuelog.http._schemas import Anchored, AuditHead, EventPage
from cuelog.http._services import Services, event_page, scan_events
from cuelog.http._wire import ApiError, json_response, sse_frame, sse_response, to_json
from cuelog.runtime import RecordedEvent, VerifyReport

MAX_UNIX_SECONDS = (1 << 62) // 1_000_000


AUDIT_CURSOR = IntParam(name="cursor", default=0, description="The last seq of the previous page.")
ACTOR = TextParam(name="actor", description="The key id that caused the event.")
TYPES = TextParam(name="type", description="Event types, comma-separated.")
STREAM_PREFIX = TextParam(name="stream_prefix", description="Only streams starting with this.")
# Unix seconds, bounded so that microseconds still fit the log's 63-bit timestamps.
SINCE = IntParam(name="since", default=0, hi=MAX_UNIX_SECONDS, description="Unix seconds.")
UNTIL = IntParam(name="until", default=0, hi=MAX_UNIX_SECONDS, description="Unix seconds.")


def register_audit_routes(routes: Routes, services: Services) -> None:
    log = services.log
    anchor_key = services.anchor_key

    @routes.add("/v1/audit/head", ["GET"], "read", answers={200: AuditHead})
    async def audit_head() -> Response:
        """The log's head seq and hash, and the last anchor's seal."""
        head = log.head()
        anchor = log.stored_anchor()
        answer = AuditHead(
            seq=head.seq,
            hash=head.hash.hex(),
            anchored_seq=anchor.seq if anchor else None,
            anchored_hash=anchor.hash.hex() if anchor else None,
            anchored_at=anchor.ts // 1_000_000 if anchor else None,
            mac=anchor.mac.hex() if anchor else None,
        )
        return json_response(to_json(answer))

    @routes.add("/v1/audit/anchor", ["POST"], "admin", answers={200: Anchored})
    async def audit_anchor() -> Response:
        """Seal the head with the anchor key (log.anchor_key_file); keep the answer elsewhere."""
        if anchor_key is None:
            raise ApiError(
                409,
                "no anchor key: set log.anchor_key_file (outside the data dir)",
                code="no_anchor_key",
            )
        sealed = await log.anchor(anchor_key)
        return json_response(to_json(Anchored.of(sealed)))

    @routes.add("/v1/audit/verify", ["POST"], "admin", answers={200: VerifyReport}, streams=True)
    async def audit_verify() -> Response:
        """Verify the chain and indexes (and the anchor when its key is configured); with
        Accept: text/event-stream, progress events stream until the report."""
        if "text/event-stream" not in request.headers.get("accept", ""):
            report = await log.verify(anchor_key=anchor_key)
            return json_response(to_json(report))

        progress = [0, log.head().seq]
        result: list[Any] = []
        finished = trio.Event()

        def on_progress(done: int, total: int) -> None:
            progress[0], progress[1] = done, total

        async def run() -> None:
            try:
                result.append(await log.verify(anchor_key=anchor_key, progress=on_progress))
            finally:
                finished.set()

        # The walk runs in the app's nursery; the stream only reports on it, so a client that
        # leaves early stops nothing but its own stream.
        current_app.nursery.start_soon(run)  # type: ignore[attr-defined]

        async def frames() -> AsyncIterator[bytes]:
            while not finished.is_set():
                yield sse_frame(
                    to_json({"checked": progress[0], "total": progress[1]}), event="progress"
                )
                with trio.move_on_after(0.25):
                    await finished.wait()
            if result:
                yield sse_frame(to_json(result[0]), event="report")

        return sse_response(frames())

    @routes.add(
        "/v1/audit/events",
        ["GET"],
        "admin",
        answers={200: EventPage},
        params=[AUDIT_CURSOR, EVENTS_LIMIT, ACTOR, TYPES, STREAM_PREFIX, SINCE, UNTIL],
    )
    async def audit_events() -> Response:
        """The activity view: filter by actor, type, stream prefix and time; cursor = seq."""
        after = AUDIT_CURSOR.get()
        limit = EVENTS_LIMIT.get()
        actor_filter = ACTOR.get()
        types = set(filter(None, (TYPES.get() or "").split(",")))
        prefix = STREAM_PREFIX.get()
        since = SINCE.get() * 1_000_000
        until = UNTIL.get() * 1_000_000 or None

        def keep(event: RecordedEvent) -> bool:
            return (
                (actor_filter is None or event.actor == actor_filter)
                and (not types or event.type in types)
                and (prefix is None or event.stream.startswith(prefix))
                and event.ts >= since
                and (until is None or event.ts <= until)
            )

        out, scanned_to = await scan_events(log, after, limit, keep)
        return event_page(out, limit, scanned_to=scanned_to)
