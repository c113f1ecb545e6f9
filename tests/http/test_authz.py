"""Who may call what: every route for every kind of caller, ownership, revoked and expired keys."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cuelog.actors import KeyCreated, key_digest
from cuelog.http._auth import PUBLIC, RouteInfo
from cuelog.runtime import open_event_log
from tests.http.operator_support import API_KEY, Served, bearer, serving

AGENT = "authz-agent"
LOOP = "authz-loop"
# Owned resources: a non-admin key that did not make them gets 404, never 403.
OWNED_PARAMS = {"key", "run_id"}
# A request that passes auth and names a missing thing answers this instead of 2xx.
MISSING: dict[tuple[str, str], int] = {
    ("DELETE", "/v1/agents/<agent_id>"): 404,
    ("DELETE", "/v1/keys/<key_id>"): 404,
    ("PATCH", "/v1/keys/<key_id>"): 404,
    ("DELETE", "/v1/loops/<loop_id>"): 404,
    ("GET", "/v1/webhooks/deliveries/<delivery_id>"): 404,
    ("POST", "/v1/webhooks/deliveries/<delivery_id>/redeliver"): 404,
    ("POST", "/v1/approvals/<approval_id>"): 404,
    ("POST", "/v1/audit/anchor"): 409,  # no anchor key configured
    ("DELETE", "/v1/mcp/servers/<server_id>"): 404,
    ("DELETE", "/v1/providers/<provider_id>"): 404,
    ("GET", "/v1/providers/<provider_id>/models"): 502,  # nothing listens at its URL
}
# A disabled MCP server (nothing is started) that the sweep reads, patches and toggles.
MCP_SERVER = {"name": "authz-mcp", "command": "true", "enabled": False}
# A provider whose URL refuses connections (the discard port): verify answers ok=false.
PROVIDER = {"id": "authz-up", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0}
CHAT = {"model": AGENT, "messages": [{"role": "user", "content": "hi"}]}
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/agents"): {"id": "made-by-sweep"},
    ("PATCH", "/v1/agents/<agent_id>"): {"system_prompt": "be brief"},
    ("POST", "/v1/chat/completions"): CHAT,
    ("POST", "/v1/responses"): {"model": AGENT, "input": "hi"},
    ("POST", "/v1/agents/<agent_id>/wake"): {"message": "hi"},
    ("PATCH", "/v1/sessions/<key>"): {"label": "swept"},
    ("POST", "/v1/keys"): {"name": "made-by-sweep", "scopes": ["read"]},
    ("PATCH", "/v1/keys/<key_id>"): {"budgets": []},
    ("POST", "/v1/approvals/<approval_id>"): {"decision": "approve", "args_digest": "0" * 64},
    ("POST", "/v1/tools/invoke"): {"name": "calculator", "args": {"expr": "1+1"}, "dry_run": True},
    ("PATCH", "/v1/mcp/servers/<server_id>"): {"timeout": 30},
    ("PATCH", "/v1/providers/<provider_id>"): {"read_timeout": 30},
    ("POST", "/v1/providers/<provider_id>/verify"): {"model": "m"},
    ("PATCH", "/v1/tools/<name>"): {"enabled": True},
    ("PATCH", "/v1/loops/<loop_id>"): {"message": "swept"},
}


@dataclass
class Caller:
    name: str
    headers: dict[str, str]
    scopes: frozenset[str]  # empty: no valid key
    owner: bool = False  # made the owned resources under test
    static: bool = False


def expected(route: RouteInfo, caller: Caller) -> str:
    """'401', '403', '404' or 'pass' (auth passed: 2xx, or the route's own answer)."""
    if route.scope == PUBLIC:
        return "pass"
    if not caller.scopes:
        return "401"
    admin = "admin" in caller.scopes
    if not admin and not {route.scope, *route.also} & caller.scopes:
        return "403"
    owned = any(f"<{param}>" in route.rule for param in OWNED_PARAMS)
    if owned and not admin and not caller.owner:
        return "404"
    return "pass"


async def _owned_resources(served: Served, owner: httpx.AsyncClient, tag: str) -> dict[str, Any]:
    """A fresh session and finished run made by `owner`, and a seq inside the session."""
    response = await owner.post(
        f"/v1/agents/{AGENT}/wake", json={"message": "hello", "session_key": f"sess-{tag}"}
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    page = (await served.admin.get(f"/v1/sessions/sess-{tag}/events")).json()
    return {"key": f"sess-{tag}", "run_id": run_id, "at_seq": page["data"][-1]["seq"]}


def _url(method: str, rule: str, values: dict[str, Any]) -> str:
    names = {
        "agent_id": "authz-gone" if (method, rule) in MISSING else AGENT,
        "loop_id": "authz-loop-gone" if (method, rule) in MISSING else LOOP,
        "model_id": AGENT,
        "key_id": "key_missing",
        "server_id": "authz-gone" if (method, rule) in MISSING else MCP_SERVER["name"],
        "provider_id": "authz-gone" if method == "DELETE" else PROVIDER["id"],
        "name": "clock",
        "approval_id": "run_missing.1",
        "delivery_id": "0" * 64,
        "key": values.get("key", "sess-none"),
        "run_id": values.get("run_id", "run_none"),
    }
    for name, value in names.items():
        rule = rule.replace(f"<{name}>", str(value))
    return rule


async def test_every_route_for_every_kind_of_caller(tmp_path: Path) -> None:
    """No key and bad keys get 401, missing scopes 403, others' sessions and runs 404, the rest
    pass — for every route in the app's route table."""
    # Hundreds of refusals from one address: the failed-authentication budget is off here.
    async with serving(tmp_path / "data", auth_failure_rate=0) as served:
        await served.create_agent(AGENT)
        assert (await served.admin.post("/v1/mcp/servers", json=MCP_SERVER)).status_code == 201
        assert (await served.admin.post("/v1/providers", json=PROVIDER)).status_code == 201
        loop = {"id": LOOP, "agent": AGENT, "message": "hi", "trigger": {"every": 86400}}
        assert (await served.admin.post("/v1/loops", json=loop)).status_code == 201
        callers = [
            Caller("no key", {}, frozenset()),
            Caller("bad key", bearer("cue_not-a-key-at-all-0000000000"), frozenset()),
            Caller("static admin", bearer(API_KEY), frozenset({"admin"}), static=True),
        ]
        for scope in ("read", "chat", "wake", "approve", "admin"):
            _, secret = await served.new_key(scope, name=f"only-{scope}")
            callers.append(Caller(f"{scope} key", {"X-API-Key": secret}, frozenset({scope})))
        owner_scopes = frozenset({"read", "chat", "wake"})
        _, owner_secret = await served.new_key(*owner_scopes, name="owner")
        _, other_secret = await served.new_key(*owner_scopes, name="other")
        callers.append(Caller("owner", bearer(owner_secret), owner_scopes, owner=True))
        callers.append(Caller("another owner", bearer(other_secret), owner_scopes))

        clients = {
            c.name: httpx.AsyncClient(base_url=served.url, headers=c.headers, timeout=30)
            for c in callers
        }
        owner = clients["owner"]
        shared = await _owned_resources(served, owner, "shared")
        failures: list[str] = []
        checked = 0
        try:
            for index, route in enumerate(served.routes):
                for method in route.methods:
                    for number, caller in enumerate(callers):
                        values = shared
                        if method == "DELETE" and "<key>" in route.rule:  # gone afterwards
                            values = await _owned_resources(served, owner, f"{index}-{number}")
                        body = BODIES.get((method, route.rule))
                        if route.rule.endswith("/fork"):
                            body = {"at_seq": values["at_seq"]}
                        elif (method, route.rule) == ("POST", "/v1/agents"):
                            body = {"id": f"made-by-sweep-{index}-{number}"}
                        elif (method, route.rule) == ("POST", "/v1/mcp/servers"):
                            body = {**MCP_SERVER, "name": f"sweep-{index}-{number}"}
                        elif (method, route.rule) == ("POST", "/v1/providers"):
                            body = {**PROVIDER, "id": f"sweep-{index}-{number}"}
                        elif (method, route.rule) == ("POST", "/v1/loops"):
                            body = {**loop, "id": f"sweep-{index}-{number}"}
                        url = _url(method, route.rule, values)
                        response = await clients[caller.name].request(method, url, json=body)
                        checked += 1
                        want = expected(route, caller)
                        got = response.status_code
                        if want == "pass":
                            missing = MISSING.get((method, route.rule))
                            ok = got == missing if missing else 200 <= got < 300
                        else:
                            ok = str(got) == want
                        if not ok:
                            failures.append(
                                f"{method} {route.rule} as {caller.name}: "
                                f"want {want}, got {got} {response.text[:120]}"
                            )
                        if route.rule == "/v1/emergency-stop" and got == 200:
                            await served.admin.post("/v1/emergency-stop/release")
        finally:
            for client in clients.values():
                await client.aclose()
        assert not failures, "\n".join(failures)
        assert checked >= len(served.routes) * len(callers)


async def test_another_key_sees_only_its_own_sessions_and_runs(tmp_path: Path) -> None:
    """Lists show a non-admin key only what it made; the admin key sees everyone's."""
    async with serving(tmp_path / "data") as served:
        await served.create_agent(AGENT)
        _, mine = await served.new_key("read", "wake", name="mine")
        _, theirs = await served.new_key("read", "wake", name="theirs")
        for secret, key in ((mine, "sess-mine"), (theirs, "sess-theirs")):
            response = await served.admin.post(
                f"/v1/agents/{AGENT}/wake",
                json={"message": "hi", "session_key": key},
                headers=bearer(secret),
            )
            assert response.status_code == 200, response.text

        async def listed(secret: str) -> set[str]:
            page = await served.admin.get("/v1/sessions", headers=bearer(secret))
            assert page.status_code == 200, page.text
            return {s["key"] for s in page.json()["data"]}

        assert await listed(mine) == {"sess-mine"}
        assert await listed(theirs) == {"sess-theirs"}
        assert {"sess-mine", "sess-theirs"} <= await listed(API_KEY)


async def test_revoked_key_is_refused_on_its_next_request(tmp_path: Path) -> None:
    """DELETE /v1/keys/{id} takes effect at once: the very next request with the key is 401."""
    async with serving(tmp_path / "data") as served:
        key_id, secret = await served.new_key("read")
        assert (await served.admin.get("/v1/agents", headers=bearer(secret))).status_code == 200
        revoked = await served.admin.delete(f"/v1/keys/{key_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        refused = await served.admin.get("/v1/agents", headers=bearer(secret))
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        listed = (await served.admin.get("/v1/keys")).json()["data"]
        assert all("key" not in k and secret not in str(k) for k in listed)


async def test_expired_key_is_refused(tmp_path: Path) -> None:
    """A key whose expires_at has passed gets 401, while a key still valid gets through."""
    data_dir = tmp_path / "data"
    past = int(time.time()) - 60
    async with open_event_log(data_dir) as log:
        for key_id, secret, expires_at in (
            ("key_expired", "cue_expired-secret-0123456789abcdef", past),
            ("key_valid", "cue_valid-secret-0123456789abcdef", past + 3600),
        ):
            event = KeyCreated(
                key_id=key_id,
                name=key_id,
                scopes=["read"],
                digest=key_digest(secret),
                expires_at=expires_at,
            )
            await log.append("keys", [event])
    async with serving(data_dir) as served:
        expired = await served.admin.get(
            "/v1/agents", headers=bearer("cue_expired-secret-0123456789abcdef")
        )
        valid = await served.admin.get(
            "/v1/agents", headers=bearer("cue_valid-secret-0123456789abcdef")
        )
        assert expired.status_code == 401
        assert valid.status_code == 200
