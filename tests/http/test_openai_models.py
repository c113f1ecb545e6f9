"""What a request's `model` may say: an agent id, `agent:ID`, or an alias from `models.aliases`;
and `/v1/models` giving each agent's real creation time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cuelog.http._config import ConfigError, load_settings
from tests.http.live import live_server

ALIASES = {"models": {"aliases": {"dotcraft": "default", "gpt-4o": "default"}}}


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def test_aliases_and_agent_prefix_name_the_agent(tmp_path: Path) -> None:
    """`dotcraft` (an alias) and `agent:default` both reach the default agent, in chat and
    Responses; a name that is neither is still 404."""
    async with live_server(tmp_path / "data", sections=ALIASES) as live:
        for model in ("dotcraft", "gpt-4o", "agent:default"):
            chat = await live.client.post("/v1/chat/completions", json=_chat(model))
            assert chat.status_code == 200, chat.text
            assert chat.json()["model"] == model
            run = (await live.client.get(f"/v1/runs/{chat.headers['x-run-id']}")).json()
            assert run["agent_id"] == "default"
        responses = await live.client.post(
            "/v1/responses", json={"model": "dotcraft", "input": "hi"}
        )
        assert responses.status_code == 200, responses.text
        assert responses.json()["output"][0]["content"][0]["text"] == "Echo: hi"
        missing = await live.client.post("/v1/chat/completions", json=_chat("agent:nobody"))
        assert missing.status_code == 404
        default = (await live.client.get("/v1/models/default")).json()
        aliased = (await live.client.get("/v1/models/dotcraft")).json()
        assert aliased == {**default, "id": "dotcraft"}
        listed = (await live.client.get("/v1/models")).json()["data"]
        assert {"default", "dotcraft", "gpt-4o"} <= {m["id"] for m in listed}


async def test_models_carry_their_creation_time(tmp_path: Path) -> None:
    """Each model's `created` is when its agent was created, not 0."""
    before = int(time.time())
    async with live_server(tmp_path / "data") as live:
        made = await live.client.post("/v1/agents", json={"id": "fresh"})
        assert made.status_code == 201, made.text
        models = (await live.client.get("/v1/models")).json()["data"]
        created = {m["id"]: m["created"] for m in models}
        assert before - 1 <= created["default"] <= created["fresh"] <= int(time.time()) + 1
        one = (await live.client.get("/v1/models/fresh")).json()
        assert one["created"] == created["fresh"]


def test_an_alias_must_name_an_agent_id() -> None:
    """An alias whose target cannot be an agent id is refused at start, naming the key."""
    with pytest.raises(ConfigError, match=r"models\.aliases\.bad"):
        load_settings(None, environ={}, flags={"models": {"aliases": {"bad": "no spaces"}}})


async def test_end_users_are_recorded_and_sessions_list_by_them(tmp_path: Path) -> None:
    """`safety_identifier`, `user` or the X-End-User header name the end user under one key:
    the session records it as user_id and `GET /v1/sessions?user_id=` lists by it."""
    async with live_server(tmp_path / "data") as live:
        chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        first = await live.client.post(
            "/v1/chat/completions", json={**chat, "safety_identifier": "hash-alice"}
        )
        second = await live.client.post(
            "/v1/responses", json={"model": "default", "input": "hi", "user": "bob"}
        )
        third = await live.client.post(
            "/v1/chat/completions", json=chat, headers={"X-End-User": "hash-alice"}
        )
        for answer in (first, second, third):
            assert answer.status_code == 200, answer.text
        listed = await live.client.get("/v1/sessions", params={"user_id": "hash-alice"})
        keys = {s["key"] for s in listed.json()["data"]}
        assert keys == {first.headers["x-session-key"], third.headers["x-session-key"]}
        session = (await live.client.get(f"/v1/sessions/{second.headers['x-session-key']}")).json()
        assert session["metadata"] == {"user_id": "bob"}
