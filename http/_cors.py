"""CORS for the origins `server.cors_origins` lists: browsers on those origins may call the API
(a preflight `OPTIONS` answers 204 with what they may send); other origins get no CORS headers,
so the browser keeps them out. Keys are still required as usual."""

from __future__ import annotations

from typing import Final

from quart import Response, request
from quart_trio import QuartTrio

ALLOWED_HEADERS: Final = ", ".join(
    (
        "Authorization",
        "Content-Type",
        "X-API-Key",
        "X-Session-Key",
        "Idempotency-Key",
        "Last-Event-ID",
        "X-Cuelog-On-Disconnect",
    )
)
EXPOSED_HEADERS: Final = "X-Run-Id, X-Session-Key, Retry-After"
ALLOWED_METHODS: Final = "GET, POST, PATCH, DELETE, OPTIONS"
PREFLIGHT_MAX_AGE: Final = "600"


def install_cors(app: QuartTrio, origins: list[str]) -> None:
    """Answer preflights and mark responses for `origins` (`*` allows any origin)."""
    if not origins:
        return
    allowed = frozenset(origins)

    def allowed_origin() -> str | None:
        origin = request.headers.get("origin")
        if origin is None:
            return None
        return origin if origin in allowed or "*" in allowed else None

    @app.before_request
    async def preflight() -> Response | None:
        origin = allowed_origin()
        if request.method != "OPTIONS" or origin is None:
            return None
        if "access-control-request-method" not in request.headers:
            return None
        return Response(
            b"",
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
                "Vary": "Origin",
            },
        )

    @app.after_request
    async def mark(response: Response) -> Response:
        origin = allowed_origin()
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers.add("Vary", "Origin")
        return response
