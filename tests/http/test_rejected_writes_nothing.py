"""A request the server refuses leaves the log as it was: no event, not even a failure record
for an actor the request named but that never existed. And agents the server could not run
are refused when they are created, not at their first run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.http.live import live_server

REFUSED: list[tuple[str, str, Any]] = [
    ("GET", "/v1/agents/ghost", None),
    ("PATCH", "/v1/agents/ghost", {"system_prompt": "x"}),
    ("DELETE", "/v1/agents/ghost", None),
    ("POST", "/v1/agents/ghost/wake", {"message": "hi"}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
    ),
    ("POST", "/v1/responses", {"model": "ghost", "input": "x"}),
    (
        "POST",
        "/v1/responses",
        {"model": "default", "input": "x", "previous_response_id": "resp_run_ghost"},
    ),
    # Ids no run can have: empty, with a NUL, too long for a stream name.
    ("POST", "/v1/responses", {"model": "default", "input": "x", "previous_response_id": ""}),
    ("POST", "/v1/responses", {"input": "x", "previous_response_id": "resp_\u0000"}),
    ("POST", "/v1/responses", {"input": "x", "previous_response_id": "r" * 300}),
    ("GET", "/v1/responses/resp_run_ghost", None),
    ("POST", "/v1/responses/resp_run_ghost/cancel", None),
    ("GET", "/v1/runs/run_ghost", None),
    ("POST", "/v1/runs/run_ghost/cancel", None),
    ("GET", "/v1/sessions/ghost", None),
    ("POST", "/v1/sessions/ghost/fork", {"at_seq": 1}),
    ("POST", "/v1/sessions/ghost/reset", None),
    ("POST", "/v1/agents", {"id": "bad", "provider": "nowhere"}),
    ("POST", "/v1/agents", {"id": "bad", "tools": ["no_such_tool"]}),
    ("POST", "/v1/agents", {"id": "bad", "max_tokens": 18446744073709551616}),
    ("PATCH", "/v1/agents/default", {"tools": ["no_such_tool"]}),
    ("POST", "/v1/sessions/ghost/fork", {"at_seq": 18446744073709551616}),
]


async def test_refused_requests_append_nothing(tmp_path: Path) -> None:
    """Each refused request answers 4xx and the log's head does not move."""
    async with live_server(tmp_path / "data") as live:
        head = await live.head_seq()
        for method, path, body in REFUSED:
            answer = await live.client.request(method, path, json=body)
            assert 400 <= answer.status_code < 500, (method, path, answer.text)
            after = await live.head_seq()
            assert after == head, (method, path, answer.status_code)


async def test_agents_the_server_cannot_run_are_refused(tmp_path: Path) -> None:
    """An unconfigured provider or an unknown tool is a 400 naming the field."""
    async with live_server(tmp_path / "data") as live:
        provider = await live.client.post("/v1/agents", json={"id": "a1", "provider": "nowhere"})
        assert provider.status_code == 400
        assert provider.json()["error"]["param"] == "provider"
        tool = await live.client.post("/v1/agents", json={"id": "a1", "tools": ["clock", "nope"]})
        assert tool.status_code == 400
        assert tool.json()["error"]["param"] == "tools.1"
        fine = await live.client.post("/v1/agents", json={"id": "a1", "tools": ["clock"]})
        assert fine.status_code == 201, fine.text
