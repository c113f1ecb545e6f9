"""Budgets: once an agent's or a key's spend reaches its limit for the period, a run that would
start is refused with 429 `budget_exceeded` and nothing is written; a run already going is not
cut; the spend is the runs catalog's, so a restart remembers it; a loop's refused fire is
recorded as a failed fire and the loop goes on."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.http.live import Live, live_server, on_every_backend
from tests.postgres import fresh_database

CHAT = {"model": "capped", "messages": [{"role": "user", "content": "hello there"}]}
ASK = '/tool calculator {"expr": "6*7"}'


def _next_utc_midnight() -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refused(response: httpx.Response, *needles: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["type"] == "rate_limit_error"
    for needle in needles:
        assert needle in error["message"], error["message"]
    assert int(response.headers["Retry-After"]) >= 1
    return error


async def _every_route_refused(live: Live, *needles: str) -> None:
    """Chat completions, Responses and wake (sync and async) are all refused, and the log's
    head stays where it was."""
    client = live.client
    head = await live.head_seq()
    _refused(await client.post("/v1/chat/completions", json=CHAT), *needles)
    _refused(await client.post("/v1/chat/completions", json={**CHAT, "stream": True}), *needles)
    _refused(await client.post("/v1/responses", json={"model": "capped", "input": "hi"}), *needles)
    for mode in ("sync", "async"):
        woke = await client.post("/v1/agents/capped/wake", json={"message": "hi", "mode": mode})
        _refused(woke, *needles)
    assert await live.head_seq() == head


async def _spend_the_agent_budget(live: Live) -> tuple[str, ...]:
    """Make agent `capped` with a 5-token day budget and spend it: what a refusal says."""
    budget = {"period": "day", "max_tokens": 5}
    made = await live.client.post("/v1/agents", json={"id": "capped", "budgets": [budget]})
    assert made.status_code == 201, made.text
    assert made.json()["budgets"] == [{"period": "day", "max_tokens": 5, "max_cost": None}]
    first = await live.client.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 200, first.text
    spent = first.json()["usage"]["total_tokens"]
    assert spent >= 5
    return ("agent 'capped'", f"{spent} of 5 tokens", "per day", _next_utc_midnight())


@on_every_backend
async def test_an_agent_budget_refuses_every_kind_of_run_once_spent(
    tmp_path: Path, backend: str
) -> None:
    """The first run fits (nothing spent yet) and spends past a 5-token day budget; every later
    start is refused naming the agent, the spend, the limit and the next UTC midnight; another
    agent is unaffected, and a raised budget lets runs start again."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        needles = await _spend_the_agent_budget(live)
        await _every_route_refused(live, *needles)
        other = await live.client.post("/v1/chat/completions", json={**CHAT, "model": "default"})
        assert other.status_code == 200, other.text
        raised = await live.client.patch(
            "/v1/agents/capped", json={"budgets": [{"period": "24h", "max_tokens": 10_000}]}
        )
        assert raised.status_code == 200, raised.text
        again = await live.client.post("/v1/chat/completions", json=CHAT)
        assert again.status_code == 200, again.text


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_a_restart_remembers_what_was_spent(tmp_path: Path, backend: str) -> None:
    """A server restarted on the same log refuses the agent whose budget was spent before."""
    with contextlib.ExitStack() as stack:
        extra = {"url": stack.enter_context(fresh_database())} if backend == "postgres" else {}
        async with live_server(tmp_path / "data", log_settings=extra) as live:
            needles = await _spend_the_agent_budget(live)
            head = await live.head_seq()
        async with live_server(tmp_path / "data", log_settings=extra) as live:
            assert await live.head_seq() == head
            await _every_route_refused(live, *needles)


