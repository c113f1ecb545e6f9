"""A real `serve` (Hypercorn on 127.0.0.1, port 0) in the test's nursery, and helpers to read it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cuelog.http._config import load_settings
from cuelog.http._server import serve
from tests.postgres import fresh_database

API_KEY = "test-admin-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Live:
    """A running server and a client that sends the admin key."""

    url: str
    client: httpx.AsyncClient

    async def head_seq(self) -> int:
        response = await self.client.get("/v1/health")
        assert response.status_code == 200, response.text
        head: int = response.json()["head_seq"]
        return head

    async def count_events(self, event_type: str, prefix: str | None = None) -> int:
        """How many events of `event_type` the whole log holds (read page by page)."""
        count, after = 0, 0
        while True:
            params: dict[str, Any] = {"after": after, "limit": 1000}
            if prefix is not None:
                params["prefix"] = prefix
            page = (await self.client.get("/v1/events", params=params)).json()
            count += sum(1 for event in page["data"] if event["type"] == event_type)
            if page["next_cursor"] is None:
                return count
            after = page["next_cursor"]


@asynccontextmanager
async def live_server(
    data_dir: Path,
    *,
    api_key: str | None = API_KEY,
    backend: str = "lmdb",
    log_settings: dict[str, Any] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    **server: Any,
) -> AsyncIterator[Live]:
    """Serve on a fresh port until the block ends, then shut down and wait for it.

    `backend` is `lmdb` (the data dir), `memory` (the in-memory log: the same API on another
    `EventLog`) or `postgres` (a fresh database on the local PostgreSQL, dropped afterwards);
    `log_settings` sets more `[log]` keys, `sections` keys of other sections."""
    extra = log_settings or {}
    if backend == "postgres":
        with fresh_database() as database:
            async with _serve(data_dir, database, api_key, server, extra, sections) as live:
                yield live
        return
    url = "memory:" if backend == "memory" else None
    async with _serve(data_dir, url, api_key, server, extra, sections) as live:
        yield live


@asynccontextmanager
async def _serve(
    data_dir: Path,
    url: str | None,
    api_key: str | None,
    server: dict[str, Any],
    log_settings: dict[str, Any],
    sections: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[Live]:
    stop = trio.Event()
    log = {"data_dir": data_dir, "url": url, **log_settings}
    settings = load_settings(
        None,
        environ={},
        flags={
            **(sections or {}),
            "server": {"port": 0, "api_key": api_key, **server},
            "log": log,
        },
    )
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                settings, shutdown=stop, handle_signals=False, task_status=task_status
            )
        )
        url = binds[0]
        headers = AUTH if api_key is not None else {}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            try:
                yield Live(url, client)
            finally:
                stop.set()


def sse_frames(raw: bytes) -> list[bytes]:
    """Split an SSE body into complete frames (each ending with a blank line)."""
    parts = raw.split(b"\n\n")
    return [part + b"\n\n" for part in parts[:-1]]


def frame_id(frame: bytes) -> int | None:
    for line in frame.split(b"\n"):
        if line.startswith(b"id: "):
            return int(line[4:])
    return None


def frame_data(frame: bytes) -> bytes:
    return b"\n".join(line[6:] for line in frame.split(b"\n") if line.startswith(b"data: "))


# Tests that need no restart run against every log backend: the HTTP API must not depend on LMDB.
on_every_backend = pytest.mark.parametrize("backend", ["lmdb", "memory", "postgres"])
