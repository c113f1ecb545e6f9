"""Session endpoints: list with cursor and agent filter, patch, reset, delete, events; restart."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.http.live import live_server


async def _wake(client: httpx.AsyncClient, agent: str, key: str) -> None:
    response = await client.post(
        f"/v1/agents/{agent}/wake", json={"message": f"hello {key}", "session_key": key}
    )
    assert response.status_code == 200, response.text


async def test_sessions_list_pages_with_cursor_and_filters_by_agent(tmp_path: Path) -> None:
    """Listing with limit=2 walks every session once; agent_id keeps only that agent's."""
    async with live_server(tmp_path / "data") as live:
        created = await live.client.post("/v1/agents", json={"id": "helper"})
        assert created.status_code == 201, created.text
        for i in range(5):
            await _wake(live.client, "default", f"d{i}")
        for i in range(2):
            await _wake(live.client, "helper", f"h{i}")
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await live.client.get("/v1/sessions", params=params)).json()
            assert len(page["data"]) <= 2
            seen += [s["key"] for s in page["data"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted([f"d{i}" for i in range(5)] + ["h0", "h1"])
        assert len(seen) == len(set(seen)) and pages >= 4
        helper = (await live.client.get("/v1/sessions", params={"agent_id": "helper"})).json()
        assert [s["key"] for s in helper["data"]] == ["h0", "h1"]
        assert {s["agent_id"] for s in helper["data"]} == {"helper"}


async def test_session_patch_reset_and_delete(tmp_path: Path) -> None:
    """PATCH changes the label, reset empties history, DELETE makes the session 404."""
    async with live_server(tmp_path / "data") as live:
        await _wake(live.client, "default", "s1")
        patched = await live.client.patch(
            "/v1/sessions/s1", json={"label": "demo", "metadata": {"team": "a"}}
        )
        assert patched.status_code == 200, patched.text
        view = (await live.client.get("/v1/sessions/s1")).json()
        assert view["label"] == "demo" and view["metadata"] == {"team": "a"}
        assert len(view["messages"]) == 2
        reset = await live.client.post("/v1/sessions/s1/reset")
        assert reset.status_code == 200
        assert (await live.client.get("/v1/sessions/s1")).json()["messages"] == []
        bad_patch = await live.client.patch("/v1/sessions/s1", json={"busy_policy": "later"})
        assert bad_patch.status_code == 400
        deleted = await live.client.delete("/v1/sessions/s1")
        assert deleted.status_code == 200
        assert (await live.client.get("/v1/sessions/s1")).status_code == 404
        listed = (await live.client.get("/v1/sessions")).json()
        assert "s1" not in [s["key"] for s in listed["data"]]


async def test_session_events_page_in_seq_order_with_cursor(tmp_path: Path) -> None:
    """A session's events come as JSON pages in seq order; next_cursor continues after the page."""
    async with live_server(tmp_path / "data") as live:
        await _wake(live.client, "default", "s2")
        await _wake(live.client, "default", "s2")
        everything = (await live.client.get("/v1/sessions/s2/events")).json()
        types = [e["type"] for e in everything["data"]]
        assert types[0] == "SessionCreated"
        assert types.count("MessageAccepted") == 2 and types.count("RunSettled") == 2
        assert {e["stream"] for e in everything["data"]} == {"session:s2"}
        first = (await live.client.get("/v1/sessions/s2/events", params={"limit": 3})).json()
        assert len(first["data"]) == 3 and first["next_cursor"] == first["data"][-1]["seq"]
        rest = (
            await live.client.get("/v1/sessions/s2/events", params={"after": first["next_cursor"]})
        ).json()
        assert first["data"] + rest["data"] == everything["data"]


async def test_sessions_and_runs_survive_a_restart(tmp_path: Path) -> None:
    """After restarting on the same data dir, sessions and runs read back as before."""
    data = tmp_path / "data"
    async with live_server(data) as live:
        first = await live.client.post(
            "/v1/agents/default/wake", json={"message": "remember me", "session_key": "keep"}
        )
        run_id = first.json()["run_id"]
        session_before = (await live.client.get("/v1/sessions/keep")).json()
        run_before = (await live.client.get(f"/v1/runs/{run_id}")).json()
    async with live_server(data) as live:
        assert (await live.client.get("/v1/sessions/keep")).json() == session_before
        assert (await live.client.get(f"/v1/runs/{run_id}")).json() == run_before
        again = await live.client.post(
            "/v1/agents/default/wake", json={"message": "still here", "session_key": "keep"}
        )
        assert again.status_code == 200
        messages = (await live.client.get("/v1/sessions/keep")).json()["messages"]
        assert [m["content"] for m in messages] == [
            "remember me",
            "Echo: remember me",
            "still here",
            "Echo: still here",
        ]
