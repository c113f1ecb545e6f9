"""Sessions: list, read, patch, delete, reset, fork, their events and their state at any seq."""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Response

from cuelog.actors import SessionView
from cuelog.http._auth import Routes, caller
from cuelog.http._bodies import ForkBody, SessionPatchBody
from cuelog.http._params import (
    AFTER,
    CURSOR,
    EVENTS_LIMIT,
    LAST_EVENT_ID,
    IntParam,
    TextParam,
    after_seq,
    limit,
)
from cuelog.http._schemas import Deleted, EventPage, Session, SessionList, SessionStateAt
from cuelog.http._services import (
    Services,
    check_id,
    event_frame,
    event_page,
    page_json,
    wants_sse,
)
from cuelog.http._wire import ApiError, json_response, to_json

SESSIONS_LIMIT = limit(50, 500)
AGENT_FILTER = TextParam(name="agent_id", description="Only this agent's sessions.")
USER_FILTER = TextParam(
    name="user_id", description="Only the sessions begun for this end user (metadata user_id)."
)
AT_SEQ = IntParam(name="at_seq", default=0, description="A log seq; 0 or absent: now.")


def session_json(view: SessionView) -> Session:
    return Session(
        key=view.key,
        object="session",
        agent_id=view.agent_id,
        label=view.label,
        metadata=view.metadata,
        busy_policy=view.busy_policy,
        messages=view.messages,
        current_run=view.current_run,
        queued_runs=view.queued_runs,
        recent_runs=view.recent_runs,
        version=view.version,
        parent_session=view.parent_session,
        parent_seq=view.parent_seq,
    )


def register_session_routes(routes: Routes, services: Services) -> None:
    domain = services.domain

    @routes.add(
        "/v1/sessions",
        ["GET"],
        "read",
        answers={200: SessionList},
        params=[SESSIONS_LIMIT, CURSOR, AGENT_FILTER, USER_FILTER],
    )
    async def list_sessions() -> Response:
        """Sessions the key may see, filtered by agent, with cursor pagination."""
        views, next_cursor = await domain.list_sessions(
            caller=caller(),
            agent_id=AGENT_FILTER.get(),
            user_id=USER_FILTER.get(),
            after=CURSOR.get(),
            limit=SESSIONS_LIMIT.get(),
        )
        return page_json([session_json(v) for v in views], next_cursor)

    @routes.add("/v1/sessions/<key>", ["GET"], "read", answers={200: Session})
    async def get_session(key: str) -> Response:
        """A session: its history, current and queued runs."""
        return json_response(to_json(session_json(await domain.get_session(key, caller=caller()))))

    @routes.add(
        "/v1/sessions/<key>", ["PATCH"], "chat", body=SessionPatchBody, answers={200: Session}
    )
    async def patch_session(key: str) -> Response:
        """Change a session's label, metadata or busy policy."""
        body, _ = await services.read(SessionPatchBody)
        view = await domain.patch_session(
            key,
            caller=caller(),
            label=body.label,
            metadata=body.metadata,
            busy_policy=body.busy_policy,
        )
        return json_response(to_json(session_json(view)))

    @routes.add("/v1/sessions/<key>", ["DELETE"], "chat", answers={200: Deleted})
    async def delete_session(key: str) -> Response:
        """Delete a session (a tombstone event; its events stay in the log)."""
        await domain.delete_session(key, caller=caller())
        return json_response(to_json(Deleted(key=key, object="session", deleted=True)))

    @routes.add("/v1/sessions/<key>/reset", ["POST"], "chat", answers={200: Session})
    async def reset_session(key: str) -> Response:
        """Empty a session's history (by an event; nothing is deleted from the log)."""
        return json_response(
            to_json(session_json(await domain.reset_session(key, caller=caller())))
        )

    @routes.add(
        "/v1/sessions/<key>/events",
        ["GET"],
        "read",
        answers={200: EventPage},
        params=[AFTER, EVENTS_LIMIT, LAST_EVENT_ID],
        streams=True,
    )
    async def session_events(key: str) -> Response:
        """The session's own events: a JSON page, or SSE that follows new ones."""
        after = after_seq()
        if wants_sse():
            events = await domain.follow_session(key, after_seq=after, caller=caller())

            async def frames() -> AsyncIterator[bytes]:
                async for event in events:
                    yield event_frame(event)

            return services.stream(frames())
        limit = EVENTS_LIMIT.get()
        page = await domain.session_events(key, after_seq=after, limit=limit + 1, caller=caller())
        return event_page(page, limit)

    @routes.add(
        "/v1/sessions/<key>/state", ["GET"], "read", answers={200: SessionStateAt}, params=[AT_SEQ]
    )
    async def session_state(key: str) -> Response:
        """The session's folded state as it was at `at_seq` (default: now)."""
        await domain.get_session(key, caller=caller())
        at_seq = AT_SEQ.get() or None
        state = domain.session_state_at(key, at_seq)
        if not state.exists:
            raise ApiError(404, f"session {key!r} did not exist at seq {at_seq}", param="at_seq")
        return json_response(to_json(SessionStateAt(key=key, at_seq=at_seq, state=state)))

    @routes.add("/v1/sessions/<key>/fork", ["POST"], "chat", body=ForkBody, answers={201: Session})
    async def fork_session(key: str) -> Response:
        """A new session with this one's history at `at_seq`; its first event names the parent
        session, seq and hash. The two continue independently."""
        body, _ = await services.read(ForkBody)
        # Access first: for a session the caller may not see, every at_seq answers the same 404.
        await domain.get_session(key, caller=caller())
        if body.agent_id is not None:
            await domain.get_agent(check_id("agent_id", body.agent_id))
        if domain.session_state_at(key, body.at_seq).exists is False:
            raise ApiError(
                404, f"session {key!r} did not exist at seq {body.at_seq}", param="at_seq"
            )
        view = await domain.fork_session(key, body.at_seq, agent_id=body.agent_id, caller=caller())
        return json_response(to_json(session_json(view)), 201)
