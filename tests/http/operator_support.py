"""A real in-process server for the operator tests, with its route table and key helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import trio
from quart_trio import QuartTrio

from cuelog.http import _server
from cuelog.http._auth import RouteInfo
from cuelog.http._config import load_settings

API_KEY = "operator-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Served:
    """A running server, an admin client, and the app's route table."""

    url: str
    admin: httpx.AsyncClient
    routes: list[RouteInfo]

    async def new_key(self, *scopes: str, name: str = "test") -> tuple[str, str]:
        """Issue a key with `scopes` through the API; return its id and secret."""
        response = await self.admin.post("/v1/keys", json={"name": name, "scopes": list(scopes)})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], body["key"]

    async def create_agent(self, agent_id: str, **spec: Any) -> None:
        response = await self.admin.post("/v1/agents", json={"id": agent_id, **spec})
        assert response.status_code == 201, response.text


@asynccontextmanager
async def serving(
    data_dir: Path,
    *,
    log: dict[str, Any] | None = None,
    tools: dict[str, Any] | None = None,
    **server: Any,
) -> AsyncIterator[Served]:
    """Serve on 127.0.0.1, port 0, until the block ends; capture the app to read its routes."""
    apps: list[QuartTrio] = []
    real_create_app: Callable[..., QuartTrio] = getattr(_server, "create_app")  # noqa: B009

    def capture(*args: Any, **kwargs: Any) -> QuartTrio:
        app = real_create_app(*args, **kwargs)
        apps.append(app)
        return app

    settings = load_settings(
        None,
        environ={},
        flags={
            "server": {"port": 0, "api_key": API_KEY, **server},
            "log": {"data_dir": data_dir, **(log or {})},
            "tools": tools or {},
        },
    )
    stop = trio.Event()
    with mock.patch.object(_server, "create_app", capture):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: _server.serve(
                    settings, shutdown=stop, handle_signals=False, task_status=task_status
                )
            )
            table: list[RouteInfo] = apps[0].extensions["cuelog.routes"].table
            async with httpx.AsyncClient(base_url=binds[0], headers=AUTH, timeout=30) as admin:
                try:
                    yield Served(binds[0], admin, list(table))
                finally:
                    stop.set()


def sse_events(raw: bytes) -> list[tuple[str | None, bytes]]:
    """(event type, data) of every complete frame in an SSE body."""
    out: list[tuple[str | None, bytes]] = []
    for frame in raw.split(b"\n\n")[:-1]:
        kind: str | None = None
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:])
        out.append((kind, b"\n".join(data)))
    return out
