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

from cuelog.actors import KeyInfo
from cuelog.http._auth import PUBLIC, RouteInfo, Routes
from cuelog.http._bodies import (
    AgentBody,
    AgentPatch,
    ApprovalBody,
    ForkBody,
    InvokeBody,
    KeyBody,
    SessionPatchBody,
    WakeBody,
)
from cuelog.http._errors import ErrorBody
from cuelog.http._openai import ChatCompletionRequest, ResponsesRequest
from cuelog.http._schemas import (
    Agent,
    AgentList,
    Anchored,
    ApprovalDecision,
    ApprovalList,
    AuditHead,
    Deleted,
    EmergencyStop,
    EventPage,
    Health,
    KeyList,
    Model,
    ModelList,
    NewKey,
    Run,
    RunTimeline,
    Session,
    SessionList,
    SessionStateAt,
    ToolList,
    ToolRun,
    WakeAccepted,
    WakeResult,
)
from cuelog.http._wire import json_response, to_json
from cuelog.runtime import VerifyReport

SPEC_PATH: Final = "/v1/openapi.json"
DOCS_PATH: Final = "/docs"

# -- what each route takes and answers ----------------------------------------------------------

Route = tuple[str, str]  # (method, rule)

BODIES: Final[dict[Route, type]] = {
    ("POST", "/v1/agents"): AgentBody,
    ("PATCH", "/v1/agents/<agent_id>"): AgentPatch,
    ("POST", "/v1/chat/completions"): ChatCompletionRequest,
    ("POST", "/v1/responses"): ResponsesRequest,
    ("POST", "/v1/agents/<agent_id>/wake"): WakeBody,
    ("PATCH", "/v1/sessions/<key>"): SessionPatchBody,
    ("POST", "/v1/sessions/<key>/fork"): ForkBody,
    ("POST", "/v1/keys"): KeyBody,
    ("POST", "/v1/approvals/<approval_id>"): ApprovalBody,
    ("POST", "/v1/tools/invoke"): InvokeBody,
}

# status -> struct (None: a JSON object of no fixed shape)
ANSWERS: Final[dict[Route, dict[int, type | None]]] = {
    ("GET", "/health"): {200: Health},
    ("GET", "/v1/health"): {200: Health},
    ("GET", "/v1/models"): {200: ModelList},
    ("GET", "/v1/models/<model_id>"): {200: Model},
    ("GET", "/v1/agents"): {200: AgentList},
    ("POST", "/v1/agents"): {201: Agent},
    ("GET", "/v1/agents/<agent_id>"): {200: Agent},
    ("PATCH", "/v1/agents/<agent_id>"): {200: Agent},
    ("DELETE", "/v1/agents/<agent_id>"): {200: Deleted},
    ("POST", "/v1/chat/completions"): {200: None},
    ("POST", "/v1/responses"): {200: None},
    ("POST", "/v1/agents/<agent_id>/wake"): {200: WakeResult, 202: WakeAccepted},
    ("GET", "/v1/sessions"): {200: SessionList},
    ("GET", "/v1/sessions/<key>"): {200: Session},
    ("PATCH", "/v1/sessions/<key>"): {200: Session},
    ("DELETE", "/v1/sessions/<key>"): {200: Deleted},
    ("POST", "/v1/sessions/<key>/reset"): {200: Session},
    ("POST", "/v1/sessions/<key>/fork"): {201: Session},
    ("GET", "/v1/sessions/<key>/state"): {200: SessionStateAt},
    ("GET", "/v1/sessions/<key>/events"): {200: EventPage},
    ("GET", "/v1/runs/<run_id>"): {200: Run},
    ("POST", "/v1/runs/<run_id>/cancel"): {200: Run},
    ("GET", "/v1/runs/<run_id>/timeline"): {200: RunTimeline},
    ("GET", "/v1/runs/<run_id>/events"): {},
    ("GET", "/v1/events"): {200: EventPage},
    ("POST", "/v1/keys"): {201: NewKey},
    ("GET", "/v1/keys"): {200: KeyList},
    ("DELETE", "/v1/keys/<key_id>"): {200: KeyInfo},
    ("GET", "/v1/approvals"): {200: ApprovalList},
    ("POST", "/v1/approvals/<approval_id>"): {200: ApprovalDecision},
    ("GET", "/v1/tools"): {200: ToolList},
    ("POST", "/v1/tools/invoke"): {200: ToolRun, 202: ToolRun},
    ("GET", "/v1/audit/head"): {200: AuditHead},
    ("POST", "/v1/audit/anchor"): {200: Anchored},
    ("POST", "/v1/audit/verify"): {200: VerifyReport},
    ("GET", "/v1/audit/events"): {200: EventPage},
    ("POST", "/v1/emergency-stop"): {200: EmergencyStop},
    ("POST", "/v1/emergency-stop/release"): {200: EmergencyStop},
}

