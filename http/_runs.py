"""Runs (status, cancel, timeline, resumable event streams) and the firehose of the whole log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

from quart import Response

from cuelog.actors import RunView
from cuelog.http._auth import Routes, caller
from cuelog.http._chat import run_frames
from cuelog.http._params import (
    AFTER,
    EVENTS_LIMIT,
    LAST_EVENT_ID,
    ChoiceParam,
    TextParam,
    after_seq,
)
from cuelog.http._schemas import EventPage, Run, RunStatus, RunTimeline
from cuelog.http._services import Services, event_frame, event_page, scan_events, wants_sse
from cuelog.http._wire import json_response, to_json

FORMAT = ChoiceParam(
    name="format",
    choices=("cuelog", "openai"),
    default="cuelog",
    description="openai: chat.completion.chunk frames",
)
INCLUDE_USAGE = ChoiceParam(name="include_usage", choices=("0", "1", "true", "false"), default="0")
PREFIX = TextParam(name="prefix", description="Only streams whose name starts with this.")


def run_json(view: RunView) -> Run:
    return Run(
        id=view.id,
        object="run",
        status=cast(RunStatus, view.status),
        session_key=view.session_key,
        agent_id=view.agent_id,
        step=view.step,
        content=view.content,
        usage=view.usage,
        error=view.error,
        pending_approvals=view.pending_approvals,
        messages=view.messages,
        events_url=f"/v1/runs/{view.id}/events",
    )


def register_run_routes(routes: Routes, services: Services) -> None:
    domain = services.domain
    log = services.log

    @routes.add("/v1/runs/<run_id>", ["GET"], "read", answers={200: Run})
    async def get_run(run_id: str) -> Response:
        """A run's status, content, usage and pending approvals."""
        return json_response(to_json(run_json(await domain.get_run(run_id, caller=caller()))))

    @routes.add("/v1/runs/<run_id>/cancel", ["POST"], "chat", answers={200: Run})
    async def cancel_run(run_id: str) -> Response:
        """Cancel a run; a finished run is left as it is."""
        await domain.get_run(run_id, caller=caller())
        view = await domain.cancel_run(run_id, caller=caller())
        return json_response(to_json(run_json(view)))

    @routes.add("/v1/runs/<run_id>/timeline", ["GET"], "read", answers={200: RunTimeline})
    async def run_timeline(run_id: str) -> Response:
        """The run's events as a timeline: seq, time, actor, type, a one-line summary, and the
        milliseconds since the previous event."""
        rows = await domain.run_timeline(run_id, caller=caller())
        return json_response(to_json(RunTimeline(run_id=run_id, data=rows)))

    @routes.add(
        "/v1/runs/<run_id>/events",
        ["GET"],
        "read",
        params=[AFTER, LAST_EVENT_ID, FORMAT, INCLUDE_USAGE],
        streams=True,
    )
    async def run_events(run_id: str) -> Response:
        """SSE of a run's events; resume with Last-Event-ID or ?after=; ?format=openai for
        chat.completion.chunk frames. A finished run's stream replays and closes."""
        events = await domain.follow_run(run_id, caller=caller())
        fmt = FORMAT.get()
        include_usage = INCLUDE_USAGE.get() in {"1", "true"}
        frames = run_frames(services, run_id, events, after_seq(), fmt, include_usage=include_usage)
        return services.stream(frames, {"X-Run-Id": run_id})

    @routes.add(
        "/v1/events",
        ["GET"],
        "admin",
        answers={200: EventPage},
        params=[AFTER, LAST_EVENT_ID, EVENTS_LIMIT, PREFIX],
        streams=True,
    )
    async def all_events() -> Response:
        """The whole log in seq order: JSON pages, or SSE that follows new events."""
        after = after_seq()
        prefix = PREFIX.get()
        if wants_sse():

            async def frames() -> AsyncIterator[bytes]:
                async for event in log.subscribe(after, prefix):
                    yield event_frame(event)

            return services.stream(frames())
        limit = EVENTS_LIMIT.get()
        page, scanned_to = await scan_events(
            log, after, limit, lambda e: prefix is None or e.stream.startswith(prefix)
        )
        return event_page(page, limit, scanned_to=scanned_to)
