"""Request bodies in, JSON and SSE out: strict decoding and OpenAI-shaped errors.

Bodies are decoded with msgspec from the raw bytes (never `get_json`: it raises on invalid UTF-8),
with unknown fields rejected. Every failure is an `ApiError` that becomes the documented error body.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any, Final, TypeVar

import msgspec
from quart import Response, request

from cuelog.http._errors import error_body

T = TypeVar("T")

_json = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_PATH_RE = re.compile(r" - at `\$\.?([^`]*)`")
_FIELD_RE = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


class ApiError(Exception):
    """An error answered to the client with its status and the OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self) -> Response:
        return json_response(
            error_body(self.status, self.message, code=self.code, param=self.param),
            self.status,
            self.headers,
        )


def json_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status=status, headers=headers, content_type="application/json")


def to_json(value: Any) -> bytes:
    return _json.encode(value)


def _decoder(cls: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    return decoder


async def read_body(cls: type[T], *, max_bytes: int) -> tuple[T, bytes]:
    """Decode the request body as `cls` and return it with the raw bytes: 415 wrong type,
    413 too large, 400 invalid. The body is read before any refusal, so the keep-alive
    connection stays usable."""
    raw = await request.get_data(cache=True, as_text=False)
    assert isinstance(raw, bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    if len(raw) > max_bytes:
        raise ApiError(413, f"body is over the {max_bytes}-byte limit")
    return decode_body(cls, raw), raw


def decode_body(cls: type[T], raw: bytes) -> T:
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        return _decoder(cls).decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if "got `float`" in message:
            # JSON (and the OpenAPI document) count 118.0 as an integer; msgspec does not.
            with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError, RecursionError):
                return _decoder(cls).decode(_json.encode(_whole_floats(msgspec.json.decode(raw))))
        raise ApiError(
            400, _PATH_RE.sub("", message), code="invalid_value", param=_param_of(message)
        ) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # msgspec's answer to arrays or objects nested past its stack
        raise ApiError(
            400,
            f"the body is nested too deeply (at most {MAX_JSON_DEPTH} levels)",
            code="invalid_json",
        ) from None
    except UnicodeDecodeError:  # msgspec raises it (not DecodeError) for a bad byte in a string
        raise ApiError(400, "the body is not valid UTF-8", code="invalid_json") from None


def _whole_floats(value: Any) -> Any:
    """`value` with every float that has no fractional part turned into an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_floats(v) for k, v in value.items()}
    return value


# Free-form JSON a client may send (metadata, tool arguments) is bounded like the rest: it is
# stored in the log as msgpack, which holds integers of 64 bits and is read back recursively.
MAX_JSON_DEPTH = 32
MIN_JSON_INT = -(1 << 63)
MAX_JSON_INT = (1 << 63) - 1
# The same bounds as the OpenAPI document states them (`FreeJson` in `_bodies.py` refers to it).
JSON_VALUE_SCHEMA: Final = {
    "description": f"Any JSON value nested at most {MAX_JSON_DEPTH} levels deep, with numbers "
    "between -2**63 and 2**63-1.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "string"},
        {"type": "number", "minimum": MIN_JSON_INT, "maximum": MAX_JSON_INT},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ],
}


def check_free_json(value: Any, param: str) -> None:
    """Raise a 400 naming `param` when `value` nests deeper than `MAX_JSON_DEPTH` levels or
    holds an integer outside 64-bit signed range."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(
                    400,
                    f"{param} is nested more than {MAX_JSON_DEPTH} levels deep",
                    code="invalid_value",
                    param=param,
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, int | float) and not MIN_JSON_INT <= item <= MAX_JSON_INT:
            raise ApiError(
                400,
                f"{param} holds a number outside -2**63 .. 2**63-1",
                code="invalid_value",
                param=param,
            )


def _param_of(message: str) -> str | None:
    """The field a msgspec validation message is about: its path, plus the unknown or missing
    field's name when there is one (`messages[0].role`)."""
    path_match = _PATH_RE.search(message)
    field_match = _FIELD_RE.search(message)
    parts = [m.group(1) for m in (path_match, field_match) if m is not None and m.group(1)]
    return ".".join(parts) or None


def sse_frame(data: bytes, *, event: str | None = None, id: int | None = None) -> bytes:
    head = b""
    if id is not None:
        head += b"id: %d\n" % id
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def sse_response(frames: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> Response:
    response = Response(
        frames,
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
    response.timeout = None  # Quart would end the stream after 60 s otherwise
    return response
