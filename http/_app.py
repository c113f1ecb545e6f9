"""The Quart-Trio application: the error handlers, health and metrics, and every resource's routes.

Each resource registers its own routes (`_agents`, `_chat`, `_sessions`, `_runs`, `_operator`,
`_audit`); requests become calls on the domain, and answers are the structs in `_schemas`.
"""

from __future__ import annotations

import time
from importlib.metadata import version as package_version
from pathlib import Path
from types import TracebackType

import structlog
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from cuelog.http._agents import register_agent_routes
from cuelog.http._answers import error_answer
from cuelog.http._audit import register_audit_routes
from cuelog.http._auth import PUBLIC, Principal, Routes, principal
from cuelog.http._chat import register_chat_routes
from cuelog.http._console import register_console_routes
from cuelog.http._cors import install_cors
from cuelog.http._errors import error_body
from cuelog.http._limits import retry_after
from cuelog.http._loops import register_loop_routes
from cuelog.http._mcp import register_mcp_routes
from cuelog.http._openapi import register_docs_routes
from cuelog.http._operator import register_operator_routes
from cuelog.http._providers import register_provider_routes
from cuelog.http._runs import register_run_routes
from cuelog.http._schemas import Health
from cuelog.http._services import Services
from cuelog.http._sessions import register_session_routes
from cuelog.http._tool_settings import register_tool_settings_routes
from cuelog.http._traces import register_trace_routes
from cuelog.http._usage import register_usage_routes
from cuelog.http._webhooks import register_webhook_routes
from cuelog.http._wire import ApiError, json_response, to_json
from cuelog.runtime import (
    ActorOwnedElsewhere,
    CuelogError,
)

logger = structlog.get_logger("cuelog.http")

# Whether a key is needed is no secret (a client learns it from any 401) and tells a client
# what to send before it tries.
_HEALTH_OK = to_json({"status": "ok", "auth_required": True})
_HEALTH_OPEN = to_json({"status": "ok", "auth_required": False})


class _App(QuartTrio):
    def log_exception(
        self,
        exception_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        """Unhandled errors go to structlog as structured fields, not Quart's text traceback."""
        logger.error("unhandled error", exc_info=exception_info)


def create_app(services: Services) -> QuartTrio:
    """Build the HTTP facade over the domain."""
    app = _App(__name__, root_path=str(Path(__file__).parent))
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = services.settings.server.max_body_bytes

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

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        # Logged by structlog (a structured `exception` field), not Quart's text traceback.
        logger.error("unhandled error", method=request.method, path=request.path, exc_info=exc)
        return ApiError(500, "internal error; the server log has the details").response()

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return exc.response()

    @app.errorhandler(CuelogError)
    async def domain_error(exc: CuelogError) -> Response:
        return error_answer(exc).response()

    @app.errorhandler(ActorOwnedElsewhere)
    async def owned_elsewhere(exc: ActorOwnedElsewhere) -> Response:
        forwarder = services.forwarder
        if forwarder is not None:
            forwarded = await forwarder.forward(exc)
            if forwarded is not None:
                return forwarded
        return error_answer(exc).response()

    install_cors(app, services.settings.server.cors_origins)
    auth = services.auth
    routes = Routes(app, auth, limit=_Limits(services))
    app.extensions["cuelog.routes"] = routes
    services.metrics.install(app)

    @app.after_request
    async def close_when_stopping(response: Response) -> Response:
        if services.stopping:
            response.headers["Connection"] = "close"  # let clients move on during shutdown
        return response

    @routes.add("/health", ["GET"], PUBLIC, answers={200: Health})
    @routes.add("/v1/health", ["GET"], PUBLIC, answers={200: Health})
    async def health() -> Response:
        """Liveness; with a valid key also version, log head, live actors, uptime and, in
        cluster mode, the node and how many leases it holds."""
        who = principal()
        if who is None or not auth.enabled:
            return json_response(_HEALTH_OK if auth.enabled else _HEALTH_OPEN)
        stats = services.domain.system.statistics()
        leases = services.domain.lease_statistics()
        return json_response(
            to_json(
                Health(
                    status="ok",
                    version=package_version("cuelog"),
                    head_seq=services.log.head().seq,
                    live_actors=stats.live_actors,
                    uptime_seconds=round(time.monotonic() - services.started, 3),
                    emergency_stop=services.domain.emergency_stopped,
                    auth_required=True,
                    node=leases.node if leases is not None else None,
                    leases=leases.held if leases is not None else None,
                    services=list(leases.services) if leases is not None else None,
                )
            )
        )

    register_agent_routes(routes, services)
    register_chat_routes(routes, services)
    register_session_routes(routes, services)
    register_run_routes(routes, services)
    register_usage_routes(routes, services)
    register_trace_routes(routes, services)
    register_operator_routes(routes, services)
    register_audit_routes(routes, services)
    register_mcp_routes(routes, services)
    register_provider_routes(routes, services)
    register_tool_settings_routes(routes, services)
    register_loop_routes(routes, services)
    register_webhook_routes(routes, services)

    @routes.add("/metrics", ["GET"], "read")
    async def metrics() -> Response:
        """Prometheus text: requests, latency, appends, group commits, actors, runs, SSE."""
        body, content_type = services.metrics.render()
        return Response(body, content_type=content_type)

    register_console_routes(app)
    register_docs_routes(routes, app)
    return app


class _Limits:
    """The server's rate limits: per address before authentication, per key after it, and a
    stricter per-address budget of failed authentications, so guessing keys is slow."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def before_auth(self, *, public: bool) -> None:
        address = f"ip:{request.remote_addr or 'unknown'}"
        locked = None if public else self.services.auth_failures.wait(address)
        if locked is not None:
            self._refuse(
                locked,
                "too many failed authentications from this address; "
                "retry after the Retry-After seconds",
                code="too_many_auth_failures",
            )
        wait = self.services.ip_buckets.take(address)
        if wait is not None:
            self._refuse(wait)

    def after_auth(self, who: Principal | None) -> None:
        if who is not None and who.key_id is not None:
            wait = self.services.key_buckets.take(f"key:{who.key_id}")
            if wait is not None:
                self._refuse(wait)

    def auth_failed(self) -> None:
        self.services.auth_failures.take(f"ip:{request.remote_addr or 'unknown'}")

    def _refuse(
        self,
        wait: float,
        message: str = "too many requests; slow down and retry after the Retry-After seconds",
        code: str | None = None,
    ) -> None:
        self.services.metrics.rate_limited.inc()
        raise ApiError(429, message, code=code, headers={"Retry-After": retry_after(wait)})
