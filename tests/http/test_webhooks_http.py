"""Webhooks against a real receiver on 127.0.0.1: signed deliveries whose id is the hash of the
run's settling event, retries with backoff on 5xx and network errors, every attempt recorded,
dead letters listed and redelivered, deliveries that go on after a restart, and targets refused
by the address policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.http.live import Live, live_server, on_every_backend
from tests.http.webhook_receiver import SECRET, receiver

FAST = {"secret": SECRET, "allow_private": True, "backoff_base": 0.05, "backoff_max": 0.2}


def hooks(**settings: Any) -> dict[str, dict[str, Any]]:
    return {"webhooks": {**FAST, **settings}}


async def wait_for(live: Live, delivery_status: str, run_id: str) -> dict[str, Any]:
    """The run's delivery once it has `delivery_status`."""
    with trio.fail_after(30):
        while True:
            page = await live.client.get("/v1/webhooks/deliveries", params={"run_id": run_id})
            assert page.status_code == 200, page.text
            found = [d for d in page.json()["data"] if d["status"] == delivery_status]
            if found:
                delivery: dict[str, Any] = found[0]
                return delivery
            await trio.sleep(0.05)


async def settling_hash(live: Live, run_id: str) -> str:
    events = (await live.client.get("/v1/events", params={"prefix": f"run:{run_id}"})).json()
    last: str = events["data"][-1]["hash"]
    assert events["data"][-1]["type"] in {"RunCompleted", "RunFailed", "RunCancelled"}
    return last


