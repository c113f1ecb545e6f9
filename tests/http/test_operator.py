"""Operator API on a real server: emergency stop, rate limits, approvals, tools, audit, metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio

from tests.http.operator_support import Served, bearer, serving, sse_events

CALC = '/tool calculator {"expr": "6*7"}'


async def _wait_status(served: Served, run_ids: list[str], status: str) -> None:
    with trio.fail_after(10):
        for run_id in run_ids:
            # Polling over HTTP: the server has no event a client could wait on here.
            while (await served.admin.get(f"/v1/runs/{run_id}")).json()["status"] != status:  # noqa: ASYNC110
                await trio.sleep(0.01)


async def _wake_async(served: Served, agent: str, message: str, **extra: Any) -> str:
    response = await served.admin.post(
        f"/v1/agents/{agent}/wake", json={"message": message, "mode": "async", **extra}
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def test_emergency_stop_cancels_twenty_runs_in_flight_and_release_allows_new_ones(
    tmp_path: Path,
) -> None:
    """Twenty runs waiting for approval are all cancelled within 1 s; wake is 503 until release,
    then works; both changes are EmergencyStopChanged events."""
    async with serving(tmp_path / "data") as served:
        await served.create_agent("careful", tools=["calculator"], approval="ask")
        run_ids = [await _wake_async(served, "careful", CALC) for _ in range(20)]
        await _wait_status(served, run_ids, "waiting_approval")

        started = time.monotonic()
        stopped = await served.admin.post("/v1/emergency-stop", json={"hold": True})
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["cancelled_runs"] == 20 and stopped.json()["stopped"] is True
        await _wait_status(served, run_ids, "cancelled")
        assert time.monotonic() - started < 1.0

        refused = await served.admin.post("/v1/agents/careful/wake", json={"message": "hi"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        released = await served.admin.post("/v1/emergency-stop/release")
        assert released.json() == {"stopped": False}
        again = await served.admin.post("/v1/agents/default/wake", json={"message": "hi"})
        assert again.status_code == 200 and again.json()["status"] == "completed"

        page = await served.admin.get("/v1/audit/events", params={"type": "EmergencyStopChanged"})
        changes = [event["data"] for event in page.json()["data"]]
        assert [c["stopped"] for c in changes] == [True, False]
        assert changes[0]["cancelled_runs"] == 20


async def test_emergency_stop_without_hold_cancels_runs_and_takes_new_ones(
    tmp_path: Path,
) -> None:
    """Without `hold` the stop cancels what runs and new runs start at once (nothing to
    release); the event records the cancellations and that nothing is held."""
    async with serving(tmp_path / "data") as served:
        await served.create_agent("careful", tools=["calculator"], approval="ask")
        run_ids = [await _wake_async(served, "careful", CALC) for _ in range(3)]
        await _wait_status(served, run_ids, "waiting_approval")
        stopped = await served.admin.post("/v1/emergency-stop")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["cancelled_runs"] == 3 and stopped.json()["stopped"] is False
        await _wait_status(served, run_ids, "cancelled")
        again = await served.admin.post("/v1/agents/default/wake", json={"message": "hi"})
        assert again.status_code == 200 and again.json()["status"] == "completed"
        page = await served.admin.get("/v1/audit/events", params={"type": "EmergencyStopChanged"})
        [change] = [event["data"] for event in page.json()["data"]]
        assert (change["stopped"], change["cancelled_runs"]) == (False, 3)


async def test_rate_limit_answers_429_with_retry_after_then_recovers(tmp_path: Path) -> None:
    """With 5 requests/s and bursts of 5, a quick burst of 10 hits 429 with Retry-After; after
    the bucket refills, requests succeed again."""
    async with serving(tmp_path / "data", rate_limit=5, rate_burst=5) as served:
        _, secret = await served.new_key("read")
        statuses: list[int] = []
        retry_after: list[str] = []
        for _ in range(10):
            response = await served.admin.get("/v1/agents", headers=bearer(secret))
            statuses.append(response.status_code)
            if response.status_code == 429:
                retry_after.append(response.headers["retry-after"])
                assert response.json()["error"]["type"] == "rate_limit_error"
        assert statuses[:5] == [200] * 5
        assert 429 in statuses
        assert all(int(value) >= 1 for value in retry_after)
        await trio.sleep(1.2)  # the bucket refills on the monotonic clock
        recovered = await served.admin.get("/v1/agents", headers=bearer(secret))
        assert recovered.status_code == 200
        metrics = (await served.admin.get("/metrics")).text
        assert "cuelog_http_rate_limited_total" in metrics


async def test_approvals_over_http_bind_to_the_digest_and_show_in_the_run_stream(
    tmp_path: Path,
) -> None:
    """A pending approval is listed; a wrong digest is 400; the right one lets the run finish,
    and the run's SSE stream shows ApprovalRequested and ApprovalGranted."""
    async with serving(tmp_path / "data") as served:
        await served.create_agent("careful", tools=["calculator"], approval="ask")
        run_id = await _wake_async(served, "careful", CALC)
        await _wait_status(served, [run_id], "waiting_approval")

        pending = (await served.admin.get("/v1/approvals", params={"status": "pending"})).json()
        [approval] = [a for a in pending["data"] if a["run_id"] == run_id]
        assert approval["tool"] == "calculator"
        assert json.loads(approval["arguments"]) == {"expr": "6*7"}

        wrong = await served.admin.post(
            f"/v1/approvals/{approval['id']}", json={"decision": "approve", "args_digest": "0" * 64}
        )
        assert wrong.status_code == 400, wrong.text
        right = await served.admin.post(
            f"/v1/approvals/{approval['id']}",
            json={"decision": "approve", "args_digest": approval["args_digest"]},
        )
        assert right.status_code == 200, right.text
        await _wait_status(served, [run_id], "completed")
        assert "42" in (await served.admin.get(f"/v1/runs/{run_id}")).json()["content"]

        stream = await served.admin.get(f"/v1/runs/{run_id}/events")
        kinds = [kind for kind, _ in sse_events(stream.content)]
        assert "ApprovalRequested" in kinds
        assert kinds.index("ApprovalRequested") < kinds.index("ApprovalGranted")
        assert kinds[-1] == "RunCompleted"
        after = (await served.admin.get("/v1/approvals")).json()["data"]
        assert all(a["id"] != approval["id"] for a in after)


