"""Bad requests answer 4xx in the OpenAI error shape and never touch the log."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.live import API_KEY, Live, live_server, on_every_backend

JSON = {"Content-Type": "application/json"}
CHAT = "/v1/chat/completions"
WAKE = "/v1/agents/default/wake"
USER = b'[{"role":"user","content":"hi"}]'


def _assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert isinstance(error["message"], str) and error["message"]
    return error


async def _unchanged(
    live: Live, response_of: Callable[[], Awaitable[httpx.Response]]
) -> httpx.Response:
    head = await live.head_seq()
    response = await response_of()
    assert await live.head_seq() == head, "a rejected request wrote to the log"
    return response


# (path, body bytes, param or a word the message must name)
INVALID = [
    pytest.param(CHAT, b'{"model": "default", "messages": [', "JSON", id="malformed-json"),
    pytest.param(
        CHAT,
        b'{"model":"default","messages":[{"role":"user","content":"\xff\xfe"}]}',
        "UTF-8",
        id="invalid-utf8",
    ),
    pytest.param(CHAT, b'{"model": 7, "messages": ' + USER + b"}", "model", id="wrong-type"),
    pytest.param(
        CHAT, b'{"model":"default","messages":' + USER + b',"bogus":1}', "bogus", id="unknown"
    ),
    pytest.param(CHAT, b'{"messages":' + USER + b"}", "model", id="missing-field"),
    pytest.param(CHAT, b'{"model":"default","messages":[]}', "messages", id="no-messages"),
    pytest.param(
        CHAT,
        b'{"model":"default","messages":[{"role":"robot","content":"x"}]}',
        "messages[0].role",
        id="bad-role",
    ),
    pytest.param(CHAT, b"[]", "object", id="not-an-object"),
    pytest.param(CHAT, b"", "empty", id="empty-body"),
    pytest.param(WAKE, b"{}", "message", id="wake-missing-message"),
    pytest.param(WAKE, b'{"message":"x","mode":"later"}', "mode", id="wake-bad-mode"),
    pytest.param(WAKE, b'{"message":"x","extra":true}', "extra", id="wake-unknown"),
    pytest.param(WAKE, b'{"message":"x","session_key":"has space"}', "session_key", id="bad-key"),
    pytest.param("/v1/responses", b'{"model":"default","input":[]}', "input", id="no-input"),
]


@pytest.mark.parametrize(("path", "raw", "names"), INVALID)
@on_every_backend
async def test_invalid_body_is_400_naming_the_field(
    tmp_path: Path, backend: str, path: str, raw: bytes, names: str
) -> None:
    """Malformed, mistyped, unknown or missing fields give 400 naming the field; no event."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        response = await _unchanged(live, lambda: live.client.post(path, content=raw, headers=JSON))
        error = _assert_error(response, 400)
        assert error["type"] == "invalid_request_error"
        assert names == error["param"] or names in error["message"], error


BIG = b"18446744073709551616"  # 2**64: past what the log's msgpack holds
DEEP = b"[" * 1000 + b"]" * 1000


