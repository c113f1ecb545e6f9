"""Loops over HTTP: create, read, list, change, toggle, fire now and delete; admin only to
change; bad triggers refused without writing; a 1-second loop fires on the real clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.http.live import live_server, on_every_backend


async def wait_status(client: httpx.AsyncClient, run_id: str) -> str:
    with trio.fail_after(30):
        while True:
            status: str = (await client.get(f"/v1/runs/{run_id}")).json()["status"]
            if status in {"completed", "failed", "cancelled"}:
                return status
            await trio.sleep(0.05)


@on_every_backend
async def test_loop_lifecycle(tmp_path: Path, backend: str) -> None:
    """A loop is created, read with its next fire, listed, changed, fired now (its run completes
    and shows in the history), toggled off and on, and deleted (then 404)."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        client = live.client
        created = await client.post(
            "/v1/loops",
            json={
                "id": "nightly",
                "agent": "default",
                "message": "report",
                "trigger": {"cron": "0 3 * * *", "tz": "Europe/Paris"},
            },
        )
        assert created.status_code == 201, created.text
        loop = created.json()
        assert loop["object"] == "loop" and loop["enabled"] and loop["fires"] == []
        assert loop["trigger"] == {"cron": "0 3 * * *", "tz": "Europe/Paris"}
        next_fire = datetime.fromtimestamp(loop["next_fire_at"], UTC)
        assert next_fire.astimezone(_paris()).hour == 3
        assert 0 < loop["next_fire_at"] - datetime.now(UTC).timestamp() <= 86400 + 3600

        listed = (await client.get("/v1/loops")).json()
        assert [item["id"] for item in listed["data"]] == ["nightly"]

        patched = await client.patch("/v1/loops/nightly", json={"message": "summary"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["message"] == "summary"

        fired = await client.post("/v1/loops/nightly/run")
        assert fired.status_code == 202, fired.text
        run_id = fired.json()["run_id"]
        assert fired.json()["manual"] is True
        assert await wait_status(client, run_id) == "completed"
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        assert run["content"] == "Echo: summary"
        loop = (await client.get("/v1/loops/nightly")).json()
        assert [(f["run_id"], f["status"]) for f in loop["fires"]] == [(run_id, "completed")]

        assert (await client.post("/v1/loops/nightly/toggle")).json()["enabled"] is False
        off = (await client.get("/v1/loops/nightly")).json()
        assert off["next_fire_at"] is None
        assert (await client.post("/v1/loops/nightly/toggle")).json()["enabled"] is True

        deleted = await client.delete("/v1/loops/nightly")
        assert deleted.json() == {"object": "loop", "deleted": True, "id": "nightly"}
        assert (await client.get("/v1/loops/nightly")).status_code == 404
        again = await client.post(
            "/v1/loops",
            json={"id": "nightly", "agent": "default", "message": "x", "trigger": {"every": 60}},
        )
        assert again.status_code == 409


async def test_one_second_loop_fires_on_the_real_clock_and_runs_name_the_loop(
    tmp_path: Path,
) -> None:
    """Every second: within a few seconds there are fires on distinct slots, one completed run
    each, recorded with the loop as the actor."""
    async with live_server(tmp_path / "data") as live:
        client = live.client
        body = {"id": "beat", "agent": "default", "message": "tick", "trigger": {"every": 1}}
        assert (await client.post("/v1/loops", json=body)).status_code == 201
        with trio.fail_after(30):
            while True:
                if len((await client.get("/v1/loops/beat")).json()["fires"]) >= 3:
                    break
                await trio.sleep(0.1)
        await client.post("/v1/loops/beat/toggle")
        fires = (await client.get("/v1/loops/beat")).json()["fires"]
        slots = [f["scheduled_at"] for f in fires]
        assert len(set(slots)) == len(slots)
        for fire in fires:
            assert await wait_status(client, fire["run_id"]) == "completed"
            timeline = (await client.get(f"/v1/runs/{fire['run_id']}/timeline")).json()
            started = [row for row in timeline["data"] if row["type"] == "RunStarted"]
            assert [row["actor"] for row in started] == ["loop:beat"]


async def test_bad_loops_are_refused_and_write_nothing(tmp_path: Path) -> None:
    """Two trigger kinds, a bad cron, an unknown zone, a past time, a missing agent and an
    unknown field are each a 400 (404 for the agent) and leave the log as it was."""
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    naive = datetime.now().replace(tzinfo=None).isoformat()
    base: dict[str, Any] = {"agent": "default", "message": "m"}
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({**base, "trigger": {"every": 5, "cron": "* * * * *"}}, 400, "trigger"),
        ({**base, "trigger": {}}, 400, "trigger"),
        ({**base, "trigger": {"cron": "61 * * * *"}}, 400, "trigger.cron"),
        ({**base, "trigger": {"cron": "* * * * *", "tz": "Mars/Olympus"}}, 400, "trigger.tz"),
        ({**base, "trigger": {"at": past}}, 400, "trigger.at"),
        ({**base, "trigger": {"at": naive}}, 400, "trigger.at"),
        ({**base, "trigger": {"every": 0}}, 400, "trigger.every"),
        ({**base, "trigger": {"every": 5}, "bogus": 1}, 400, None),
        ({"agent": "ghost", "message": "m", "trigger": {"every": 5}}, 404, None),
    ]
    async with live_server(tmp_path / "data") as live:
        head = await live.head_seq()
        for body, status, param in cases:
            response = await live.client.post("/v1/loops", json=body)
            assert response.status_code == status, (body, response.text)
            if param is not None:
                assert response.json()["error"]["param"] == param, response.text
        assert await live.head_seq() == head


async def test_loops_need_admin_to_change(tmp_path: Path) -> None:
    """A key with read and wake may list and read loops but not create, toggle or fire them."""
    async with live_server(tmp_path / "data") as live:
        body = {"id": "l1", "agent": "default", "message": "m", "trigger": {"every": 3600}}
        assert (await live.client.post("/v1/loops", json=body)).status_code == 201
        key = await live.client.post("/v1/keys", json={"name": "ops", "scopes": ["read", "wake"]})
        headers = {"Authorization": f"Bearer {key.json()['key']}"}
        async with httpx.AsyncClient(base_url=live.url, headers=headers) as other:
            assert (await other.get("/v1/loops/l1")).status_code == 200
            assert (await other.post("/v1/loops", json={**body, "id": "l2"})).status_code == 403
            assert (await other.post("/v1/loops/l1/toggle")).status_code == 403
            assert (await other.post("/v1/loops/l1/run")).status_code == 403
            assert (await other.delete("/v1/loops/l1")).status_code == 403


def _paris() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("Europe/Paris")