async def test_approvers_see_and_decide_every_keys_pending_approvals(tmp_path: Path) -> None:
    """A key with only `approve` lists and decides an approval held
    in another key's run; a `read` key that does not own the run still does not see it."""
    async with serving(tmp_path / "data") as served:
        await served.create_agent("careful", tools=["calculator"], approval="ask")
        _, waker = await served.new_key("wake", "read", name="waker")
        _, approver = await served.new_key("approve", name="approver")
        _, reader = await served.new_key("read", name="reader")
        woken = await served.admin.post(
            "/v1/agents/careful/wake",
            json={"message": CALC, "mode": "async"},
            headers=bearer(waker),
        )
        assert woken.status_code == 202, woken.text
        run_id = woken.json()["run_id"]
        await _wait_status(served, [run_id], "waiting_approval")

        seen = await served.admin.get("/v1/approvals", headers=bearer(approver))
        assert seen.status_code == 200, seen.text
        [approval] = [a for a in seen.json()["data"] if a["run_id"] == run_id]
        hidden = (await served.admin.get("/v1/approvals", headers=bearer(reader))).json()
        assert all(a["run_id"] != run_id for a in hidden["data"])

        decided = await served.admin.post(
            f"/v1/approvals/{approval['id']}",
            json={"decision": "approve", "args_digest": approval["args_digest"]},
            headers=bearer(approver),
        )
        assert decided.status_code == 200, decided.text
        await _wait_status(served, [run_id], "completed")


