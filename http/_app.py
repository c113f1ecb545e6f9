"""The Quart-Trio application: requests become actor messages; results are read from the log."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal, cast

import msgspec
import structlog
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from cuelog.actors._agent import AgentView
from cuelog.actors._errors import Conflict, Invalid, ModelError, NotFound, Unavailable
from cuelog.actors._events import (
    DOMAIN_CODEC,
    AgentSpec,
    ApprovalPolicy,
    AssistantDelta,
    BusyPolicy,
    RunCompleted,
    RunStarted,
)
from cuelog.actors._messages import ChatMessage
from cuelog.actors._run import TERMINAL_EVENTS, RunView
from cuelog.actors._runtime import AgentRuntime, random_id
from cuelog.actors._session import TERMINAL, Sent, SessionView
from cuelog.http._auth import PUBLIC, Authenticator, Principal, Routes, caller, principal
from cuelog.http._config import Settings
from cuelog.http._errors import error_body
from cuelog.http._idempotency import body_digest, claim
from cuelog.http._keys import KeyStore
from cuelog.http._limits import StreamSlots, TokenBuckets, retry_after
from cuelog.http._metrics import Metrics
from cuelog.http._openai import (
    DONE_FRAME,
    ChatCompletionRequest,
    ResponsesRequest,
    chat_chunk_frames,
    chat_completion,
    chat_messages,
    new_user_messages,
    response_object,
    responses_messages,
)
from cuelog.http._operator import register_operator_routes
from cuelog.http._schemas import (
    Agent,
    EventOut,
    Model,
    ModelList,
    Run,
    RunStatus,
    Session,
    WakeAccepted,
    WakeResult,
)
from cuelog.http._timeline import summary
from cuelog.http._wire import (
    ApiError,
    json_response,
    query_int,
    read_body,
    sse_frame,
    sse_response,
    to_json,
)
from cuelog.runtime import (
    ActorStopped,
    CuelogError,
    IdempotencyConflict,
    LmdbEventLog,
    LogClosed,
    MailboxFull,
    PayloadTooLarge,
    RecordedEvent,
    StorageFull,
    WrongExpectedVersion,
)

logger = structlog.get_logger("cuelog.http")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_HEALTH_OK = to_json({"status": "ok"})
_MAX_SEQ = 1 << 62
_generic = msgspec.msgpack.Decoder()


class Services:
    """What the routes use: the runtime, the log, settings, keys and limits."""

    def __init__(
        self,
        runtime: AgentRuntime,
        log: LmdbEventLog,
        settings: Settings,
        auth: Authenticator,
        keys: KeyStore,
        anchor_key: bytes | None = None,
    ) -> None:
        self.runtime = runtime
        self.log = log
        self.settings = settings
        self.auth = auth
        self.keys = keys
        self.anchor_key = anchor_key
        self.started = time.monotonic()
        self.stopping = False
        server = settings.server
        self.key_buckets = TokenBuckets(server.rate_limit, server.rate_burst)
        self.ip_buckets = TokenBuckets(server.ip_rate_limit, server.rate_burst)
        self.streams = StreamSlots(server.max_streams_per_key)
        self.metrics = Metrics(self)


# -- bodies --------------------------------------------------------------------------------------


class AgentPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None
    provider: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    tools: list[str] | None = None
    approval: ApprovalPolicy | None = None
    tool_approval: dict[str, ApprovalPolicy] | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None


class AgentBody(AgentPatch, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A new agent: its id and any AgentPatch fields (the rest take AgentSpec defaults)."""

    id: str


class WakeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    message: str
    session_key: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] | None = None
    mode: Literal["sync", "async"] = "sync"


class SessionPatchBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    label: str | None = None
    metadata: dict[str, Any] | None = None
    busy_policy: BusyPolicy | None = None


class ForkBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    at_seq: int
    agent_id: str | None = None


def event_json(event: RecordedEvent) -> bytes:
    try:
        data = _generic.decode(event.data)
    except msgspec.DecodeError:
        data = None
    return to_json(
        EventOut(
            event.seq,
            event.stream,
            event.version,
            event.type,
            event.ts,
            event.actor,
            event.causation,
            event.correlation,
            data,
            event.hash.hex(),
            event.prev.hex(),
        )
    )


