"""Traces: a run is a trace whose spans are its model calls, tool calls and approval waits. The
list is the runs catalog's (O(page)); one trace is folded from its run's stream."""

from __future__ import annotations

from typing import cast

from quart import Response

from cuelog.actors import RunRow, Span, trace_id
from cuelog.actors import Trace as RunTrace
from cuelog.http._auth import Routes, caller
from cuelog.http._runs import (
    AGENT,
    FROM,
    LOOP,
    RUN_CURSOR,
    RUNS_LIMIT,
    SESSION,
    STATUS,
    TO,
    USER,
    runs_page,
)
from cuelog.http._schemas import RunStatus, Trace, TraceList, TraceSpan, TraceSummary
from cuelog.http._services import Services, page_json
from cuelog.http._wire import json_response, to_json


def _seconds(us: int | None) -> float | None:
    return None if us is None else us / 1_000_000


def trace_summary(row: RunRow) -> TraceSummary:
    return TraceSummary(
        id=row.id,
        object="trace",
        trace_id=trace_id(row.id),
        name=f"run {row.agent_id}",
        status=cast(RunStatus, row.status),
        session_key=row.session_key,
        agent_id=row.agent_id,
        user_id=row.user_id,
        loop_id=row.loop_id,
        provider=row.provider,
        model=row.model,
        started_at=_seconds(row.started_at),
        ended_at=_seconds(row.ended_at),
        duration_ms=row.duration_ms,
        model_calls=row.steps,
        tool_calls=row.tool_calls,
        usage=row.usage,
        error=row.error,
    )


def span_json(span: Span) -> TraceSpan:
    return TraceSpan(
        span_id=span.span_id,
        parent_id=span.parent_id,
        kind=span.kind,
        name=span.name,
        start=span.start / 1_000_000,
        end=_seconds(span.end),
        duration_ms=span.duration_ms,
        status=span.status,
        error=span.error,
        usage=span.usage,
        attributes=span.attributes,
    )


def trace_json(trace: RunTrace) -> Trace:
    root = trace.root
    return Trace(
        id=trace.run_id,
        object="trace",
        trace_id=trace.trace_id,
        status=cast(RunStatus, trace.status),
        started_at=root.start / 1_000_000,
        ended_at=_seconds(root.end),
        duration_ms=root.duration_ms,
        usage=root.usage,
        spans=[span_json(span) for span in trace.spans],
    )


def register_trace_routes(routes: Routes, services: Services) -> None:
    @routes.add(
        "/v1/traces",
        ["GET"],
        "read",
        answers={200: TraceList},
        params=[RUNS_LIMIT, RUN_CURSOR, AGENT, SESSION, USER, LOOP, STATUS, FROM, TO],
    )
    async def list_traces() -> Response:
        """Runs the key may see as traces, newest first, filtered like /v1/runs, with cursor
        pagination."""
        rows, next_cursor = await runs_page(services)
        return page_json([trace_summary(row) for row in rows], next_cursor)

    @routes.add("/v1/traces/<run_id>", ["GET"], "read", answers={200: Trace})
    async def get_trace(run_id: str) -> Response:
        """One run as a trace: its spans with start and end times and token counts."""
        trace = await services.domain.run_trace(run_id, caller=caller())
        return json_response(to_json(trace_json(trace)))
