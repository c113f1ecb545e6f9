"""Traces: a run is a trace whose spans (model calls, tool calls, approval waits) nest under the
run with their timings and tokens; the list pages and filters like /v1/runs, and a key sees
only its own runs' traces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.http.live import live_server, on_every_backend

ASK = '/tool calculator {"expr": "6*7"}'


async def _settled(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            run: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
            if run["status"] in ("completed", "failed", "cancelled"):
                return run
            await trio.sleep(0.05)


async def _approved_tool_run(client: httpx.AsyncClient) -> str:
    """A run of agent `calc` that calls the calculator after an approval: its id."""
    spec = {"id": "calc", "tools": ["calculator"], "approval": "ask"}
    assert (await client.post("/v1/agents", json=spec)).status_code == 201
    woke = await client.post("/v1/agents/calc/wake", json={"message": ASK, "mode": "async"})
    assert woke.status_code == 202, woke.text
    with trio.fail_after(10):
        while True:
            approvals = (await client.get("/v1/approvals")).json()["data"]
            if approvals:
                break
            await trio.sleep(0.05)
    await trio.sleep(0.01)  # the wait has a measurable length
    [approval] = approvals
    decided = await client.post(
        f"/v1/approvals/{approval['id']}",
        json={"decision": "approve", "args_digest": approval["args_digest"]},
    )
    assert decided.status_code == 200, decided.text
    run_id: str = woke.json()["run_id"]
    assert (await _settled(client, run_id))["status"] == "completed"
    return run_id


@on_every_backend
async def test_a_tool_run_is_a_trace_of_nested_timed_spans(tmp_path: Path, backend: str) -> None:
    """Root run span; two model calls whose tokens add up to the run's usage; a tool span with
    the approval wait inside it; every span inside its parent's time."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        run_id = await _approved_tool_run(live.client)
        run = (await live.client.get(f"/v1/runs/{run_id}")).json()
        got = await live.client.get(f"/v1/traces/{run_id}")
        assert got.status_code == 200, got.text
        trace = got.json()
        assert trace["id"] == run_id and trace["object"] == "trace"
        assert len(trace["trace_id"]) == 32 and trace["status"] == "completed"
        spans = trace["spans"]
        root = spans[0]
        assert root["kind"] == "run" and root["parent_id"] is None
        assert root["attributes"]["cuelog.agent_id"] == "calc"
        kinds = [s["kind"] for s in spans[1:]]
        assert kinds == ["model", "tool", "approval", "model"]
        by_id = {s["span_id"]: s for s in spans}
        assert len(by_id) == len(spans)
        model1, tool, approval, model2 = spans[1:]
        assert model1["parent_id"] == tool["parent_id"] == model2["parent_id"] == root["span_id"]
        assert approval["parent_id"] == tool["span_id"]
        assert tool["name"] == "tool calculator" and tool["status"] == "ok"
        assert approval["attributes"]["cuelog.approval.decision"] == "granted"
        assert approval["duration_ms"] >= 10
        for span in spans[1:]:
            parent = by_id[span["parent_id"]]
            assert parent["start"] <= span["start"] <= span["end"] <= parent["end"]
            assert abs(span["duration_ms"] - (span["end"] - span["start"]) * 1000) < 0.01
        tokens = sum(s["usage"]["total_tokens"] for s in (model1, model2))
        assert tokens == run["usage"]["total_tokens"] == root["usage"]["total_tokens"] > 0
        assert model1["attributes"]["gen_ai.usage.input_tokens"] == model1["usage"]["prompt_tokens"]
        again = (await live.client.get(f"/v1/traces/{run_id}")).json()
        assert again == trace  # folded from the log: the same every time
        assert (await live.client.get("/v1/traces/run_nope")).status_code == 404


async def test_the_traces_list_pages_filters_and_keeps_keys_apart(tmp_path: Path) -> None:
    """Newest first with a cursor, `agent`/`status` filters, the summary's trace id equals the
    trace's, and a non-admin key lists and reads only its own runs' traces."""
    async with live_server(tmp_path / "data") as live:
        client = live.client
        made = await client.post("/v1/keys", json={"name": "k", "scopes": ["chat", "read"]})
        mine = {"Authorization": f"Bearer {made.json()['key']}"}
        own: list[str] = []
        for i in range(3):
            body = {"model": "default", "messages": [{"role": "user", "content": f"hi {i}"}]}
            chat = await client.post("/v1/chat/completions", json=body, headers=mine)
            assert chat.status_code == 200, chat.text
            own.append(chat.headers["X-Run-Id"])
        admins = await _approved_tool_run(client)
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = (await client.get("/v1/traces", params=params)).json()
            assert len(page["data"]) <= 2
            seen.extend(item["id"] for item in page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [admins, *reversed(own)]
        [calc] = (await client.get("/v1/traces", params={"agent": "calc"})).json()["data"]
        assert calc["id"] == admins and calc["model_calls"] == 2 and calc["tool_calls"] == 1
        trace = (await client.get(f"/v1/traces/{admins}")).json()
        assert calc["trace_id"] == trace["trace_id"]
        assert calc["usage"] == trace["usage"]
        failed = (await client.get("/v1/traces", params={"status": "failed"})).json()["data"]
        assert failed == []
        listed = (await client.get("/v1/traces", headers=mine)).json()["data"]
        assert [item["id"] for item in listed] == list(reversed(own))
        assert (await client.get(f"/v1/traces/{admins}", headers=mine)).status_code == 404
        assert (await client.get(f"/v1/traces/{own[0]}", headers=mine)).status_code == 200


async def test_a_cancelled_run_closes_its_open_spans_as_errors(tmp_path: Path) -> None:
    """A run cancelled while it waits for an approval: the wait and its tool call end with the
    run, as errors naming the reason."""
    async with live_server(tmp_path / "data") as live:
        client = live.client
        spec = {"id": "calc", "tools": ["calculator"], "approval": "ask"}
        assert (await client.post("/v1/agents", json=spec)).status_code == 201
        woke = await client.post("/v1/agents/calc/wake", json={"message": ASK, "mode": "async"})
        run_id = woke.json()["run_id"]
        with trio.fail_after(10):
            while True:
                if (await client.get("/v1/approvals")).json()["data"]:
                    break
                await trio.sleep(0.05)
        open_trace = (await client.get(f"/v1/traces/{run_id}")).json()
        assert open_trace["status"] == "running" and open_trace["ended_at"] is None
        assert [s["end"] for s in open_trace["spans"] if s["kind"] == "approval"] == [None]
        assert (await client.post(f"/v1/runs/{run_id}/cancel")).status_code == 200
        assert (await _settled(client, run_id))["status"] == "cancelled"
        trace = (await client.get(f"/v1/traces/{run_id}")).json()
        assert trace["status"] == "cancelled"
        root, *rest = trace["spans"]
        assert root["status"] == "error" and root["end"] == trace["ended_at"]
        waits = [s for s in rest if s["kind"] in ("tool", "approval")]
        assert len(waits) == 2
        for span in waits:
            assert span["status"] == "error" and span["end"] == root["end"]
            assert span["error"] == root["error"]
