"""The Quart-Trio application: requests become actor messages; results are read from the log."""

from __future__ import annotations

from pathlib import Path

import msgspec
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from cuelog.http._errors import error_body

_json = msgspec.json.Encoder()
_HEALTH_OK = _json.encode({"status": "ok"})


def json_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status=status, headers=headers, content_type="application/json")


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return json_response(error_body(status, message, code=code, param=param), status, headers)


def create_app() -> QuartTrio:
    """Build the HTTP facade."""
    app = QuartTrio(__name__, root_path=str(Path(__file__).parent))
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "no such route; see GET /v1/openapi.json for the API",
            405: "method not allowed on this route",
        }
        headers: dict[str, str] = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
        return error_response(
            status, messages.get(status, exc.description or exc.name), headers=headers
        )

    @app.route("/health", methods=["GET"])
    @app.route("/v1/health", methods=["GET"])
    async def health() -> Response:
        return json_response(_HEALTH_OK)

    return app