async def test_tools_list_dry_run_and_invoke(tmp_path: Path) -> None:
    """Tools are listed with their schema; a dry run checks arguments without running; with
    `tools.invoke_approval = "auto"` a real invoke of the calculator answers at once and leaves a
    run in the log."""
    async with serving(tmp_path / "data", tools={"invoke_approval": "auto"}) as served:
        tools = {t["name"]: t for t in (await served.admin.get("/v1/tools")).json()["data"]}
        assert tools["calculator"]["enabled"] is True
        assert "expr" in json.dumps(tools["calculator"]["parameters"])
        head = (await served.admin.get("/v1/audit/head")).json()["seq"]

        dry = await served.admin.post(
            "/v1/tools/invoke",
            json={"name": "calculator", "args": {"expr": "2+2"}, "dry_run": True},
        )
        assert dry.status_code == 200 and dry.json()["valid"] is True
        bad = await served.admin.post(
            "/v1/tools/invoke", json={"name": "calculator", "args": {"nope": 1}, "dry_run": True}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "args"
        unknown = await served.admin.post("/v1/tools/invoke", json={"name": "nope", "args": {}})
        assert unknown.status_code == 404
        assert (await served.admin.get("/v1/audit/head")).json()["seq"] == head

        real = await served.admin.post(
            "/v1/tools/invoke", json={"name": "calculator", "args": {"expr": "2+2"}}
        )
        assert real.status_code == 200, real.text
        assert real.json()["status"] == "completed"
        assert "4" in real.json()["output"]
        run = (await served.admin.get(f"/v1/runs/{real.json()['run_id']}")).json()
        assert run["status"] == "completed"


async def test_invoke_waits_for_approval_and_leaves_agents_alone(tmp_path: Path) -> None:
    """By default an invoke with a chat key waits for an approval (202) and runs once approved,
    and an admin-made agent named `tools` is left exactly as it was."""
    async with serving(tmp_path / "data") as served:
        await served.create_agent(
            "tools", tools=["clock"], approval="reject", system_prompt="made by an admin"
        )
        before = (await served.admin.get("/v1/agents/tools")).json()
        _, secret = await served.new_key("chat", "read", name="invoker")
        invoked = await served.admin.post(
            "/v1/tools/invoke",
            json={"name": "calculator", "args": {"expr": "6*7"}},
            headers=bearer(secret),
        )
        assert invoked.status_code == 202, invoked.text
        assert invoked.json()["status"] == "waiting_approval"
        assert (await served.admin.get("/v1/agents/tools")).json() == before

        run_id = invoked.json()["run_id"]
        pending = (await served.admin.get("/v1/approvals")).json()["data"]
        [approval] = [a for a in pending if a["run_id"] == run_id]
        decided = await served.admin.post(
            f"/v1/approvals/{approval['id']}",
            json={"decision": "approve", "args_digest": approval["args_digest"]},
        )
        assert decided.status_code == 200, decided.text
        await _wait_status(served, [run_id], "completed")
        run = (await served.admin.get(f"/v1/runs/{run_id}", headers=bearer(secret))).json()
        assert "42" in run["content"]
        assert (await served.admin.get("/v1/agents/tools")).json() == before


async def test_audit_head_anchor_verify_and_activity_view(tmp_path: Path) -> None:
    """The head can be anchored with a key kept outside the data dir, verify reports ok (as JSON
    and as SSE ending in a report), and the activity view filters and pages."""
    key_file = tmp_path / "anchor.key"
    key_file.write_bytes(b"an-anchor-key-of-enough-bytes-0123456789")
    data_dir = tmp_path / "data"
    async with serving(data_dir, log={"anchor_key_file": key_file}) as served:
        key_id, secret = await served.new_key("read", "wake", name="auditor")
        woke = await served.admin.post(
            "/v1/agents/default/wake", json={"message": "hi"}, headers=bearer(secret)
        )
        assert woke.status_code == 200

        anchored = await served.admin.post("/v1/audit/anchor")
        assert anchored.status_code == 200, anchored.text
        head = (await served.admin.get("/v1/audit/head")).json()
        assert head["anchored_seq"] == anchored.json()["seq"]
        assert head["mac"] == anchored.json()["mac"] and len(head["mac"]) == 64

        report = (await served.admin.post("/v1/audit/verify")).json()
        assert report["ok"] is True and report["first_bad_seq"] is None
        assert report["anchored_seq"] == anchored.json()["seq"]
        streamed = await served.admin.post(
            "/v1/audit/verify", headers={"Accept": "text/event-stream"}
        )
        frames = sse_events(streamed.content)
        assert frames[-1][0] == "report"
        assert json.loads(frames[-1][1])["ok"] is True
        assert all(kind == "progress" for kind, _ in frames[:-1])

        by_type = await served.admin.get("/v1/audit/events", params={"type": "KeyCreated"})
        assert {e["type"] for e in by_type.json()["data"]} == {"KeyCreated"}
        by_actor = (await served.admin.get("/v1/audit/events", params={"actor": key_id})).json()
        assert by_actor["data"] and all(e["actor"] == key_id for e in by_actor["data"])
        by_prefix = await served.admin.get("/v1/audit/events", params={"stream_prefix": "run:"})
        assert by_prefix.json()["data"]
        assert all(e["stream"].startswith("run:") for e in by_prefix.json()["data"])

        seen: list[int] = []
        params: dict[str, Any] = {"stream_prefix": "run:", "limit": 2}
        while True:
            page = (await served.admin.get("/v1/audit/events", params=params)).json()
            seen += [e["seq"] for e in page["data"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == sorted(set(seen))
        assert seen == [e["seq"] for e in by_prefix.json()["data"]]
        assert secret not in (await served.admin.get("/v1/events?limit=1000")).text


async def test_metrics_expose_requests_appends_actors_and_runs(tmp_path: Path) -> None:
    """/metrics is Prometheus text with request counts, appends, live actors and finished runs."""
    async with serving(tmp_path / "data") as served:
        woke = await served.admin.post("/v1/agents/default/wake", json={"message": "hi"})
        assert woke.status_code == 200
        response = await served.admin.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        for name in (
            "cuelog_http_requests_total",
            "cuelog_log_events_appended",
            "cuelog_actors_live",
            "cuelog_runs_finished",
            'cuelog_gc_collections_total{generation="2"}',
            'cuelog_gc_max_pause_seconds{generation="0"}',
            "cuelog_gc_slow_pauses_total",
        ):
            assert name in text, name
        assert 'cuelog_runs_finished_total{status="completed"} 1.0' in text
        assert 'route="/v1/agents/<agent_id>/wake"' in text


async def test_a_streaming_chat_over_the_stream_cap_is_refused_before_its_run_starts(
    tmp_path: Path,
) -> None:
    """A streaming chat or Responses call from a key at its cap of open SSE streams gets 429
    before anything is written: no session, no message, no orphaned run. A non-streaming chat
    still runs, and once the stream closes a streaming chat works again."""
    async with serving(tmp_path / "data", max_streams_per_key=1) as served:
        chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        sse = {"Accept": "text/event-stream"}
        async with served.admin.stream("GET", "/v1/events", headers=sse) as held:
            assert held.status_code == 200
            head = (await served.admin.get("/v1/health")).json()["head_seq"]
            refused = await served.admin.post("/v1/chat/completions", json={**chat, "stream": True})
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"]
            responses = await served.admin.post(
                "/v1/responses", json={"model": "default", "input": "hi", "stream": True}
            )
            assert responses.status_code == 429, responses.text
            assert (await served.admin.get("/v1/health")).json()["head_seq"] == head
            plain = await served.admin.post("/v1/chat/completions", json=chat)
            assert plain.status_code == 200, plain.text
        with trio.fail_after(5):
            while True:  # the server notices the closed stream on its next write or check
                streamed = await served.admin.post(
                    "/v1/chat/completions", json={**chat, "stream": True}
                )
                if streamed.status_code != 429:
                    break
                await trio.sleep(0.05)
        assert streamed.status_code == 200
        assert "data: [DONE]" in streamed.text


async def test_stream_cap_per_key(tmp_path: Path) -> None:
    """A key at its cap of open SSE streams gets 429 for one more, and may open one again once
    its stream closes."""
    async with serving(tmp_path / "data", max_streams_per_key=1) as served:
        woke = await served.admin.post(
            "/v1/agents/default/wake", json={"message": "hi", "session_key": "capped"}
        )
        assert woke.status_code == 200
        sse = {"Accept": "text/event-stream"}
        url = "/v1/sessions/capped/events"
        async with served.admin.stream("GET", url, headers=sse) as one:
            assert one.status_code == 200
            two = await served.admin.get(url, headers=sse)
            assert two.status_code == 429 and two.headers["retry-after"]
        with trio.fail_after(5):
            while True:  # the server notices the closed stream on its next write or check
                run_stream = await served.admin.get(f"/v1/runs/{woke.json()['run_id']}/events")
                if run_stream.status_code != 429:
                    break
                await trio.sleep(0.05)
        assert run_stream.status_code == 200