def _check_id(kind: str, value: str) -> str:
    if not _ID_RE.match(value):
        raise ApiError(
            400,
            f"{kind} must be 1-128 characters of letters, digits and . _ : @ - "
            "(starting with a letter or digit)",
            param=kind,
        )
    return value


def _after_seq() -> int:
    header = request.headers.get("last-event-id")
    if header:
        if not header.isdigit() or int(header) > _MAX_SEQ:
            raise ApiError(400, "Last-Event-ID must be a log seq (a non-negative integer)")
        return int(header)
    return query_int("after", 0, hi=_MAX_SEQ)


def _wants_sse() -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def _agent_json(view: AgentView) -> Agent:
    return Agent(
        id=view.id, object="agent", version=view.version, **msgspec.structs.asdict(view.spec)
    )


def _model(view: AgentView) -> Model:
    return Model(id=view.id, object="model", created=0, owned_by="cuelog")


def _session_json(view: SessionView) -> Session:
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


def _run_json(view: RunView) -> Run:
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


_ERRORS: list[tuple[type[Exception], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (Invalid, 400),
    (Unavailable, 503),
    (IdempotencyConflict, 409),
    (WrongExpectedVersion, 409),
    (PayloadTooLarge, 413),
    (StorageFull, 503),
    (LogClosed, 503),
    (ActorStopped, 503),
    (MailboxFull, 503),
    (ModelError, 502),
]


def create_app(services: Services | None = None) -> QuartTrio:
    """Build the HTTP facade. Without services only the health route is served."""
    app = QuartTrio(__name__, root_path=str(Path(__file__).parent))
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = (
        services.settings.server.max_body_bytes if services is not None else 1 << 20
    )

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "no such route; see GET /v1/openapi.json for the API",
            405: "method not allowed on this route",
            413: "the request body is over the size limit",
        }
        headers: dict[str, str] = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        message = messages.get(status, exc.description or exc.name)
        if request.content_length or request.headers.get("transfer-encoding"):
            headers["Connection"] = "close"  # the body was not read: end the connection
        return json_response(error_body(status, message), status, headers)

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return exc.response()

    @app.errorhandler(CuelogError)
    async def domain_error(exc: CuelogError) -> Response:
        for cls, status in _ERRORS:
            if isinstance(exc, cls):
                headers = {"Retry-After": "1"} if status == 503 else None
                return ApiError(status, str(exc), headers=headers).response()
        logger.error("unhandled cuelog error", error=repr(exc))
        return ApiError(500, "internal error; the server log has the details").response()

    auth = services.auth if services is not None else Authenticator(None)
    routes = Routes(app, auth, limit=_rate_limit(services) if services is not None else None)
    app.extensions["cuelog.routes"] = routes
    if services is not None:
        services.metrics.install(app)

        @app.after_request
        async def close_when_stopping(response: Response) -> Response:
            if services.stopping:
                response.headers["Connection"] = "close"  # let clients move on during shutdown
            return response

    @routes.add("/health", ["GET"], PUBLIC)
    @routes.add("/v1/health", ["GET"], PUBLIC)
    async def health() -> Response:
        """Liveness; with a valid key also version, log head, live actors and uptime."""
        who = principal()
        if services is None or who is None or not auth.enabled:
            return json_response(_HEALTH_OK)
        stats = services.runtime.system.statistics()
        return json_response(
            to_json(
                {
                    "status": "ok",
                    "version": package_version("cuelog"),
                    "head_seq": services.log.head().seq,
                    "live_actors": stats.live_actors,
                    "uptime_seconds": round(time.monotonic() - services.started, 3),
                    "emergency_stop": services.runtime.registry.stopped,
                }
            )
        )

    if services is not None:
        read = _register_api(routes, services)
        register_operator_routes(
            routes, services.runtime, services.log, services.keys, read, services.anchor_key
        )

        @routes.add("/metrics", ["GET"], "read")
        async def metrics() -> Response:
            """Prometheus text: requests, latency, appends, group commits, actors, runs, SSE."""
            body, content_type = services.metrics.render()
            return Response(body, content_type=content_type)

        from cuelog.http._console import register_console_routes

        register_console_routes(app)

        from cuelog.http._openapi import register_docs_routes

        register_docs_routes(routes, app)

    return app


