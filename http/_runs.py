"""Runs (status, cancel, timeline, resumable event streams) and the firehose of the whole log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

from quart import Response

from cuelog.actors import NotFound, RunFilter, RunRow, RunView
from cuelog.http._auth import Routes, caller
from cuelog.http._chat import run_frames
from cuelog.http._params import (
    AFTER,
    EVENTS_LIMIT,
    LAST_EVENT_ID,
    ChoiceParam,
    IntParam,
    TextParam,
    TimeParam,
    after_seq,
    limit,
)
from cuelog.http._schemas import EventPage, Run, RunList, RunStatus, RunSummary, RunTimeline
from cuelog.http._services import (
    Services,
    event_frame,
    event_page,
    page_json,
    scan_events,
    wants_sse,
)
from cuelog.http._wire import json_response, to_json

FORMAT = ChoiceParam(
    name="format",
    choices=("cuelog", "openai"),
    default="cuelog",
    description="openai: chat.completion.chunk frames",
)
INCLUDE_USAGE = ChoiceParam(name="include_usage", choices=("0", "1", "true", "false"), default="0")
PREFIX = TextParam(name="prefix", description="Only streams whose name starts with this.")
RUNS_LIMIT = limit(50, 500)
# A runs page's cursor is the log seq that created the last run it showed.
RUN_CURSOR = IntParam(
    name="cursor", default=0, lo=0, description="From the previous page's next_cursor."
)
AGENT = TextParam(name="agent", description="Only this agent's runs.")
SESSION = TextParam(name="session", description="Only this session's runs.")
USER = TextParam(name="user", description="Only the runs for this end user (user_id).")
LOOP = TextParam(name="loop", description="Only the runs this loop fired.")
STATUS = ChoiceParam(
    name="status",
    choices=("any", "queued", "running", "waiting_approval", "completed", "failed", "cancelled"),
    default="any",
)
FROM = TimeParam(name="from", description="Only runs created at or after this time.")
TO = TimeParam(name="to", description="Only runs created before this time.")


def _seconds(us: int | None) -> float | None:
    return None if us is None else us / 1_000_000


def run_summary(row: RunRow) -> RunSummary:
    return RunSummary(
        id=row.id,
        object="run",
        status=cast(RunStatus, row.status),
        session_key=row.session_key,
        agent_id=row.agent_id,
        user_id=row.user_id,
        loop_id=row.loop_id,
        provider=row.provider,
        model=row.model,
        created_at=row.created_at / 1_000_000,
        started_at=_seconds(row.started_at),
        ended_at=_seconds(row.ended_at),
        duration_ms=row.duration_ms,
        steps=row.steps,
        tool_call_count=row.tool_calls,
        usage=row.usage,
        finish_reason=row.finish_reason,
        error=row.error,
    )


async def runs_page(services: Services) -> tuple[list[RunRow], str | None]:
    """The catalog's page of runs the key may see, as the query's filters, cursor and limit
    ask (the parameters of `GET /v1/runs`), and the next page's cursor."""
    status = STATUS.get()
    filters = RunFilter(
        agent_id=AGENT.get(),
        session_key=SESSION.get(),
        user_id=USER.get(),
        loop_id=LOOP.get(),
        status=None if status == "any" else status,
        since=FROM.get(),
        until=TO.get(),
    )
    rows, next_seq = await services.models().list_runs(
        filters, caller=caller(), after=RUN_CURSOR.get() or None, limit=RUNS_LIMIT.get()
    )
    return rows, None if next_seq is None else str(next_seq)


def run_json(view: RunView, row: RunRow | None = None) -> Run:
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
        created_at=None if row is None else row.created_at // 1_000_000,
        duration_ms=None if row is None else row.duration_ms,
        steps=None if row is None else row.steps,
        tool_call_count=None if row is None else row.tool_calls,
    )


def register_run_routes(routes: Routes, services: Services) -> None:
    domain = services.domain
    log = services.log

    @routes.add(
        "/v1/runs",
        ["GET"],
        "read",
        answers={200: RunList},
        params=[RUNS_LIMIT, RUN_CURSOR, AGENT, SESSION, USER, LOOP, STATUS, FROM, TO],
    )
    async def list_runs() -> Response:
        """Runs the key may see, newest first, filtered, with cursor pagination."""
        rows, next_cursor = await runs_page(services)
        return page_json([run_summary(row) for row in rows], next_cursor)

    @routes.add("/v1/runs/<run_id>", ["GET"], "read", answers={200: Run})
    async def get_run(run_id: str) -> Response:
        """A run's status, content, usage and pending approvals, with its duration, steps and
        tool calls from the runs catalog."""
        try:
            view = await domain.get_run(run_id, caller=caller())
            row = await services.models().row_of(run_id)
        except NotFound:
            # Cluster mode: a run queued through another process is found through its session
            # (the catalog names it); a session owned elsewhere forwards the request there.
            row = await services.models().row_of(run_id) if services.forwarder else None
            if row is None or row.status != "queued" or not row.session_key:
                raise
            view = await domain.get_run(run_id, caller=caller(), session_key=row.session_key)
        return json_response(to_json(run_json(view, row)))

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
