"""OpenAPI 3.1 for the API, generated from the route table and the msgspec bodies, and /docs.

The route table gives every path, method and scope; the small tables here add what a route takes
(body struct, query parameters, headers) and answers. Schemas come from
`msgspec.json.schema_components`, so a body struct and its documented schema cannot drift apart.
"""

from __future__ import annotations

import re
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final

import msgspec
from quart import Response
from quart_trio import QuartTrio

from cuelog.http._auth import PUBLIC, RouteInfo, Routes
from cuelog.http._errors import ErrorBody
from cuelog.http._wire import JSON_VALUE_SCHEMA, json_response, to_json

SPEC_PATH: Final = "/v1/openapi.json"
DOCS_PATH: Final = "/docs"

ERRORS: Final[dict[int, str]] = {
    400: "Invalid input.",
    401: "No API key, or one that is unknown, revoked or expired.",
    403: "The key lacks the scope this route needs.",
    404: "No such resource (or it belongs to another key).",
    409: "Conflict.",
    413: "The body is over the size limit.",
    415: "The body is not JSON.",
    429: "Rate limited or too many streams; see Retry-After.",
    502: "The model failed.",
    503: "Overloaded or emergency-stopped; see Retry-After.",
    504: "The run did not finish in time; follow its events.",
}

_RULE_PARAM = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <key>",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def openapi_path(rule: str) -> str:
    """A Quart rule as an OpenAPI path: `/v1/runs/<run_id>` -> `/v1/runs/{run_id}`."""
    return _RULE_PARAM.sub(r"{\1}", rule)


def _security(scopes: tuple[str, ...]) -> list[dict[str, list[str]]]:
    if PUBLIC in scopes:
        return [{}, {"bearer": []}, {"apiKey": []}]
    return [{scheme: [scope]} for scope in scopes for scheme in ("bearer", "apiKey")]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _sse_content() -> dict[str, Any]:
    frame = {
        "type": "object",
        "description": "One Server-Sent Event: `id` is the log seq, `event` the event type.",
        "properties": {
            "id": {"type": "string"},
            "event": {"type": "string"},
            "data": {"type": "string", "description": "JSON text."},
        },
    }
    return {"text/event-stream": {"schema": frame}}


def build_spec(table: list[RouteInfo]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the routes in `table`."""
    structs: list[type] = [ErrorBody]
    for route in table:
        if route.body is not None:
            structs.append(route.body)
        structs.extend(t for t in route.answers.values() if t is not None)
    unique = list(dict.fromkeys(structs))
    refs, components = msgspec.json.schema_components(
        unique, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(unique, refs, strict=True))
    error_ref = ref_of[ErrorBody]

    paths: dict[str, dict[str, Any]] = {}
    for info in table:
        path = openapi_path(info.rule)
        for method in info.methods:
            paths.setdefault(path, {})[method.lower()] = _operation(
                info, method, path, ref_of, error_ref
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cuelog",
            "version": package_version("cuelog"),
            "description": (
                "An event-sourced actor runtime for LLM agents: OpenAI-compatible chat, agents, "
                "sessions, runs, approvals, tools and audit over one hash-chained log. Each "
                "operation names the scope its key needs (admin implies all)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {**components, "JsonValue": JSON_VALUE_SCHEMA},
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }


def _operation(
    info: RouteInfo,
    method: str,
    path: str,
    ref_of: dict[type, dict[str, Any]],
    error_ref: dict[str, Any],
) -> dict[str, Any]:
    rule = info.rule
    summary, _, rest = (info.summary or "").strip().partition("\n")
    operation: dict[str, Any] = {
        "operationId": _operation_id(method, rule),
        "summary": " ".join(summary.split()) or f"{method} {path}",
        "tags": [_tag(path)],
        "security": _security((info.scope, *info.also)),
        "x-cuelog-scope": info.scope,
        "x-cuelog-scopes": [info.scope, *info.also],
    }
    if rest.strip():
        operation["description"] = " ".join(rest.split())
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _RULE_PARAM.findall(rule)
    ]
    parameters += [param.spec() for param in info.params]
    if parameters:
        operation["parameters"] = parameters
    if info.body is not None:
        operation["requestBody"] = {"required": True, "content": _json(ref_of[info.body])}

    responses: dict[str, Any] = {}
    answers, streams = info.answers, info.streams
    if not answers and not streams:
        responses["200"] = _plain_answer(rule)
    for status, struct in answers.items():
        schema = ref_of[struct] if struct is not None else {"type": "object"}
        content = _json(schema)
        if streams and status == 200:
            content.update(_sse_content())
        responses[str(status)] = {"description": "OK", "content": content}
    if streams and "200" not in responses:
        responses["200"] = {"description": "The run's events as SSE.", "content": _sse_content()}
    for status, description in ERRORS.items():
        if status in {502, 504} and not info.runs:
            continue
        responses[str(status)] = {"description": description, "content": _json(error_ref)}
    operation["responses"] = responses
    return operation


def _plain_answer(rule: str) -> dict[str, Any]:
    if rule == "/metrics":
        content = {"text/plain": {"schema": {"type": "string"}}}
        return {"description": "Prometheus text exposition.", "content": content}
    if rule == DOCS_PATH:
        return {
            "description": "The docs page.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    return {"description": "OK", "content": _json({"type": "object"})}


def _operation_id(method: str, rule: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", _RULE_PARAM.sub(r"by_\1", rule)) if w]
    return "_".join([method.lower(), *words])


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "v1"]
    return parts[0] if parts else "health"


def register_docs_routes(routes: Routes, app: QuartTrio) -> None:
    """`GET /v1/openapi.json` and `GET /docs`, both public so tools and people can fetch them."""
    cached: list[bytes] = []

    @routes.add(SPEC_PATH, ["GET"], PUBLIC)
    async def openapi_spec() -> Response:
        """This API as OpenAPI 3.1 (public)."""
        if not cached:  # built on first use: every route is registered by then
            cached.append(to_json(build_spec(routes.table)))
        return json_response(cached[0])

    page = Path(__file__).with_name("docs.html").read_bytes()

    @routes.add(DOCS_PATH, ["GET"], PUBLIC)
    async def docs() -> Response:
        """A page that renders the OpenAPI document, served offline (public)."""
        return Response(page, content_type="text/html; charset=utf-8")

    app.extensions["cuelog.openapi"] = lambda: build_spec(routes.table)
