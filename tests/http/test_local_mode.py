"""With no API key configured, the loopback-only server answers without a key."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.http.live import live_server


async def test_no_key_configured_serves_loopback_clients_without_a_key(tmp_path: Path) -> None:
    """No server.api_key on 127.0.0.1: models and chat answer requests that carry no key."""
    async with (
        live_server(tmp_path / "data", api_key=None) as live,
        httpx.AsyncClient(base_url=live.url) as anonymous,
    ):
        models = await anonymous.get("/v1/models")
        assert models.status_code == 200, models.text
        chat = await anonymous.post(
            "/v1/chat/completions",
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.json()["choices"][0]["message"]["content"] == "Echo: hi"
