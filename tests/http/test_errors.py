"""Unknown routes and wrong methods answer the OpenAI-shaped error body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from cuelog.http._config import load_settings
from cuelog.http._server import serve


@pytest.fixture
async def base_url(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[str]:
    stop = trio.Event()
    settings = load_settings(
        None, environ={}, flags={"server": {"port": 0}, "log": {"data_dir": tmp_path / "data"}}
    )
    binds = await nursery.start(
        lambda task_status: serve(
            settings, shutdown=stop, handle_signals=False, task_status=task_status
        )
    )
    yield binds[0]
    stop.set()


async def test_unknown_route_is_openai_shaped_404(base_url: str) -> None:
    """GET on a route that does not exist gives 404 with {"error": {...}}."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base_url}/v1/nope")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found_error"
    assert set(error) == {"message", "type", "code", "param"}


async def test_wrong_method_is_openai_shaped_405(base_url: str) -> None:
    """POST on a GET-only route gives 405 with an Allow header and the error body."""
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base_url}/health")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]
    assert response.json()["error"]["code"] == "method_not_allowed"