@pytest.mark.parametrize(
    ("method", "path", "raw", "param"),
    [
        pytest.param(
            "POST",
            WAKE,
            b'{"message":"x","metadata":{"n":' + BIG + b"}}",
            "metadata",
            id="wake-metadata-2**64",
        ),
        pytest.param(
            "POST",
            WAKE,
            b'{"message":"x","metadata":{"n":[-' + BIG + b"]}}",
            "metadata",
            id="wake-metadata-minus-2**64",
        ),
        pytest.param(
            "POST",
            WAKE,
            b'{"message":"x","metadata":{"n":' + DEEP + b"}}",
            None,
            id="wake-metadata-1000-deep",
        ),
        pytest.param(
            "POST",
            WAKE,
            b'{"message":"x","metadata":{"n":' + b"[" * 40 + b"]" * 40 + b"}}",
            "metadata",
            id="wake-metadata-40-deep",
        ),
        pytest.param("POST", CHAT, DEEP, None, id="chat-1000-deep"),
        pytest.param(
            "PATCH",
            "/v1/sessions/s1",
            b'{"metadata":{"n":' + BIG + b"}}",
            "metadata",
            id="patch-metadata-2**64",
        ),
        pytest.param(
            "POST",
            "/v1/agents",
            b'{"id":"a1","max_steps":' + BIG + b"}",
            "max_steps",
            id="agent-max-steps-2**64",
        ),
        pytest.param(
            "PATCH",
            "/v1/agents/default",
            b'{"max_tokens":' + BIG + b"}",
            "max_tokens",
            id="agent-max-tokens-2**64",
        ),
        pytest.param(
            "POST", "/v1/agents", b'{"id":"a1","max_steps":0}', "max_steps", id="agent-max-steps-0"
        ),
        pytest.param(
            "POST",
            "/v1/sessions/s1/fork",
            b'{"at_seq":' + BIG + b"}",
            "at_seq",
            id="fork-at-seq-2**64",
        ),
        pytest.param(
            "POST",
            "/v1/keys",
            b'{"name":"k","scopes":["read"],"expires_at":' + BIG + b"}",
            "expires_at",
            id="key-expires-2**64",
        ),
        pytest.param(
            "POST",
            "/v1/tools/invoke",
            b'{"name":"calculator","args":{"n":' + BIG + b"}}",
            "args",
            id="invoke-args-2**64",
        ),
        pytest.param(
            "POST",
            CHAT,
            b'{"model":"default","messages":' + USER + b',"max_tokens":' + BIG + b"}",
            "max_tokens",
            id="chat-max-tokens-2**64",
        ),
    ],
)
async def test_out_of_range_or_too_deep_json_is_400(
    tmp_path: Path, method: str, path: str, raw: bytes, param: str | None
) -> None:
    """Integers past 64 bits, out-of-range limits and JSON nested too deep are 400 naming the
    field, and nothing is written; the session and agent still answer afterwards."""
    async with live_server(tmp_path / "data") as live:
        made = await live.client.post(WAKE, json={"message": "hi", "session_key": "s1"})
        assert made.status_code == 200, made.text
        for _ in range(5):  # five used to leave the session answering 503 until a restart
            response = await _unchanged(
                live, lambda: live.client.request(method, path, content=raw, headers=JSON)
            )
            error = _assert_error(response, 400)
            assert error["param"] == param, error
        assert (await live.client.get("/v1/sessions/s1")).status_code == 200
        assert (await live.client.get("/v1/agents/default")).status_code == 200
        again = await live.client.post(WAKE, json={"message": "again", "session_key": "s1"})
        assert again.status_code == 200, again.text


@on_every_backend
async def test_unknown_and_missing_fields_are_named_in_param(tmp_path: Path, backend: str) -> None:
    """Unknown and missing fields are named in error.param, with their path."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        unknown = await live.client.post(
            CHAT,
            json={"model": "default", "messages": [{"role": "user", "content": "x", "zz": 1}]},
        )
        assert _assert_error(unknown, 400)["param"] == "messages[0].zz"
        missing = await live.client.post(CHAT, json={"model": "default"})
        assert _assert_error(missing, 400)["param"] == "messages"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
@on_every_backend
async def test_wrong_content_type_is_415(tmp_path: Path, backend: str, content_type: str) -> None:
    """A body that is not declared as JSON gives 415 and writes nothing."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        raw = b'{"model":"default","messages":' + USER + b"}"
        response = await _unchanged(
            live,
            lambda: live.client.post(CHAT, content=raw, headers={"Content-Type": content_type}),
        )
        _assert_error(response, 415)