async def test_a_key_cost_budget_counts_only_that_keys_runs(tmp_path: Path) -> None:
    """A key's month cost budget, priced from `[prices]`, refuses that key once spent (on any
    agent) while other keys go on; PATCH /v1/keys/{id} raises it."""
    sections = {"prices": {"echo-1": {"input": 1000.0, "output": 1000.0}}}
    async with live_server(tmp_path / "data", sections=sections) as live:
        assert (await live.client.post("/v1/agents", json={"id": "capped"})).status_code == 201
        budget = {"period": "month", "max_cost": 0.001}
        made = await live.client.post(
            "/v1/keys", json={"name": "capped", "scopes": ["chat", "read"], "budgets": [budget]}
        )
        assert made.status_code == 201, made.text
        key_id, secret = made.json()["id"], made.json()["key"]
        assert made.json()["budgets"] == [
            {"period": "month", "max_tokens": None, "max_cost": 0.001}
        ]
        other = await live.client.post("/v1/keys", json={"name": "free", "scopes": ["chat"]})
        free = {"Authorization": f"Bearer {other.json()['key']}"}
        capped = {"Authorization": f"Bearer {secret}"}
        first = await live.client.post("/v1/chat/completions", json=CHAT, headers=capped)
        assert first.status_code == 200, first.text
        head = await live.head_seq()
        for model in ("capped", "default"):
            refused = await live.client.post(
                "/v1/chat/completions", json={**CHAT, "model": model}, headers=capped
            )
            _refused(refused, f"key '{key_id}'", "a cost of", "of 0.001 per month (UTC)")
        assert await live.head_seq() == head
        fine = await live.client.post("/v1/chat/completions", json=CHAT, headers=free)
        assert fine.status_code == 200, fine.text
        raised = await live.client.patch(
            f"/v1/keys/{key_id}", json={"budgets": [{"period": "month", "max_cost": 1000.0}]}
        )
        assert raised.status_code == 200, raised.text
        assert raised.json()["budgets"][0]["max_cost"] == 1000.0
        listed = (await live.client.get("/v1/keys")).json()["data"]
        assert [k["budgets"] for k in listed if k["id"] == key_id] == [raised.json()["budgets"]]
        again = await live.client.post("/v1/chat/completions", json=CHAT, headers=capped)
        assert again.status_code == 200, again.text
        missing = await live.client.patch("/v1/keys/key_nope", json={"budgets": []})
        assert missing.status_code == 404


async def test_a_run_going_is_not_cut_when_the_budget_runs_out(tmp_path: Path) -> None:
    """A run waiting for an approval after it spent past the budget still finishes once
    approved; only new runs are refused meanwhile."""
    spec = {
        "id": "capped",
        "tools": ["calculator"],
        "approval": "ask",
        "budgets": [{"period": "7d", "max_tokens": 1}],
    }
    async with live_server(tmp_path / "data") as live:
        client = live.client
        assert (await client.post("/v1/agents", json=spec)).status_code == 201
        woke = await client.post("/v1/agents/capped/wake", json={"message": ASK, "mode": "async"})
        assert woke.status_code == 202, woke.text
        run_id = woke.json()["run_id"]
        with trio.fail_after(10):
            while True:
                approvals = (await client.get("/v1/approvals")).json()["data"]
                run = (await client.get(f"/v1/runs/{run_id}")).json()
                if approvals and run["usage"]["total_tokens"] >= 1:  # the first call is counted
                    break
                await trio.sleep(0.05)
        _refused(
            await client.post("/v1/chat/completions", json=CHAT),
            "per rolling 7 days",
        )
        [approval] = approvals
        decided = await client.post(
            f"/v1/approvals/{approval['id']}",
            json={"decision": "approve", "args_digest": approval["args_digest"]},
        )
        assert decided.status_code == 200, decided.text
        with trio.fail_after(10):
            while True:
                if (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "completed":
                    break
                await trio.sleep(0.05)


async def test_a_loops_refused_fire_is_recorded_and_the_loop_goes_on(tmp_path: Path) -> None:
    """A fire of a loop whose agent is over budget is a failed fire naming the budget; the
    loop stays and fires again once the budget allows."""
    async with live_server(tmp_path / "data") as live:
        client = live.client
        spec = {"id": "capped", "budgets": [{"period": "day", "max_tokens": 1}]}
        assert (await client.post("/v1/agents", json=spec)).status_code == 201
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        body = {"id": "nightly", "agent": "capped", "message": "tick", "trigger": {"every": 3600}}
        assert (await client.post("/v1/loops", json=body)).status_code == 201
        fired = await client.post("/v1/loops/nightly/run")
        assert fired.status_code == 202, fired.text
        with trio.fail_after(10):
            while True:
                [fire] = (await client.get("/v1/loops/nightly")).json()["fires"]
                if fire["status"] != "pending":
                    break
                await trio.sleep(0.05)
        assert fire["status"] == "failed"
        assert "budget exceeded: agent 'capped'" in fire["error"]
        assert (await client.get(f"/v1/runs/{fire['run_id']}")).status_code == 404
        await client.patch("/v1/agents/capped", json={"budgets": []})
        assert (await client.post("/v1/loops/nightly/run")).status_code == 202
        with trio.fail_after(10):
            while True:
                fires = (await client.get("/v1/loops/nightly")).json()["fires"]
                if len(fires) == 2 and fires[0]["status"] == "completed":
                    break
                await trio.sleep(0.05)


async def test_bad_budgets_are_refused_and_write_nothing(tmp_path: Path) -> None:
    """An unknown period, a budget with no limit, a zero limit or an unknown field is a 400."""
    bad: list[Any] = [
        [{"period": "year", "max_tokens": 5}],
        [{"period": "day"}],
        [{"period": "day", "max_tokens": 0}],
        [{"period": "day", "max_cost": 0}],
        [{"period": "day", "max_tokens": 5, "tokens": 5}],
        {"period": "day", "max_tokens": 5},
    ]
    async with live_server(tmp_path / "data") as live:
        key = await live.client.post("/v1/keys", json={"name": "k", "scopes": ["chat"]})
        key_id = key.json()["id"]
        head = await live.head_seq()
        for budgets in bad:
            for response in (
                await live.client.post("/v1/agents", json={"id": "b", "budgets": budgets}),
                await live.client.patch("/v1/agents/default", json={"budgets": budgets}),
                await live.client.patch(f"/v1/keys/{key_id}", json={"budgets": budgets}),
                await live.client.post(
                    "/v1/keys", json={"name": "x", "scopes": ["chat"], "budgets": budgets}
                ),
            ):
                assert response.status_code == 400, (budgets, response.text)
                assert response.json()["error"]["type"] == "invalid_request_error"
        assert await live.head_seq() == head


async def test_a_refused_run_with_a_callback_url_queues_no_webhook(tmp_path: Path) -> None:
    """With a callback_url the budget is checked before the webhook is recorded: a refused
    wake (sync or async) or chat completion writes nothing at all."""
    hooks = {"webhooks": {"secret": "whsec-test-0123456789abcdef", "allow_private": True}}
    async with live_server(tmp_path / "data", sections=hooks) as live:
        await _spend_the_agent_budget(live)
        head = await live.head_seq()
        hook = "http://127.0.0.1:9/hook"
        for mode in ("sync", "async"):
            body = {"message": "hi", "mode": mode, "callback_url": hook}
            _refused(await live.client.post("/v1/agents/capped/wake", json=body), "agent 'capped'")
        chat = await live.client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Callback-Url": hook}
        )
        _refused(chat, "agent 'capped'")
        assert await live.head_seq() == head


