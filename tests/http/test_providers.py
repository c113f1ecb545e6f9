"""The provider registry through the API, against a real OpenAI-shaped server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from tests.actors.test_models_openai import KEY, MODELS, FakeUpstream, text_stream
from tests.http.live import Live, live_server, on_every_backend

HEADER_SECRET = "org-secret-header-value-42"
CUELOG = str(Path(sys.executable).parent / "cuelog")


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    app: Any = fake
    binds = await nursery.start(
        lambda task_status: hypercorn_serve(
            app, config, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    fake.url = binds[0] + "/v1"
    yield fake
    stop.set()


def provider_body(url: str) -> dict[str, Any]:
    return {
        "id": "up",
        "base_url": url,
        "api_key": KEY,
        "default_model": "gpt-test",
        "headers": {"X-Org": HEADER_SECRET},
        "read_timeout": 30,
    }


async def all_events_text(live: Live) -> str:
    texts, after = [], 0
    while True:
        response = await live.client.get("/v1/events", params={"after": after, "limit": 1000})
        texts.append(response.text)
        page = response.json()
        if page["next_cursor"] is None:
            return "".join(texts)
        after = page["next_cursor"]


@on_every_backend
async def test_registry_provider_verifies_lists_models_and_runs_an_agent(
    tmp_path: Path, backend: str, upstream: FakeUpstream
) -> None:
    """A provider added through the API verifies, lists the upstream's models and answers an
    agent that names it (with its key and headers), and neither the key nor a header value
    is in any answer or in the log."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        created = await live.client.post("/v1/providers", json=provider_body(upstream.url))
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["has_api_key"] and body["status"] == "ready"
        assert body["headers"] == {"X-Org": "********"}

        upstream.replies.append(text_stream("p"))
        verified = await live.client.post("/v1/providers/up/verify", json={})
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"] and verified.json()["model"] == "gpt-test"
        assert upstream.requests[-1].body["max_tokens"] == 1

        models = await live.client.get("/v1/providers/up/models")
        assert models.status_code == 200, models.text
        assert [m["id"] for m in models.json()["data"]] == MODELS

        agent = {"id": "a", "provider": "up", "model": "gpt-test-mini"}
        assert (await live.client.post("/v1/agents", json=agent)).status_code == 201
        upstream.replies.append(text_stream("Hello ", "from up"))
        woke = await live.client.post("/v1/agents/a/wake", json={"message": "hi"})
        assert woke.status_code == 200, woke.text
        assert woke.json()["content"] == "Hello from up"
        seen = upstream.requests[-1]
        assert seen.body["model"] == "gpt-test-mini"
        assert seen.headers["authorization"] == f"Bearer {KEY}"
        assert seen.headers["x-org"] == HEADER_SECRET

        answers = [
            created.text,
            verified.text,
            (await live.client.get("/v1/providers")).text,
            (await live.client.get("/v1/providers/up")).text,
            await all_events_text(live),
        ]
        for text in answers:
            assert KEY not in text and HEADER_SECRET not in text

        # A wrong key fails verify with the upstream's reason, without echoing the key.
        wrong = "sk-wrong-key-9876543210"
        patched = await live.client.patch("/v1/providers/up", json={"api_key": wrong})
        assert patched.status_code == 200 and wrong not in patched.text
        failed = await live.client.post("/v1/providers/up/verify", json={})
        assert failed.json()["ok"] is False and "401" in failed.json()["error"]
        assert wrong not in failed.text

        assert (await live.client.delete("/v1/providers/up")).status_code == 200
        woke = await live.client.post("/v1/agents/a/wake", json={"message": "hi"})
        assert woke.json()["status"] == "failed" and "up" in woke.json()["error"]


async def test_bad_provider_bodies_are_refused_and_write_nothing(tmp_path: Path) -> None:
    """A non-http URL, a taken built-in name, an unknown field and a timeout of 0 are 400/409
    and write nothing."""
    async with live_server(tmp_path / "data") as live:
        head = await live.head_seq()
        cases = [
            ({"id": "x", "base_url": "ftp://h"}, 400),
            ({"id": "echo", "base_url": "http://127.0.0.1:9/v1"}, 409),
            ({"id": "x", "base_url": "http://127.0.0.1:9/v1", "bogus": 1}, 400),
            ({"id": "x", "base_url": "http://127.0.0.1:9/v1", "read_timeout": 0}, 400),
        ]
        for body, status in cases:
            response = await live.client.post("/v1/providers", json=body)
            assert response.status_code == status, response.text
        assert await live.head_seq() == head
        assert (await live.client.get("/v1/providers/nope")).status_code == 404


async def export_text(data: Path) -> str:
    """`cuelog export` of the log, with each event's hashed body decoded too."""
    result = await trio.run_process(
        [CUELOG, "export", "--jsonl", str(data)], capture_stdout=True, capture_stderr=True
    )
    out = result.stdout.decode()
    decoded = [
        base64.b64decode(json.loads(line)["body"]).decode(errors="replace")
        for line in out.splitlines()
    ]
    return out + "\n".join(decoded)


async def test_provider_survives_restart_and_delete_destroys_its_key(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """A registry provider works again after a restart (its key file is read), the log and
    `cuelog export` never hold the key, and deleting it removes its data key from the key file,
    so the sealed secrets left in the log can no longer be opened."""
    data = tmp_path / "data"
    key_file = data / "provider-keys.json"
    agent = {"id": "a", "provider": "up", "model": ""}  # empty: the provider's default model
    async with live_server(data) as live:
        assert (
            await live.client.post("/v1/providers", json=provider_body(upstream.url))
        ).is_success
        assert (await live.client.post("/v1/agents", json=agent)).status_code == 201
    assert key_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    async with live_server(data) as live:
        upstream.replies.append(text_stream("after restart"))
        woke = await live.client.post("/v1/agents/a/wake", json={"message": "hi"})
        assert woke.json()["content"] == "after restart", woke.text
        assert upstream.requests[-1].body["model"] == "gpt-test"
    exported = await export_text(data)
    assert "ProviderSaved" in exported
    assert KEY not in exported and HEADER_SECRET not in exported
    [key_id] = json.loads(key_file.read_text())
    assert key_id in exported  # the log names the key, the key file holds it
    async with live_server(data) as live:
        assert (await live.client.delete("/v1/providers/up")).status_code == 200
    assert json.loads(key_file.read_text()) == {}
    assert KEY not in key_file.read_text()
