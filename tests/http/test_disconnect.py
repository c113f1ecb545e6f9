"""A client that goes away cancels its run only when it asked to (X-Cuelog-On-Disconnect)."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.http.live import Live, live_server

WAITING_TOOL = '/tool calculator {"expr": "6 * 7"}'


async def _careful_agent(live: Live) -> None:
    response = await live.client.post(
        "/v1/agents", json={"id": "careful", "tools": ["calculator"], "approval": "ask"}
    )
    assert response.status_code == 201, response.text


async def _drop_a_stream(live: Live, headers: dict[str, str]) -> str:
    """Start a streaming chat whose run waits for an approval, read a frame, hang up."""
    body = {
        "model": "careful",
        "stream": True,
        "messages": [{"role": "user", "content": WAITING_TOOL}],
    }
    async with live.client.stream(
        "POST", "/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        run_id = response.headers["x-run-id"]
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break
    return run_id


async def _status_after(live: Live, run_id: str, wanted: str) -> str:
    status = ""
    with trio.move_on_after(5):
        while status != wanted:
            status = (await live.client.get(f"/v1/runs/{run_id}")).json()["status"]
            await trio.sleep(0.02)
    return status


async def test_a_dropped_stream_cancels_its_run_when_asked(tmp_path: Path) -> None:
    """With X-Cuelog-On-Disconnect: cancel, hanging up a chat stream cancels its run."""
    async with live_server(tmp_path / "data") as live:
        await _careful_agent(live)
        run_id = await _drop_a_stream(live, {"X-Cuelog-On-Disconnect": "cancel"})
        assert await _status_after(live, run_id, "cancelled") == "cancelled"


async def test_a_dropped_stream_leaves_its_run_going_by_default(tmp_path: Path) -> None:
    """Without the header, hanging up a chat stream leaves the run waiting for its approval."""
    async with live_server(tmp_path / "data") as live:
        await _careful_agent(live)
        run_id = await _drop_a_stream(live, {})
        assert await _status_after(live, run_id, "waiting_approval") == "waiting_approval"
        await trio.sleep(0.3)
        assert (await live.client.get(f"/v1/runs/{run_id}")).json()["status"] == "waiting_approval"


async def test_a_sync_wake_whose_client_leaves_is_cancelled_when_asked(tmp_path: Path) -> None:
    """A sync wake that times out on the client side with the header cancels its run."""
    async with live_server(tmp_path / "data") as live:
        await _careful_agent(live)
        with trio.move_on_after(1):
            await live.client.post(
                "/v1/agents/careful/wake",
                json={"message": WAITING_TOOL, "session_key": "leaving"},
                headers={"X-Cuelog-On-Disconnect": "cancel"},
            )
        session = (await live.client.get("/v1/sessions/leaving")).json()
        run_id = session["current_run"] or session["recent_runs"][-1]
        assert await _status_after(live, run_id, "cancelled") == "cancelled"
