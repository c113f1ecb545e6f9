"""A chat request through cuelog to an OpenAI-compatible upstream (a real server on 127.0.0.1):
the upstream gets the request's limit, client functions, tool_choice and other fields, and a
call of a client function it answers comes back to the client as `tool_calls`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.actors.test_models_openai import (
    DONE,
    KEY,
    FakeUpstream,
    Stream,
    chunk,
    text_stream,
    upstream,
    usage_chunk,
)
from tests.http.live import live_server

__all__ = ["upstream"]  # the fixture, used by name

LOOKUP = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}


def _call_stream() -> Stream:
    call = {"index": 0, "id": "call_up", "function": {"name": "lookup", "arguments": '{"q":1}'}}
    frames = [chunk({"role": "assistant", "tool_calls": [call]}), chunk({}, "tool_calls")]
    return Stream([*frames, usage_chunk(7, 3), DONE])


async def test_request_fields_reach_the_upstream_and_client_calls_come_back(
    tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_completion_tokens, tools (beside the agent's), tool_choice, seed and
    response_format are sent upstream; the upstream's call of the client function ends the
    run with tool_calls, and the tool result goes upstream in the next request."""
    monkeypatch.setenv("UPSTREAM_KEY", KEY)
    model = {"provider": "openai", "base_url": upstream.url, "api_key_env": "UPSTREAM_KEY"}
    upstream.replies.extend([_call_stream(), text_stream("done")])
    async with live_server(tmp_path / "data", sections={"model": model}) as live:
        messages = [{"role": "user", "content": "look it up"}]
        body = {
            "model": "default",
            "messages": messages,
            "tools": [LOOKUP],
            "tool_choice": "required",
            "max_completion_tokens": 33,
            "seed": 5,
            "response_format": {"type": "json_object"},
            "safety_identifier": "user-1",
        }
        first = await live.client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        choice = first.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"] == [
            {
                "id": "call_up",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q":1}'},
            }
        ]
        sent = upstream.requests[0].body
        assert sent["max_completion_tokens"] == 33 and "max_tokens" not in sent
        assert sent["seed"] == 5
        assert sent["tool_choice"] == "required"
        assert sent["response_format"] == {"type": "json_object"}
        assert {t["function"]["name"] for t in sent["tools"]} == {"clock", "calculator", "lookup"}
        assert "safety_identifier" not in sent  # recorded, not passed on
        follow = {
            **body,
            "messages": [
                *messages,
                choice["message"],
                {"role": "tool", "tool_call_id": "call_up", "content": "found"},
            ],
        }
        second = await live.client.post("/v1/chat/completions", json=follow)
        assert second.json()["choices"][0]["message"]["content"] == "done"
        tail = upstream.requests[1].body["messages"][-2:]
        assert tail[0]["tool_calls"][0]["id"] == "call_up"
        assert tail[1] == {"role": "tool", "content": "found", "tool_call_id": "call_up"}
