"""CORS for the origins `server.cors_origins` lists: browsers on those origins may call the API
(a preflight `OPTIONS` answers 204 with what they may send); other origins get no CORS headers,
so the browser keeps them out. Keys are still required as usual."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, final

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


@final
class CorsOrigins:
    """The origins allowed to read answers (`*`: any): the one rule for the app's answers
    (`install_cors`) and for those the connection writes itself (a refused request, a 500)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)
        self.any = "*" in self.origins

    def allowed(self, origin: str | None) -> str | None:
        """`origin` when it may read the answer, else None."""
        if origin is None or not (self.any or origin in self.origins):
            return None
        return origin

    def header_lines(self, origin: bytes | None) -> bytes:
        """The CORS headers of an answer the connection writes itself, as raw header lines."""
        if origin is None or self.allowed(origin.decode("latin-1")) is None:
            return b""
        return (
            b"access-control-allow-origin: %b\r\naccess-control-expose-headers: %b\r\n"
            b"vary: Origin\r\n" % (origin, EXPOSED_HEADERS.encode())
        )


def install_cors(app: QuartTrio, origins: list[str]) -> None:
    """Answer preflights and mark responses for `origins` (`*` allows any origin)."""
    if not origins:
        return
    allowed = CorsOrigins(origins)

    def allowed_origin() -> str | None:
        return allowed.allowed(request.headers.get("origin"))

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