async def test_a_retried_request_attaches_to_its_run_after_the_budget_is_spent(
    tmp_path: Path,
) -> None:
    """The wake that spends the budget was acknowledged; its retry with the same
    `Idempotency-Key` gets the same run back (200/202), while a new key is refused."""
    async with live_server(tmp_path / "data") as live:
        budget = {"period": "day", "max_tokens": 5}
        made = await live.client.post("/v1/agents", json={"id": "capped", "budgets": [budget]})
        assert made.status_code == 201, made.text
        body = {"message": "hello there", "mode": "sync"}
        first = await live.client.post(
            "/v1/agents/capped/wake", json=body, headers={"Idempotency-Key": "retry-1"}
        )
        assert first.status_code == 200, first.text
        head = await live.head_seq()
        again = await live.client.post(
            "/v1/agents/capped/wake", json=body, headers={"Idempotency-Key": "retry-1"}
        )
        assert again.status_code == 200, again.text
        assert again.json()["run_id"] == first.json()["run_id"]
        fresh = await live.client.post(
            "/v1/agents/capped/wake", json=body, headers={"Idempotency-Key": "retry-2"}
        )
        _refused(fresh, "agent 'capped'")
        assert await live.head_seq() == head


async def test_without_the_read_models_their_routes_and_budgeted_runs_answer_503(
    tmp_path: Path,
) -> None:
    """`log.read_models = false`: chats without a budget run; the runs list, usage and traces
    answer 503 saying why; a run a budget applies to is refused (503, nothing written), since
    its spend cannot be read; the agent's budget can still be set and changed."""
    async with live_server(tmp_path / "data", log_settings={"read_models": False}) as live:
        client = live.client
        free = {"model": "default", "messages": [{"role": "user", "content": "hello"}]}
        answered = await client.post("/v1/chat/completions", json=free)
        assert answered.status_code == 200, answered.text
        for path in ("/v1/runs", "/v1/usage/summary", "/v1/traces", "/v1/costs/summary"):
            off = await client.get(path)
            assert off.status_code == 503, (path, off.text)
            assert "read models" in off.json()["error"]["message"]
        budget = {"period": "day", "max_tokens": 5}
        made = await client.post("/v1/agents", json={"id": "capped", "budgets": [budget]})
        assert made.status_code == 201, made.text
        head = await live.head_seq()
        refused = await client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503, refused.text
        assert "log.read_models" in refused.json()["error"]["message"]
        assert await live.head_seq() == head
