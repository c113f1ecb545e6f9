"""OpenAI-shaped error bodies: {"error": {"message", "type", "code", "param"}}."""

from __future__ import annotations

import msgspec


class ErrorDetail(msgspec.Struct, frozen=True):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_scope"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("conflict_error", "conflict"),
    413: ("invalid_request_error", "body_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limited"),
    500: ("server_error", "internal_error"),
    503: ("server_error", "unavailable"),
}

_encoder = msgspec.json.Encoder()


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> bytes:
    """Encode the error body for an HTTP status."""
    kind, default_code = _TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", "error")
    )
    return _encoder.encode(
        ErrorBody(ErrorDetail(message=message, type=kind, code=code or default_code, param=param))
    )