@on_every_backend
async def test_body_over_the_limit_is_413(tmp_path: Path, backend: str) -> None:
    """A body over server.max_body_bytes gives 413, with or without a Content-Length."""
    async with live_server(tmp_path / "data", backend=backend, max_body_bytes=2048) as live:
        raw = b'{"message":"' + b"x" * 4000 + b'"}'
        sized = await _unchanged(live, lambda: live.client.post(WAKE, content=raw, headers=JSON))
        _assert_error(sized, 413)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(raw), 512):
                yield raw[start : start + 512]

        chunked = await _unchanged(
            live, lambda: live.client.post(WAKE, content=chunks(), headers=JSON)
        )
        _assert_error(chunked, 413)
        small = await live.client.post(WAKE, json={"message": "fits"})
        assert small.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param(
            "POST",
            CHAT,
            {"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
            id="chat-agent",
        ),
        pytest.param("POST", "/v1/responses", {"model": "ghost", "input": "x"}, id="resp-agent"),
        pytest.param("POST", "/v1/agents/ghost/wake", {"message": "x"}, id="wake-agent"),
        pytest.param("GET", "/v1/agents/ghost", None, id="agent"),
        pytest.param("GET", "/v1/models/ghost", None, id="model"),
        pytest.param("GET", "/v1/sessions/ghost", None, id="session"),
        pytest.param("PATCH", "/v1/sessions/ghost", {"label": "x"}, id="patch-session"),
        pytest.param("POST", "/v1/sessions/ghost/reset", None, id="reset-session"),
        pytest.param("DELETE", "/v1/sessions/ghost", None, id="delete-session"),
        pytest.param("GET", "/v1/sessions/ghost/events", None, id="session-events"),
        pytest.param("GET", "/v1/runs/run_ghost", None, id="run"),
        pytest.param("GET", "/v1/runs/run_ghost/events", None, id="run-events"),
        pytest.param("POST", "/v1/runs/run_ghost/cancel", None, id="cancel-run"),
    ],
)
@on_every_backend
async def test_unknown_agent_session_or_run_is_404(
    tmp_path: Path, backend: str, method: str, path: str, body: Any
) -> None:
    """Naming an agent, session or run that does not exist gives 404 and writes nothing."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        response = await _unchanged(live, lambda: live.client.request(method, path, json=body))
        assert _assert_error(response, 404)["type"] == "not_found_error"


@on_every_backend
async def test_unknown_agent_with_idempotency_key_writes_nothing(
    tmp_path: Path, backend: str
) -> None:
    """A wake of a missing agent with an Idempotency-Key is a 404 that leaves the log unchanged."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        response = await _unchanged(
            live,
            lambda: live.client.post(
                "/v1/agents/ghost/wake", json={"message": "x"}, headers={"Idempotency-Key": "k1"}
            ),
        )
        _assert_error(response, 404)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"Authorization": "Bearer not-the-right-key-at-all"}, id="bad-bearer"),
        pytest.param({"X-API-Key": "not-the-right-key-at-all"}, id="bad-x-api-key"),
        pytest.param({"Authorization": f"Basic {API_KEY}"}, id="not-bearer"),
    ],
)
@on_every_backend
async def test_missing_or_bad_key_is_401(
    tmp_path: Path, backend: str, headers: dict[str, str]
) -> None:
    """Without the right key every route but health answers 401 and writes nothing."""
    async with (
        live_server(tmp_path / "data", backend=backend) as live,
        httpx.AsyncClient(base_url=live.url, headers=headers) as anonymous,
    ):
        for method, path, body in [
            ("POST", WAKE, {"message": "x"}),
            (
                "POST",
                CHAT,
                {"model": "default", "messages": [{"role": "user", "content": "x"}]},
            ),
            ("GET", "/v1/models", None),
            ("GET", "/v1/sessions", None),
            ("GET", "/v1/events", None),
        ]:
            response = await _unchanged(
                live, functools.partial(anonymous.request, method, path, json=body)
            )
            assert _assert_error(response, 401)["type"] == "authentication_error"
        health = await anonymous.get("/v1/health")
        assert health.json() == {"status": "ok", "auth_required": True}


@on_every_backend
async def test_x_api_key_header_authenticates(tmp_path: Path, backend: str) -> None:
    """The key also works in X-API-Key instead of Authorization: Bearer."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        async with httpx.AsyncClient(base_url=live.url, headers={"X-API-Key": API_KEY}) as other:
            response = await other.get("/v1/models")
        assert response.status_code == 200
        assert [m["id"] for m in response.json()["data"]] == ["default"]