# Routes that answer (or can answer) Server-Sent Events.
STREAMS: Final[frozenset[Route]] = frozenset(
    {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("GET", "/v1/sessions/<key>/events"),
        ("GET", "/v1/runs/<run_id>/events"),
        ("GET", "/v1/events"),
        ("POST", "/v1/audit/verify"),
    }
)

# Routes that start runs: a model can fail (502) or be slow (504).
RUNS: Final[frozenset[Route]] = frozenset(
    {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("POST", "/v1/agents/<agent_id>/wake"),
    }
)

_INT = {"type": "integer", "minimum": 0}
_CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string"}}
_AFTER = {
    "name": "after",
    "in": "query",
    "description": "Only events after this log seq.",
    "schema": _INT,
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "description": "Resume an SSE stream after this log seq.",
    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
}


def _limit(hi: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": hi},
    }


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        param["description"] = description
    return param


QUERY: Final[dict[Route, list[dict[str, Any]]]] = {
    ("GET", "/v1/agents"): [_limit(500), _CURSOR],
    ("GET", "/v1/sessions"): [_limit(500), _CURSOR, _query("agent_id", {"type": "string"})],
    ("GET", "/v1/sessions/<key>/events"): [_AFTER, _limit(1000), _LAST_EVENT_ID],
    ("GET", "/v1/runs/<run_id>/events"): [
        _AFTER,
        _LAST_EVENT_ID,
        _query("format", {"enum": ["cuelog", "openai"]}, "openai: chat.completion.chunk frames"),
        _query("include_usage", {"enum": ["0", "1", "true", "false"]}),
    ],
    ("GET", "/v1/events"): [
        _AFTER,
        _LAST_EVENT_ID,
        _limit(1000),
        _query("prefix", {"type": "string"}, "Only streams whose name starts with this."),
    ],
    ("GET", "/v1/approvals"): [_query("status", {"enum": ["pending"]})],
    ("GET", "/v1/audit/events"): [
        {**_CURSOR, "schema": _INT, "description": "The last seq of the previous page."},
        _limit(1000),
        _query("actor", {"type": "string"}, "The key id that caused the event."),
        _query("type", {"type": "string"}, "Event types, comma-separated."),
        _query("stream_prefix", {"type": "string"}),
        _query("since", _INT, "Unix seconds."),
        _query("until", _INT, "Unix seconds."),
    ],
}

_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "The same key returns the original result; with another body it is 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
HEADERS: Final[dict[Route, list[dict[str, Any]]]] = {
    ("POST", "/v1/chat/completions"): [
        _IDEMPOTENCY_KEY,
        {
            "name": "X-Session-Key",
            "in": "header",
            "description": "Keep the conversation in this session; send only the new messages.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"},
        },
    ],
    ("POST", "/v1/responses"): [_IDEMPOTENCY_KEY],
    ("POST", "/v1/agents/<agent_id>/wake"): [_IDEMPOTENCY_KEY],
}

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


def _security(scope: str) -> list[dict[str, list[str]]]:
    if scope == PUBLIC:
        return [{}, {"bearer": []}, {"apiKey": []}]
    return [{"bearer": [scope]}, {"apiKey": [scope]}]


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
    for route_type in BODIES.values():
        structs.append(route_type)
    for answers in ANSWERS.values():
        structs.extend(t for t in answers.values() if t is not None)
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
            key = (method, info.rule)
            paths.setdefault(path, {})[method.lower()] = _operation(
                info, key, path, ref_of, error_ref
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
        "components": {"schemas": components, "securitySchemes": _SECURITY_SCHEMES},
    }


def _operation(
    info: RouteInfo,
    key: Route,
    path: str,
    ref_of: dict[type, dict[str, Any]],
    error_ref: dict[str, Any],
) -> dict[str, Any]:
    method, rule = key
    summary, _, rest = (info.summary or "").strip().partition("\n")
    operation: dict[str, Any] = {
        "operationId": _operation_id(method, rule),
        "summary": " ".join(summary.split()) or f"{method} {path}",
        "tags": [_tag(path)],
        "security": _security(info.scope),
        "x-cuelog-scope": info.scope,
    }
    if rest.strip():
        operation["description"] = " ".join(rest.split())
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _RULE_PARAM.findall(rule)
    ]
    parameters += QUERY.get(key, []) + HEADERS.get(key, [])
    if parameters:
        operation["parameters"] = parameters
    body = BODIES.get(key)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(ref_of[body])}

    responses: dict[str, Any] = {}
    answers = ANSWERS.get(key)
    streams = key in STREAMS
    if answers is None or (not answers and not streams):
        responses["200"] = _plain_answer(rule)
    for status, struct in (answers or {}).items():
        schema = ref_of[struct] if struct is not None else {"type": "object"}
        content = _json(schema)
        if streams and status == 200:
            content.update(_sse_content())
        responses[str(status)] = {"description": "OK", "content": content}
    if streams and "200" not in responses:
        responses["200"] = {"description": "The run's events as SSE.", "content": _sse_content()}
    for status, description in ERRORS.items():
        if status in {502, 504} and key not in RUNS:
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
