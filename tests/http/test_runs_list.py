"""GET /v1/runs: the runs catalog, newest first, filtered and paged; the run document's
duration, steps and tool calls; a key sees only its own runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.live import live_server, on_every_backend
from tests.http.operator_support import bearer, serving

CALC = '/tool calculator {"expr": "6*7"}'


async def _wake(client: httpx.AsyncClient, agent: str, key: str, message: str, **extra: Any) -> str:
    response = await client.post(
        f"/v1/agents/{agent}/wake", json={"message": message, "session_key": key, **extra}
    )
    assert response.status_code == 200, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def _all_pages(client: httpx.AsyncClient, **params: str) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/runs", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        rows += page["data"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return rows, pages


@on_every_backend
async def test_runs_list_filters_pages_and_counts(tmp_path: Path, backend: str) -> None:
    """Every run is listed once, newest first, over pages; agent, session, user, status and
    time filters keep only theirs; rows carry steps, tool calls, usage and duration."""
    async with live_server(tmp_path / "data", backend=backend, auto_approve=True) as live:
        helper_spec = {"id": "helper", "tools": ["calculator"]}
        created = await live.client.post("/v1/agents", json=helper_spec)
        assert created.status_code == 201, created.text
        before = datetime.now(UTC) - timedelta(seconds=1)
        plain = [await _wake(live.client, "default", f"d{i}", f"hello {i}") for i in range(4)]
        tooled = await _wake(live.client, "helper", "h0", CALC, user_id="alice")
        everyone, pages = await _all_pages(live.client, limit="2")
        assert [row["id"] for row in everyone] == [tooled, *reversed(plain)]
        assert pages == 3
        helper = (await live.client.get("/v1/runs", params={"agent": "helper"})).json()["data"]
        assert [row["id"] for row in helper] == [tooled]
        row = helper[0]
        assert (row["status"], row["session_key"], row["user_id"]) == ("completed", "h0", "alice")
        assert row["steps"] == 2 and row["tool_call_count"] == 1
        assert row["usage"]["total_tokens"] > 0 and row["duration_ms"] >= 0
        assert (row["provider"], row["model"]) == ("echo", "echo-1")
        document = (await live.client.get(f"/v1/runs/{tooled}")).json()
        assert document["usage"] == row["usage"]
        assert (document["steps"], document["tool_call_count"]) == (2, 1)
        assert document["duration_ms"] == row["duration_ms"]
        session = (await live.client.get("/v1/runs", params={"session": "d1"})).json()["data"]
        assert [r["id"] for r in session] == [plain[1]]
        users = (await live.client.get("/v1/runs", params={"user": "alice"})).json()["data"]
        assert [r["id"] for r in users] == [tooled]
        failed = (await live.client.get("/v1/runs", params={"status": "failed"})).json()
        assert failed["data"] == []
        after = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        assert (await live.client.get("/v1/runs", params={"from": after})).json()["data"] == []
        window = {"from": before.isoformat(), "to": after}
        assert len((await live.client.get("/v1/runs", params=window)).json()["data"]) == 5


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-01-01T00:00:00"}, "to"),  # no offset
        ({"cursor": "abc"}, "cursor"),
        ({"status": "lost"}, "status"),
        ({"limit": "0"}, "limit"),
    ],
)
async def test_bad_runs_list_queries_are_refused(
    tmp_path: Path, params: dict[str, str], param: str
) -> None:
    """A malformed filter is a 400 naming the parameter."""
    async with live_server(tmp_path / "data") as live:
        response = await live.client.get("/v1/runs", params=params)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


async def test_a_key_lists_only_its_own_runs(tmp_path: Path) -> None:
    """A non-admin key sees the runs it started, never another key's; the admin sees all."""
    async with serving(tmp_path / "data") as served:
        _, mine = await served.new_key("read", "wake", name="mine")
        _, theirs = await served.new_key("read", "wake", name="theirs")
        started: dict[str, str] = {}
        for secret, key in ((mine, "sess-mine"), (theirs, "sess-theirs")):
            response = await served.admin.post(
                "/v1/agents/default/wake",
                json={"message": "hi", "session_key": key},
                headers=bearer(secret),
            )
            assert response.status_code == 200, response.text
            started[secret] = response.json()["run_id"]

        async def listed(secret: str, **params: str) -> list[str]:
            page = await served.admin.get("/v1/runs", params=params, headers=bearer(secret))
            assert page.status_code == 200, page.text
            return [row["id"] for row in page.json()["data"]]

        assert await listed(mine) == [started[mine]]
        assert await listed(theirs) == [started[theirs]]
        assert await listed(mine, session="sess-theirs") == []
        assert await listed(mine, agent="default") == [started[mine]]
        everyone = await served.admin.get("/v1/runs")
        assert {started[mine], started[theirs]} <= {r["id"] for r in everyone.json()["data"]}