async def wake(live: Live, url: str, message: str = "hook me", **extra: Any) -> str:
    response = await live.client.post(
        "/v1/agents/default/wake",
        json={"message": message, "mode": "async", "callback_url": url, **extra},
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


@on_every_backend
async def test_settled_run_is_delivered_once_signed_with_the_settling_event_hash(
    tmp_path: Path, backend: str
) -> None:
    """An async wake with a callback_url: the receiver gets one signed POST whose delivery id is
    the hash of the run's settling event and whose body is the run's recorded outcome."""
    with receiver() as hook:
        async with live_server(tmp_path / "data", backend=backend, sections=hooks()) as live:
            run_id = await wake(live, hook.url)
            delivery = await wait_for(live, "delivered", run_id)
            assert delivery["id"] == await settling_hash(live, run_id)
            [got] = hook.received
            assert got.signed and got.delivery == delivery["id"]
            body = json.loads(got.body)
            run = (await live.client.get(f"/v1/runs/{run_id}")).json()
            assert body["id"] == delivery["id"] and body["type"] == "run.completed"
            assert body["data"]["content"] == run["content"] == "Echo: hook me"
            assert body["data"]["usage"] == run["usage"]
            assert [a["outcome"] for a in delivery["attempts"]] == ["delivered"]
            assert delivery["attempts"][0]["status_code"] == 200


async def test_5xx_and_network_errors_are_retried_with_every_attempt_recorded(
    tmp_path: Path,
) -> None:
    """Three 500s, then 200: four attempts recorded (three retries with growing waits), one
    success at the receiver, and every attempt carried the same delivery id. A target that
    refuses connections is retried too."""
    with receiver() as hook:
        hook.fail_first = 3
        async with live_server(tmp_path / "data", sections=hooks()) as live:
            run_id = await wake(live, hook.url)
            delivery = await wait_for(live, "delivered", run_id)
            attempts = delivery["attempts"]
            assert [a["outcome"] for a in attempts] == ["retry"] * 3 + ["delivered"]
            assert [a["status_code"] for a in attempts] == [500, 500, 500, 200]
            waits = [a["next_at"] - a["at"] for a in attempts[:3]]
            assert 0.025 <= waits[0] <= 0.05 and 0.05 <= waits[1] <= 0.1
            assert {r.delivery for r in hook.received} == {delivery["id"]}
            assert len(hook.successes()) == 1

            # Nothing listens on the receiver's port once it is closed: a network error.
            closed = hook.url
    async with live_server(tmp_path / "data2", sections=hooks(retry_window=0.5)) as live:
        run_id = await wake(live, closed)
        dead = await wait_for(live, "failed", run_id)
        assert len(dead["attempts"]) >= 2
        assert all(a["status_code"] is None for a in dead["attempts"])
        assert "ConnectError" in dead["attempts"][0]["error"]


async def test_dead_letters_are_listed_and_redelivered_by_id(tmp_path: Path) -> None:
    """A receiver that keeps failing past the retry window makes a dead letter, listed under
    status=failed; redelivered once the receiver is fixed, it arrives with the same id and
    body. A 4xx is not retried."""
    with receiver() as hook:
        hook.always = 503
        async with live_server(tmp_path / "data", sections=hooks(retry_window=0.4)) as live:
            run_id = await wake(live, hook.url)
            dead = await wait_for(live, "failed", run_id)
            failed = (await live.client.get("/v1/webhooks/deliveries?status=failed")).json()
            assert [d["id"] for d in failed["data"]] == [dead["id"]]
            assert "gave up" in dead["attempts"][-1]["error"]
            tries = len(hook.received)
            assert tries == len(dead["attempts"]) >= 2

            hook.always = None
            again = await live.client.post(f"/v1/webhooks/deliveries/{dead['id']}/redeliver")
            assert again.status_code == 202, again.text
            done = await wait_for(live, "delivered", run_id)
            assert done["id"] == dead["id"]
            [success] = hook.successes()
            assert success.delivery == dead["id"] and success.body == hook.received[0].body
            twice = await live.client.post(f"/v1/webhooks/deliveries/{dead['id']}/redeliver")
            assert twice.status_code == 409
            assert (await live.client.get("/v1/webhooks/deliveries?status=failed")).json()[
                "data"
            ] == []

            hook.always = 410
            gone = await wake(live, hook.url, "second")
            refused = await wait_for(live, "failed", gone)
            assert [(a["outcome"], a["status_code"]) for a in refused["attempts"]] == [
                ("failed", 410)
            ]


async def test_a_restart_in_the_middle_of_the_retries_carries_on(tmp_path: Path) -> None:
    """Stopped after a failed attempt, the server resumes the delivery when it starts again:
    the next attempt succeeds and is numbered after the ones recorded before the restart."""
    data = tmp_path / "data"
    with receiver() as hook:
        hook.always = 500
        async with live_server(data, sections=hooks(backoff_base=6.0, backoff_max=60)) as live:
            run_id = await wake(live, hook.url)
            pending = await wait_for(live, "pending", run_id)
            with trio.fail_after(30):
                while True:
                    if pending["attempts"]:
                        break
                    await trio.sleep(0.05)
                    pending = await wait_for(live, "pending", run_id)
        assert len(hook.received) == 1
        hook.always = None
        async with live_server(data, sections=hooks(backoff_base=6.0, backoff_max=60)) as live:
            delivery = await wait_for(live, "delivered", run_id)
            assert [a["attempt"] for a in delivery["attempts"]] == [1, 2]
            assert [a["outcome"] for a in delivery["attempts"]] == ["retry", "delivered"]
        assert len(hook.successes()) == 1


async def test_loop_fires_deliver_to_the_loop_callback(tmp_path: Path) -> None:
    """A loop with a callback_url: each fire's run outcome is delivered once."""
    with receiver() as hook:
        async with live_server(tmp_path / "data", sections=hooks()) as live:
            body = {
                "id": "hooked",
                "agent": "default",
                "message": "tick",
                "trigger": {"every": 3600},
                "callback_url": hook.url,
            }
            created = await live.client.post("/v1/loops", json=body)
            assert created.status_code == 201, created.text
            fire = (await live.client.post("/v1/loops/hooked/run")).json()
            delivery = await wait_for(live, "delivered", fire["run_id"])
            assert [r.delivery for r in hook.successes()] == [delivery["id"]]


async def test_refused_targets_write_nothing(tmp_path: Path) -> None:
    """Loopback and private targets are refused unless webhooks.allow_private; so is a
    callback_url without webhooks.secret, a non-http URL and one with credentials."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"secret": SECRET}, "http://127.0.0.1:9/hook"),
        ({"secret": SECRET}, "http://10.0.0.8/hook"),
        ({"secret": SECRET}, "http://[::1]/hook"),
        ({"secret": SECRET, "allow_private": True}, "ftp://127.0.0.1/hook"),
        ({"secret": SECRET, "allow_private": True}, "http://user:pw@127.0.0.1/hook"),
        ({"allow_private": True}, "http://127.0.0.1:9/hook"),
    ]
    for number, (settings, url) in enumerate(cases):
        sections = {"webhooks": settings}
        async with live_server(tmp_path / f"d{number}", sections=sections) as live:
            head = await live.head_seq()
            response = await live.client.post(
                "/v1/agents/default/wake", json={"message": "m", "callback_url": url}
            )
            assert response.status_code == 400, (url, response.text)
            assert response.json()["error"]["param"] == "callback_url"
            assert await live.head_seq() == head


async def test_deliveries_need_admin(tmp_path: Path) -> None:
    """A key without admin cannot list, read or redeliver deliveries."""
    async with live_server(tmp_path / "data", sections=hooks()) as live:
        key = await live.client.post("/v1/keys", json={"name": "r", "scopes": ["read", "wake"]})
        headers = {"Authorization": f"Bearer {key.json()['key']}"}
        async with httpx.AsyncClient(base_url=live.url, headers=headers) as other:
            assert (await other.get("/v1/webhooks/deliveries")).status_code == 403
            assert (
                await other.post(f"/v1/webhooks/deliveries/{'0' * 64}/redeliver")
            ).status_code == 403


async def test_an_agent_default_callback_delivers_its_chat_runs(tmp_path: Path) -> None:
    """An agent created with a callback_url has the outcome of each of its runs delivered, a
    chat completion's too; a wake's own callback_url wins over the agent's."""
    with receiver() as hook, receiver() as other:
        async with live_server(tmp_path / "data", sections=hooks()) as live:
            agent = {"id": "hooked", "callback_url": hook.url}
            created = await live.client.post("/v1/agents", json=agent)
            assert created.status_code == 201, created.text
            assert created.json()["callback_url"] == hook.url
            chat = await live.client.post(
                "/v1/chat/completions",
                json={"model": "hooked", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert chat.status_code == 200, chat.text
            run_id = chat.headers["X-Run-Id"]
            delivery = await wait_for(live, "delivered", run_id)
            assert [r.delivery for r in hook.successes()] == [delivery["id"]]

            response = await live.client.post(
                "/v1/agents/hooked/wake",
                json={"message": "elsewhere", "mode": "async", "callback_url": other.url},
            )
            woken = response.json()["run_id"]
            await wait_for(live, "delivered", woken)
            assert len(other.successes()) == 1 and len(hook.successes()) == 1


async def test_an_agent_callback_is_checked_like_any_other(tmp_path: Path) -> None:
    """A loopback callback_url on an agent is refused without webhooks.allow_private."""
    async with live_server(tmp_path / "data", sections={"webhooks": {"secret": SECRET}}) as live:
        body = {"id": "hooked", "callback_url": "http://127.0.0.1:9/hook"}
        response = await live.client.post("/v1/agents", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == "callback_url"
        patched = await live.client.patch(
            "/v1/agents/default", json={"callback_url": "http://10.1.2.3/hook"}
        )
        assert patched.status_code == 400 and patched.json()["error"]["param"] == "callback_url"
