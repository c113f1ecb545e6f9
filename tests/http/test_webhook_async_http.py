"""Chat completions and Responses taken asynchronously (`Prefer: respond-async`) with their
outcome delivered to an `X-Callback-Url`, against a real server and a real local receiver; and
deliveries signed with the most specific secret (agent, then API key, then server), whose
plaintext never shows in an answer, the log or its export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.http.live import live_server, on_every_backend
from tests.http.test_providers import export_text
from tests.http.test_webhooks_http import hooks, wait_for
from tests.http.webhook_receiver import SECRET, Received, receiver, verify

AGENT_SECRET = "agent-secret-0123456789-abcdef"
KEY_SECRET = "key-secret-9876543210-fedcba"
CHAT = {"model": "default", "messages": [{"role": "user", "content": "later"}]}


@on_every_backend
async def test_prefer_respond_async_answers_202_and_delivers_the_outcome(
    tmp_path: Path, backend: str
) -> None:
    """`Prefer: respond-async` makes a chat completion answer 202 with the run id, session key
    and events URL and `Preference-Applied`; `X-Callback-Url` has the run's outcome delivered
    once, signed, with the content the run recorded."""
    with receiver() as hook:
        async with live_server(tmp_path / "data", backend=backend, sections=hooks()) as live:
            headers = {"Prefer": "wait=5, respond-async", "X-Callback-Url": hook.url}
            response = await live.client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 202, response.text
            assert response.headers["Preference-Applied"] == "respond-async"
            accepted = response.json()
            run_id = accepted["run_id"]
            assert accepted["events_url"] == f"/v1/runs/{run_id}/events"
            assert accepted["session_key"] == response.headers["X-Session-Key"]
            assert accepted["status"] in {"queued", "running", "completed"}
            delivery = await wait_for(live, "delivered", run_id)
            [got] = hook.successes()
            assert got.signed and got.delivery == delivery["id"]
            body = json.loads(got.body)
            assert body["data"]["content"] == "Echo: later"
            assert body["data"]["session_key"] == accepted["session_key"]

            # Without the preference the answer is the completion, and the callback still fires.
            plain = await live.client.post(
                "/v1/chat/completions", json=CHAT, headers={"X-Callback-Url": hook.url}
            )
            assert plain.status_code == 200 and "Preference-Applied" not in plain.headers
            assert plain.json()["choices"][0]["message"]["content"] == "Echo: later"
            await wait_for(live, "delivered", plain.headers["X-Run-Id"])
            assert len(hook.successes()) == 2


async def test_responses_background_delivers_to_the_callback_header(tmp_path: Path) -> None:
    """A background Response with `X-Callback-Url` has its outcome delivered there."""
    with receiver() as hook:
        async with live_server(tmp_path / "data", sections=hooks()) as live:
            response = await live.client.post(
                "/v1/responses",
                json={"model": "default", "input": "in the background", "background": True},
                headers={"X-Callback-Url": hook.url},
            )
            assert response.status_code == 200, response.text
            run_id = response.headers["X-Run-Id"]
            await wait_for(live, "delivered", run_id)
            [got] = hook.successes()
            assert json.loads(got.body)["data"]["content"] == "Echo: in the background"


async def test_a_refused_callback_header_writes_nothing(tmp_path: Path) -> None:
    """A callback the address policy refuses is a 400 before the run exists, async or not."""
    sections = {"webhooks": {"secret": SECRET}}
    async with live_server(tmp_path / "data", sections=sections) as live:
        head = await live.head_seq()
        for prefer in ("respond-async", None):
            headers = {"X-Callback-Url": "http://127.0.0.1:9/hook"}
            if prefer:
                headers["Prefer"] = prefer
            response = await live.client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == "callback_url"
        assert await live.head_seq() == head


def signer_of(got: Received) -> str:
    return got.headers["Cuelog-Signer"]


async def test_deliveries_are_signed_with_the_most_specific_secret(tmp_path: Path) -> None:
    """An agent's secret signs its runs' deliveries, else the API key's, else the server's;
    each verifies with that secret only, and `Cuelog-Signer` names it. The secrets are in no
    answer, nor in the log's export; removing the agent's makes the key's sign again."""
    data = tmp_path / "data"
    secrets_ = (SECRET, AGENT_SECRET, KEY_SECRET)
    with receiver(secret=AGENT_SECRET) as hook:
        async with live_server(data, sections=hooks()) as live:
            answers: list[str] = []
            key = await live.client.post(
                "/v1/keys",
                json={
                    "name": "k",
                    "scopes": ["chat", "wake", "read"],
                    "webhook_secret": KEY_SECRET,
                },
            )
            assert key.status_code == 201, key.text
            assert key.json()["has_webhook_secret"] is True
            key_id = key.json()["id"]
            agent = await live.client.post(
                "/v1/agents", json={"id": "signed", "webhook_secret": AGENT_SECRET}
            )
            assert agent.status_code == 201, agent.text
            assert agent.json()["has_webhook_secret"] is True
            answers += [key.text, agent.text]

            headers = {"Authorization": f"Bearer {key.json()['key']}"}
            async with httpx.AsyncClient(base_url=live.url, headers=headers) as keyed:

                async def wake(client: httpx.AsyncClient, agent_id: str) -> Received:
                    response = await client.post(
                        f"/v1/agents/{agent_id}/wake",
                        json={"message": "m", "mode": "async", "callback_url": hook.url},
                    )
                    assert response.status_code == 202, response.text
                    run_id = response.json()["run_id"]
                    with trio.fail_after(30):
                        while True:
                            got = [r for r in hook.received if run_id in r.body.decode()]
                            if got:
                                return got[0]
                            await trio.sleep(0.05)

                by_agent = await wake(keyed, "signed")
                by_key = await wake(keyed, "default")
                by_server = await wake(live.client, "default")
            expected = [
                (by_agent, "agent:signed", AGENT_SECRET),
                (by_key, f"key:{key_id}", KEY_SECRET),
                (by_server, "server", SECRET),
            ]
            for got, signer, secret in expected:
                assert signer_of(got) == signer
                for other in secrets_:
                    assert verify(other, got.headers, got.body) == (other == secret), signer

            for path in ("/v1/agents/signed", "/v1/agents", "/v1/keys", "/v1/events?limit=1000"):
                answers.append((await live.client.get(path)).text)
            patched = await live.client.patch("/v1/agents/signed", json={"webhook_secret": ""})
            assert patched.status_code == 200 and patched.json()["has_webhook_secret"] is False
            answers.append(patched.text)
            again = await live.client.patch("/v1/agents/signed", json={"webhook_secret": "short"})
            assert again.status_code == 400 and again.json()["error"]["param"] == "webhook_secret"
            async with httpx.AsyncClient(base_url=live.url, headers=headers) as keyed:
                after = await wake(keyed, "signed")
            assert signer_of(after) == f"key:{key_id}"
            assert verify(KEY_SECRET, after.headers, after.body)
        for text in answers:
            assert AGENT_SECRET not in text and KEY_SECRET not in text
        exported = await export_text(data)
        assert AGENT_SECRET not in exported and KEY_SECRET not in exported
        assert "WebhookSecretSet" in exported


async def test_an_agent_secret_alone_lets_its_runs_take_callbacks(tmp_path: Path) -> None:
    """Without webhooks.secret, a callback is refused for an agent without a secret and taken
    for one with a secret (set at create, survives a restart), signed with it."""
    data = tmp_path / "data"
    sections: dict[str, dict[str, Any]] = {"webhooks": {"allow_private": True}}
    with receiver(secret=AGENT_SECRET) as hook:
        async with live_server(data, sections=sections) as live:
            agent = await live.client.post(
                "/v1/agents", json={"id": "signed", "webhook_secret": AGENT_SECRET}
            )
            assert agent.status_code == 201, agent.text
            refused = await live.client.post(
                "/v1/agents/default/wake", json={"message": "m", "callback_url": hook.url}
            )
            assert refused.status_code == 400, refused.text
        async with live_server(data, sections=sections) as live:
            response = await live.client.post(
                "/v1/chat/completions",
                json={**CHAT, "model": "signed"},
                headers={"Prefer": "respond-async", "X-Callback-Url": hook.url},
            )
            assert response.status_code == 202, response.text
            await wait_for(live, "delivered", response.json()["run_id"])
            [got] = hook.successes()
            assert got.signed and signer_of(got) == "agent:signed"
