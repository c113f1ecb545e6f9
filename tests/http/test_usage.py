"""Usage and costs: after a mixed workload the totals, breakdowns and time series equal the sum
of the runs' own recorded usage, a key sees only its own, and costs follow `[prices]`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.http.live import live_server, on_every_backend
from tests.http.operator_support import bearer, serving

CALC = '/tool calculator {"expr": "6*7"}'
TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
PRICES = {"echo-1": {"input": 2.5, "output": 10}}


async def _get(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def _mixed_workload(client: httpx.AsyncClient) -> list[str]:
    """Wakes on two agents (one calling a tool), chat completions with and without an end
    user, a Responses call: the run ids."""
    made = await client.post("/v1/agents", json={"id": "calc", "tools": ["calculator"]})
    assert made.status_code == 201, made.text
    runs: list[str] = []
    for i in range(3):
        woke = await client.post(
            "/v1/agents/default/wake",
            json={"message": f"hello there {i}", "session_key": f"w{i % 2}", "user_id": "ann"},
        )
        assert woke.status_code == 200, woke.text
        runs.append(woke.json()["run_id"])
    woke = await client.post("/v1/agents/calc/wake", json={"message": CALC})
    assert woke.status_code == 200, woke.text
    runs.append(woke.json()["run_id"])
    for user in ("bob", None):
        body: dict[str, Any] = {
            "model": "calc",
            "messages": [{"role": "user", "content": "a longer question " * 5}],
        }
        if user is not None:
            body["user"] = user
        chat = await client.post("/v1/chat/completions", json=body)
        assert chat.status_code == 200, chat.text
        runs.append(chat.headers["X-Run-Id"])
    answered = await client.post("/v1/responses", json={"model": "default", "input": "hi"})
    assert answered.status_code == 200, answered.text
    runs.append(answered.json()["id"].removeprefix("resp_"))
    return runs


def _sum(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(row[name] for row in rows) for name in ("runs", *TOKENS)}


@on_every_backend
async def test_totals_equal_the_sum_of_the_runs_usage(tmp_path: Path, backend: str) -> None:
    """summary, every breakdown, the time series and the cost summary add up to the usage each
    run reports on GET /v1/runs/{id}."""
    sections = {"prices": PRICES}
    async with live_server(
        tmp_path / "data", backend=backend, auto_approve=True, sections=sections
    ) as live:
        runs = await _mixed_workload(live.client)
        documents = [await _get(live.client, f"/v1/runs/{run}") for run in runs]
        assert all(d["status"] == "completed" for d in documents)
        expected = {name: sum(d["usage"][name] for d in documents) for name in TOKENS}
        assert expected["total_tokens"] > 0
        summary = await _get(live.client, "/v1/usage/summary")
        assert summary["runs"] == len(runs)
        assert {name: summary[name] for name in TOKENS} == expected
        assert (await _get(live.client, "/v1/usage/summary", period="24h"))["runs"] == len(runs)
        assert (await _get(live.client, "/v1/usage/summary", period="today"))["runs"] == len(runs)
        for group_by in ("agent", "model", "provider", "key", "user"):
            groups = (await _get(live.client, "/v1/usage/breakdown", group_by=group_by))["data"]
            assert _sum(groups) == {"runs": len(runs), **expected}, group_by
        by_agent = (await _get(live.client, "/v1/usage/breakdown", group_by="agent"))["data"]
        calc_runs = [d for d in documents if d["agent_id"] == "calc"]
        [calc] = [g for g in by_agent if g["value"] == "calc"]
        assert calc["runs"] == 3
        assert calc["total_tokens"] == sum(d["usage"]["total_tokens"] for d in calc_runs)
        by_user = (await _get(live.client, "/v1/usage/breakdown", group_by="user"))["data"]
        assert {g["value"]: g["runs"] for g in by_user} == {"ann": 3, "bob": 1, None: 3}
        only_calc = await _get(live.client, "/v1/usage/summary", agent_id="calc")
        assert only_calc["runs"] == 3
        for interval in ("hour", "day"):
            series = await _get(live.client, "/v1/usage/timeseries", interval=interval)
            assert _sum(series["data"]) == {"runs": len(runs), **expected}
        costs = await _get(live.client, "/v1/costs/summary")
        want = expected["prompt_tokens"] * 2.5 / 1e6 + expected["completion_tokens"] * 10 / 1e6
        assert abs(costs["total_cost"] - want) < 1e-12
        for interval in ("hour", "day"):  # the chart's cost line: the same total, spread out
            series = await _get(live.client, "/v1/usage/timeseries", interval=interval)
            assert abs(sum(p["cost"] for p in series["data"]) - want) < 1e-12
        assert abs(sum(g["cost"] for g in by_agent) - want) < 1e-12
        assert costs["unpriced_models"] == []
        assert [(c["provider"], c["model"], c["priced"]) for c in costs["data"]] == [
            ("echo", "echo-1", True)
        ]
        later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        empty = await _get(live.client, "/v1/usage/summary", **{"from": later})
        assert (empty["runs"], empty["total_tokens"]) == (0, 0)
        backwards = {"from": later, "to": "1969-12-31T23:00:00-05:00"}
        nothing = await _get(live.client, "/v1/usage/timeseries", **backwards)
        assert nothing["data"] == []
        year_one = {"from": "0001-01-01T00:00:00+05:00"}
        since_ever = await _get(live.client, "/v1/usage/summary", **year_one)
        assert since_ever["runs"] == len(runs)


async def test_usage_survives_a_restart(tmp_path: Path) -> None:
    """The numbers are the projection's, kept with its checkpoint: a restarted server answers
    the same totals and counts nothing twice."""
    async with live_server(tmp_path / "data", auto_approve=True) as live:
        await _mixed_workload(live.client)
        before = await _get(live.client, "/v1/usage/summary")
    async with live_server(tmp_path / "data", auto_approve=True) as live:
        assert await _get(live.client, "/v1/usage/summary") == before
        woke = await live.client.post("/v1/agents/default/wake", json={"message": "again"})
        assert woke.status_code == 200, woke.text
        after = await _get(live.client, "/v1/usage/summary")
        assert after["runs"] == before["runs"] + 1
        spent = woke.json()["usage"]["total_tokens"]
        assert after["total_tokens"] == before["total_tokens"] + spent
        metrics = (await live.client.get("/metrics")).text
        counted = {"prompt": 0.0, "completion": 0.0}
        runs = 0.0
        for line in metrics.splitlines():
            if line.startswith("cuelog_usage_tokens_total{"):
                kind = line.split('kind="')[1].split('"')[0]
                counted[kind] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("cuelog_usage_runs_total{"):
                runs += float(line.rsplit(" ", 1)[1])
        assert counted == {
            "prompt": after["prompt_tokens"],
            "completion": after["completion_tokens"],
        }
        assert runs == after["runs"]


async def test_a_key_sees_only_its_own_usage(tmp_path: Path) -> None:
    """A non-admin key's summary and breakdowns count only the runs it started."""
    async with serving(tmp_path / "data") as served:
        key_id, secret = await served.new_key("read", "wake", name="mine")
        mine = await served.admin.post(
            "/v1/agents/default/wake", json={"message": "hi"}, headers=bearer(secret)
        )
        assert mine.status_code == 200, mine.text
        for _ in range(2):
            theirs = await served.admin.post("/v1/agents/default/wake", json={"message": "yo"})
            assert theirs.status_code == 200, theirs.text
        own = await served.admin.get("/v1/usage/summary", headers=bearer(secret))
        assert own.json()["runs"] == 1
        assert own.json()["total_tokens"] == mine.json()["usage"]["total_tokens"]
        keys = await served.admin.get(
            "/v1/usage/breakdown", params={"group_by": "key"}, headers=bearer(secret)
        )
        assert [g["value"] for g in keys.json()["data"]] == [key_id]
        everyone = await served.admin.get("/v1/usage/summary")
        assert everyone.json()["runs"] == 3


async def test_bad_usage_queries_are_refused(tmp_path: Path) -> None:
    """An unknown period, grouping or interval, or a date without a time: 400 naming the
    parameter."""
    async with live_server(tmp_path / "data") as live:
        for path, params, param in (
            ("/v1/usage/summary", {"period": "1y"}, "period"),
            ("/v1/usage/breakdown", {"group_by": "colour"}, "group_by"),
            ("/v1/usage/timeseries", {"interval": "minute"}, "interval"),
            ("/v1/costs/summary", {"from": "2026-01-01"}, "from"),
        ):
            response = await live.client.get(path, params=params)
            assert response.status_code == 400, (path, params, response.text)
            assert response.json()["error"]["param"] == param