def _rate_limit(services: Services) -> Callable[[Principal | None], None]:
    def check(who: Principal | None) -> None:
        address = request.remote_addr or "unknown"
        wait = services.ip_buckets.take(f"ip:{address}")
        if wait is None and who is not None and who.key_id is not None:
            wait = services.key_buckets.take(f"key:{who.key_id}")
        if wait is not None:
            services.metrics.rate_limited.inc()
            raise ApiError(
                429,
                "too many requests; slow down and retry after the Retry-After seconds",
                headers={"Retry-After": retry_after(wait)},
            )

    return check


def _register_api(routes: Routes, services: Services) -> Callable[[type[Any]], Any]:
    runtime = services.runtime
    log = services.log
    settings = services.settings

    async def read(cls: type[Any]) -> tuple[Any, bytes]:
        return await read_body(cls, max_bytes=settings.server.max_body_bytes)

    async def start_run(
        route: str,
        raw: bytes,
        agent_id: str,
        messages: list[ChatMessage],
        session_key: str | None,
        metadata: dict[str, Any] | None = None,
    ) -> Sent:
        who = principal()
        if not _ID_RE.match(agent_id):
            raise ApiError(404, f"no agent {agent_id!r}", param="model")
        await runtime.get_agent(agent_id)  # before an Idempotency-Key is claimed in the log
        run_id = random_id("run")
        key = session_key or random_id("sess")
        idem = request.headers.get("idempotency-key")
        if idem is not None:
            claimed = await claim(
                log,
                scope=who.key_id or "local",
                key=idem,
                route=route,
                digest=body_digest(raw + (session_key or "").encode()),
                run_id=run_id,
                session_key=key,
            )
            run_id, key = claimed.run_id, claimed.session_key
        return await runtime.send(
            agent_id,
            messages,
            session_key=key,
            caller=who.caller(),
            metadata=metadata,
            run_id=run_id,
        )

    async def wait_for(run_id: str) -> RunView:
        """The run's final view; a client that leaves with `X-Cuelog-On-Disconnect: cancel`
        cancels the run."""
        try:
            return await _wait_for(run_id)
        except trio.Cancelled:  # the client went away
            if cancel_on_disconnect():
                await cancel_quietly(run_id)
            raise

    async def _wait_for(run_id: str) -> RunView:
        with trio.move_on_after(settings.server.request_timeout):
            view = await runtime.wait_run(run_id, caller=caller())
            if view.status not in TERMINAL:
                raise ApiError(
                    503,
                    f"the server is shutting down; run {run_id} goes on after the restart: "
                    f"follow /v1/runs/{run_id}/events",
                    headers={"Retry-After": "5"},
                )
            return view
        raise ApiError(
            504,
            f"run {run_id} did not finish within {settings.server.request_timeout:g} s; "
            f"follow it at /v1/runs/{run_id}/events",
            code="timeout",
        )

    def cancel_on_disconnect() -> bool:
        return request.headers.get("x-cuelog-on-disconnect", "").lower() == "cancel"

    async def cancel_quietly(run_id: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5), contextlib.suppress(CuelogError):
            await runtime.cancel_run(run_id, reason="client disconnected")

    def stream(frames: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> Response:
        """An SSE response counted against the key's stream cap while it is open."""
        slot = principal().key_id or "local"
        if not services.streams.acquire(slot):
            raise ApiError(
                429,
                f"this key already has {services.streams.per_key} streams open; close one",
                headers={"Retry-After": "1"},
            )

        async def counted() -> AsyncIterator[bytes]:
            try:
                async for frame in frames:
                    yield frame
                if services.stopping:
                    yield sse_frame(to_json({"reason": "server shutting down"}), event="shutdown")
            finally:
                services.streams.release(slot)

        return sse_response(counted(), headers)

    def run_headers(sent: Sent) -> dict[str, str]:
        return {"X-Run-Id": sent.run_id, "X-Session-Key": sent.session_key}

    async def run_frames(
        run_id: str,
        after_seq: int,
        fmt: str,
        *,
        include_usage: bool = False,
        cancel_on_close: bool = False,
    ) -> AsyncIterator[bytes]:
        """A run's events as SSE frames from `after_seq`; ends after the run's last event."""
        stream = f"run:{run_id}"
        model, created = "", 0
        finished = False
        try:
            if fmt == "openai":
                first = log.read_stream(stream, 1, limit=1)
                if first:
                    started = _run_started(first[0])
                    model, created = started.agent_id, first[0].ts // 1_000_000
            async for event in log.subscribe_stream(stream):
                if event.type == "RunStarted" and not model:
                    started = _run_started(event)
                    model, created = started.agent_id, event.ts // 1_000_000
                terminal = event.type in TERMINAL_EVENTS
                if event.seq > after_seq:
                    if fmt == "openai":
                        for frame in chat_chunk_frames(
                            event, run_id, model, created, include_usage
                        ):
                            yield frame
                    else:
                        yield sse_frame(event_json(event), event=event.type, id=event.seq)
                if terminal:
                    finished = True
                    if fmt == "openai":
                        yield DONE_FRAME
                    return
        finally:
            if cancel_on_close and not finished:
                await cancel_quietly(run_id)

    # -- models and agents ---------------------------------------------------------------------

    @routes.add("/v1/models", ["GET"], "read")
    async def list_models() -> Response:
        """Agents as models: `model` in a chat request names the agent."""
        agents = await runtime.list_agents(limit=1000)
        return json_response(to_json(ModelList(object="list", data=[_model(a) for a in agents])))

    @routes.add("/v1/models/<model_id>", ["GET"], "read")
    async def get_model(model_id: str) -> Response:
        """One agent as a model."""
        return json_response(to_json(_model(await runtime.get_agent(model_id))))

    @routes.add("/v1/agents", ["GET"], "read")
    async def list_agents() -> Response:
        """Agents, in id order, with cursor pagination."""
        limit = query_int("limit", 50, lo=1, hi=500)
        after = request.args.get("cursor") or None
        agents = await runtime.list_agents(after=after, limit=limit + 1)
        more = len(agents) > limit
        agents = agents[:limit]
        next_cursor = agents[-1].id if more and agents else None
        return json_response(
            to_json({"data": [_agent_json(a) for a in agents], "next_cursor": next_cursor})
        )

    @routes.add("/v1/agents", ["POST"], "admin")
    async def create_agent() -> Response:
        """Create an agent."""
        body, _ = await read(AgentBody)
        agent_id = _check_id("id", body.id)
        fields = {
            k: v for k, v in msgspec.structs.asdict(body).items() if v is not None and k != "id"
        }
        spec = msgspec.convert({"name": agent_id, **fields}, AgentSpec)
        view = await runtime.create_agent(agent_id, spec)
        return json_response(to_json(_agent_json(view)), 201)

    @routes.add("/v1/agents/<agent_id>", ["GET"], "read")
    async def get_agent(agent_id: str) -> Response:
        """One agent."""
        return json_response(to_json(_agent_json(await runtime.get_agent(agent_id))))

    @routes.add("/v1/agents/<agent_id>", ["PATCH"], "admin")
    async def patch_agent(agent_id: str) -> Response:
        """Change some of an agent's fields."""
        body, _ = await read(AgentPatch)
        current = await runtime.get_agent(agent_id)
        changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
        spec = msgspec.structs.replace(current.spec, **changes)
        return json_response(to_json(_agent_json(await runtime.update_agent(agent_id, spec))))

    @routes.add("/v1/agents/<agent_id>", ["DELETE"], "admin")
    async def delete_agent(agent_id: str) -> Response:
        """Delete an agent (its sessions stay readable)."""
        await runtime.delete_agent(agent_id)
        return json_response(to_json({"id": agent_id, "object": "agent", "deleted": True}))

    # -- chat ----------------------------------------------------------------------------------

    @routes.add("/v1/chat/completions", ["POST"], "chat")
    async def chat_completions() -> Response:
        """OpenAI chat completions, streaming or not; `model` names the agent."""
        body, raw = await read(ChatCompletionRequest)
        if body.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported", param="n")
        messages = chat_messages(body.messages)
        session_key = request.headers.get("x-session-key")
        if session_key is not None:
            _check_id("X-Session-Key", session_key)
            messages = new_user_messages(messages)
        elif messages[-1].role != "user":
            raise ApiError(400, "the last message must be from the user", param="messages")
        sent = await start_run("chat", raw, body.model, messages, session_key)
        cancel = cancel_on_disconnect()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            frames = run_frames(
                sent.run_id, 0, "openai", include_usage=include_usage, cancel_on_close=cancel
            )
            return stream(frames, run_headers(sent))
        view = await wait_for(sent.run_id)
        _raise_for_run(view)
        created = int(time.time())
        return json_response(
            chat_completion(view.id, body.model, created, view.content, view.usage),
            headers=run_headers(sent),
        )

    @routes.add("/v1/responses", ["POST"], "chat")
    async def responses() -> Response:
        """The OpenAI Responses API subset: text in, text out, streaming or not."""
        body, raw = await read(ResponsesRequest)
        messages = responses_messages(body)
        sent = await start_run("responses", raw, body.model, messages, None)
        created = int(time.time())
        if body.stream:
            return stream(
                _response_events(log, sent.run_id, body.model, created), run_headers(sent)
            )
        view = await wait_for(sent.run_id)
        _raise_for_run(view)
        return json_response(
            to_json(
                response_object(view.id, body.model, created, "completed", view.content, view.usage)
            ),
            headers=run_headers(sent),
        )

    # -- wake ----------------------------------------------------------------------------------

    @routes.add("/v1/agents/<agent_id>/wake", ["POST"], "wake")
    async def wake(agent_id: str) -> Response:
        """Wake an agent with a message: sync waits for the answer, async answers 202 at once."""
        body, raw = await read(WakeBody)
        if body.session_key is not None:
            _check_id("session_key", body.session_key)
        metadata = dict(body.metadata or {})
        if body.user_id is not None:
            metadata["user_id"] = body.user_id
        sent = await start_run(
            f"wake:{agent_id}",
            raw,
            agent_id,
            [ChatMessage(role="user", content=body.message)],
            body.session_key,
            metadata,
        )
        if body.mode == "async":
            view = await runtime.get_run(sent.run_id, caller=caller())
            accepted = WakeAccepted(
                run_id=sent.run_id,
                session_key=sent.session_key,
                status=cast(RunStatus, view.status),
                events_url=f"/v1/runs/{sent.run_id}/events",
            )
            return json_response(to_json(accepted), 202, run_headers(sent))
        view = await wait_for(sent.run_id)
        result = WakeResult(
            content=view.content,
            run_id=sent.run_id,
            session_key=sent.session_key,
            status=cast(RunStatus, view.status),
            usage=view.usage,
            error=view.error,
        )
        return json_response(to_json(result), headers=run_headers(sent))

    # -- sessions ------------------------------------------------------------------------------

    @routes.add("/v1/sessions", ["GET"], "read")
    async def list_sessions() -> Response:
        """Sessions the key may see, filtered by agent, with cursor pagination."""
        limit = query_int("limit", 50, lo=1, hi=500)
        views, next_cursor = await runtime.list_sessions(
            caller=caller(),
            agent_id=request.args.get("agent_id") or None,
            after=request.args.get("cursor") or None,
            limit=limit,
        )
        return json_response(
            to_json({"data": [_session_json(v) for v in views], "next_cursor": next_cursor})
        )

    @routes.add("/v1/sessions/<key>", ["GET"], "read")
    async def get_session(key: str) -> Response:
        """A session: its history, current and queued runs."""
        return json_response(
            to_json(_session_json(await runtime.get_session(key, caller=caller())))
        )

    @routes.add("/v1/sessions/<key>", ["PATCH"], "chat")
    async def patch_session(key: str) -> Response:
        """Change a session's label, metadata or busy policy."""
        body, _ = await read(SessionPatchBody)
        view = await runtime.patch_session(
            key,
            caller=caller(),
            label=body.label,
            metadata=body.metadata,
            busy_policy=body.busy_policy,
        )
        return json_response(to_json(_session_json(view)))

    @routes.add("/v1/sessions/<key>", ["DELETE"], "chat")
    async def delete_session(key: str) -> Response:
        """Delete a session (a tombstone event; its events stay in the log)."""
        await runtime.delete_session(key, caller=caller())
        return json_response(to_json({"key": key, "object": "session", "deleted": True}))

    @routes.add("/v1/sessions/<key>/reset", ["POST"], "chat")
    async def reset_session(key: str) -> Response:
        """Empty a session's history (by an event; nothing is deleted from the log)."""
        return json_response(
            to_json(_session_json(await runtime.reset_session(key, caller=caller())))
        )

    @routes.add("/v1/sessions/<key>/events", ["GET"], "read")
    async def session_events(key: str) -> Response:
        """The session's own events: a JSON page, or SSE that follows new ones."""
        await runtime.get_session(key, caller=caller())
        stream_name = f"session:{key}"
        after = _after_seq()
        if _wants_sse():

            async def frames() -> AsyncIterator[bytes]:
                async for event in log.subscribe_stream(stream_name):
                    if event.seq > after:
                        yield sse_frame(event_json(event), event=event.type, id=event.seq)

            return stream(frames())
        limit = query_int("limit", 100, lo=1, hi=1000)
        page = [e for e in log.read_stream(stream_name) if e.seq > after][: limit + 1]
        return _page(page, limit)

    @routes.add("/v1/sessions/<key>/state", ["GET"], "read")
    async def session_state(key: str) -> Response:
        """The session's folded state as it was at `at_seq` (default: now)."""
        await runtime.get_session(key, caller=caller())
        at_seq = query_int("at_seq", 0, lo=0) or None
        state = runtime.session_state_at(key, at_seq)
        if not state.exists:
            raise ApiError(404, f"session {key!r} did not exist at seq {at_seq}", param="at_seq")
        return json_response(to_json({"key": key, "at_seq": at_seq, "state": state}))

    @routes.add("/v1/sessions/<key>/fork", ["POST"], "chat")
    async def fork_session(key: str) -> Response:
        """A new session with this one's history at `at_seq`; its first event names the parent
        session, seq and hash. The two continue independently."""
        body, _ = await read(ForkBody)
        if body.agent_id is not None:
            await runtime.get_agent(_check_id("agent_id", body.agent_id))
        if runtime.session_state_at(key, body.at_seq).exists is False:
            raise ApiError(
                404, f"session {key!r} did not exist at seq {body.at_seq}", param="at_seq"
            )
        view = await runtime.fork_session(key, body.at_seq, agent_id=body.agent_id, caller=caller())
        return json_response(to_json(_session_json(view)), 201)

    # -- runs ----------------------------------------------------------------------------------

    @routes.add("/v1/runs/<run_id>", ["GET"], "read")
    async def get_run(run_id: str) -> Response:
        """A run's status, content, usage and pending approvals."""
        return json_response(to_json(_run_json(await runtime.get_run(run_id, caller=caller()))))

    @routes.add("/v1/runs/<run_id>/cancel", ["POST"], "chat")
    async def cancel_run(run_id: str) -> Response:
        """Cancel a run; a finished run is left as it is."""
        await runtime.get_run(run_id, caller=caller())
        view = await runtime.cancel_run(run_id, caller=caller())
        return json_response(to_json(_run_json(view)))

    @routes.add("/v1/runs/<run_id>/timeline", ["GET"], "read")
    async def run_timeline(run_id: str) -> Response:
        """The run's events as a timeline: seq, time, actor, type, a one-line summary, and the
        milliseconds since the previous event."""
        await runtime.get_run(run_id, caller=caller())
        rows = []
        previous: int | None = None
        for event in log.read_stream(f"run:{run_id}"):
            rows.append(
                {
                    "seq": event.seq,
                    "ts": event.ts,
                    "actor": event.actor,
                    "type": event.type,
                    "summary": summary(event),
                    "since_previous_ms": None
                    if previous is None
                    else round((event.ts - previous) / 1000, 3),
                }
            )
            previous = event.ts
        return json_response(to_json({"run_id": run_id, "data": rows}))

    @routes.add("/v1/runs/<run_id>/events", ["GET"], "read")
    async def run_events(run_id: str) -> Response:
        """SSE of a run's events; resume with Last-Event-ID or ?after=; ?format=openai for
        chat.completion.chunk frames. A finished run's stream replays and closes."""
        await runtime.get_run(run_id, caller=caller())
        fmt = request.args.get("format", "cuelog")
        if fmt not in {"cuelog", "openai"}:
            raise ApiError(400, "format must be cuelog or openai", param="format")
        include_usage = request.args.get("include_usage", "") in {"1", "true"}
        frames = run_frames(run_id, _after_seq(), fmt, include_usage=include_usage)
        return stream(frames, {"X-Run-Id": run_id})

    # -- the firehose --------------------------------------------------------------------------

    @routes.add("/v1/events", ["GET"], "admin")
    async def all_events() -> Response:
        """The whole log in seq order: JSON pages, or SSE that follows new events."""
        after = _after_seq()
        prefix = request.args.get("prefix") or None
        if _wants_sse():

            async def frames() -> AsyncIterator[bytes]:
                async for event in log.subscribe(after, prefix):
                    yield sse_frame(event_json(event), event=event.type, id=event.seq)

            return stream(frames())
        limit = query_int("limit", 100, lo=1, hi=1000)
        page: list[RecordedEvent] = []
        cursor = after
        while len(page) <= limit:
            batch = log.read_all(cursor, 500)
            if not batch:
                break
            cursor = batch[-1].seq
            page.extend(e for e in batch if prefix is None or e.stream.startswith(prefix))
        return _page(page[: limit + 1], limit)

    return read


def _page(events: list[RecordedEvent], limit: int) -> Response:
    more = len(events) > limit
    events = events[:limit]
    body = b'{"data":[' + b",".join(event_json(e) for e in events) + b'],"next_cursor":'
    body += (str(events[-1].seq).encode() if more and events else b"null") + b"}"
    return json_response(body)


def _run_started(event: RecordedEvent) -> RunStarted:
    started = DOMAIN_CODEC.decode(event.type, event.data)
    assert isinstance(started, RunStarted)
    return started


def _raise_for_run(view: RunView) -> None:
    if view.status == "completed":
        return
    if view.status == "cancelled":
        raise ApiError(409, f"the run was cancelled: {view.error}", code="run_cancelled")
    raise ApiError(502, f"the run failed: {view.error}", code="run_failed")


async def _response_events(
    log: LmdbEventLog, run_id: str, model: str, created: int
) -> AsyncIterator[bytes]:
    """Responses API stream events for a run."""

    sequence = 0
    item_id = f"msg_{run_id}"
    text: list[str] = []

    def frame(kind: str, payload: dict[str, Any], seq: int | None) -> bytes:
        nonlocal sequence
        sequence += 1
        return sse_frame(
            to_json({"type": kind, "sequence_number": sequence, **payload}), event=kind, id=seq
        )

    yield frame(
        "response.created",
        {"response": response_object(run_id, model, created, "in_progress", None, None)},
        None,
    )
    item = {
        "type": "message",
        "id": item_id,
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    yield frame("response.output_item.added", {"output_index": 0, "item": item}, None)
    part = {"type": "output_text", "text": "", "annotations": []}
    yield frame(
        "response.content_part.added",
        {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part},
        None,
    )
    async for event in log.subscribe_stream(f"run:{run_id}"):
        if event.type == "AssistantDelta":
            delta = DOMAIN_CODEC.decode(event.type, event.data)
            assert isinstance(delta, AssistantDelta)
            text.append(delta.text)
            yield frame(
                "response.output_text.delta",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": delta.text,
                    "logprobs": [],
                },
                event.seq,
            )
        elif event.type == "RunCompleted":
            done = DOMAIN_CODEC.decode(event.type, event.data)
            assert isinstance(done, RunCompleted)
            full = "".join(text)
            yield frame(
                "response.output_text.done",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": full,
                    "logprobs": [],
                },
                None,
            )
            final = response_object(run_id, model, created, "completed", full, done.usage)
            yield frame("response.completed", {"response": final}, event.seq)
            return
        elif event.type in TERMINAL_EVENTS:
            failed = response_object(run_id, model, created, "failed", None, None)
            yield frame("response.failed", {"response": failed}, event.seq)
            return
