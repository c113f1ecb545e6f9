"""Scans over many streams stay bounded: a listing that matches nothing pages instead of holding
the server (or, for sessions, reads the catalog's index and finds nothing at once), and `/health`
keeps answering while it runs."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from cuelog.actors import DOMAIN_EVENTS
from cuelog.runtime import open_event_log
from tests.http.live import Live, live_server

SESSIONS = 30_000
HEALTH_BUDGET = 0.1  # seconds: far above a checkpointed scan, far below an unbounded one

SessionCreated = next(cls for cls in DOMAIN_EVENTS if cls.__name__ == "SessionCreated")


async def fill_log(data_dir: Path, sessions: int) -> None:
    """Write `sessions` sessions owned by a key nobody holds, straight to the log (fast)."""
    async with open_event_log(data_dir, sync=False) as log:
        numbers = iter(range(sessions))

        async def writer() -> None:
            for n in numbers:
                created = SessionCreated(session_key=f"s{n:06d}", agent_id="default", owner="key_x")
                await log.append(f"session:s{n:06d}", [created])

        async with trio.open_nursery() as nursery:
            for _ in range(64):
                nursery.start_soon(writer)


async def slowest_health(live: Live, scan: Callable[[], Awaitable[Any]]) -> float:
    """Run `scan` while a thread probes `/health` every 5 ms; return the slowest probe in
    seconds. The probe runs outside the event loop, so a handler that holds the loop shows.

    The server runs in the test process, which holds what every earlier test left: that heap is
    frozen first (as `cuelog serve` freezes what start-up built), so a full collection of it is
    not counted as the server's pause."""
    stop = threading.Event()
    gc.collect()
    gc.freeze()

    def probing() -> float:
        worst = 0.0
        with httpx.Client(base_url=live.url, timeout=30) as probe:
            probe.get("/health")  # connect first: only the answer time is measured
            while not stop.is_set():
                started = time.perf_counter()
                response = probe.get("/health")
                assert response.status_code == 200
                worst = max(worst, time.perf_counter() - started)
                time.sleep(0.005)
        return worst

    try:
        async with trio.open_nursery() as nursery:
            result: list[float] = []

            async def probe() -> None:
                result.append(await trio.to_thread.run_sync(probing))

            nursery.start_soon(probe)
            await trio.sleep(0.1)
            try:
                await scan()
            finally:
                stop.set()
    finally:
        gc.unfreeze()
    return result[0]


async def follow_pages(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], cursor_param: str
) -> list[dict[str, Any]]:
    """Every page of a listing, following `next_cursor` to the end."""
    pages = []
    while True:
        response = await client.get(path, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        if page["next_cursor"] is None:
            return pages
        params = {**params, cursor_param: page["next_cursor"]}


async def test_listings_that_match_nothing_page_and_keep_health_answering(
    tmp_path: Path,
) -> None:
    """Listing sessions as a key that owns none, by an unknown agent, the firehose and the audit
    view with filters that match nothing answer in bounded pages while `/health` stays fast."""
    await fill_log(tmp_path, SESSIONS)
    async with live_server(tmp_path) as live:
        made = await live.client.post("/v1/keys", json={"name": "reader", "scopes": ["read"]})
        reader = {"Authorization": f"Bearer {made.json()['key']}"}
        async with httpx.AsyncClient(base_url=live.url, headers=reader, timeout=30) as client:
            scans: list[tuple[str, httpx.AsyncClient, str, dict[str, Any], str]] = [
                ("sessions as a stranger", client, "/v1/sessions", {"limit": 50}, "cursor"),
                (
                    "sessions of no agent",
                    live.client,
                    "/v1/sessions",
                    {"agent_id": "nope"},
                    "cursor",
                ),
                ("firehose, no match", live.client, "/v1/events", {"prefix": "nomatch"}, "after"),
                ("audit, no match", live.client, "/v1/audit/events", {"actor": "nobody"}, "cursor"),
            ]
            for what, who, path, params, cursor_param in scans:
                pages: list[dict[str, Any]] = []

                async def scan() -> None:
                    pages.extend(await follow_pages(who, path, params, cursor_param))  # noqa: B023

                worst = await slowest_health(live, scan)
                if path == "/v1/sessions":  # the sessions catalog's indexes: nothing to scan
                    assert len(pages) == 1, f"{what}: the catalog's index was not used"
                else:
                    assert len(pages) > 2, f"{what}: the scan did not page"
                assert worst < HEALTH_BUDGET, f"{what}: /health took {worst * 1000:.0f} ms"
                assert all(page["data"] == [] for page in pages), what
