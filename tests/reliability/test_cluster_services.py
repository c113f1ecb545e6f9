"""Process-wide services on a cluster: two real `cuelog serve` nodes on one PostgreSQL log and a
local webhook receiver. The outbox's sender runs on one node only, so each delivery arrives once
while both live; SIGKILL that node with an attempt in flight and the other takes the outbox over,
sends the cut-off attempt again with the same delivery id, and delivers later runs' outcomes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.webhook_receiver import Received, verify
from tests.http.webhook_receiver import Receiver as SignedReceiver
from tests.http.webhook_receiver import receiver as signed_receiver
from tests.postgres import fresh_database, run_sql
from tests.support import ServerProcess, start_server

KEY = "cluster-services-admin-key-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TTL = 2.0
RENEW = 0.3


class Receiver:
    """Records each POST's `Cuelog-Delivery` id and run id; while `hold` is set, requests wait
    (an attempt in flight) until it is cleared."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, str]] = []  # (delivery id, run id)
        self.hold = threading.Event()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.arrivals.append(
                        (self.headers["Cuelog-Delivery"], body["data"]["run_id"])
                    )
                if receiver.hold.is_set():
                    receiver.released.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def by_run(self) -> dict[str, Counter[str]]:
        """Run id -> how many times each of its delivery ids arrived."""
        out: dict[str, Counter[str]] = {}
        with self.lock:
            for delivery, run in self.arrivals:
                out.setdefault(run, Counter())[delivery] += 1
        return out

    def wait_for(self, runs: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not set(runs) <= set(self.by_run()):
            assert time.monotonic() < deadline, f"not delivered: {set(runs) - set(self.by_run())}"
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.released.set()
        hook.server.shutdown()
        hook.server.server_close()


def start_node(
    tmp_path: Path, url: str, name: str, secret: str | None = "cluster-services-webhook-secret"
) -> ServerProcess:
    env = {
        "CUELOG_CLUSTER_LEASE_TTL": str(TTL),
        "CUELOG_CLUSTER_RENEW_INTERVAL": str(RENEW),
        "CUELOG_WEBHOOKS_ALLOW_PRIVATE": "true",
        "CUELOG_WEBHOOKS_TIMEOUT": "60",
    }
    if secret is not None:
        env["CUELOG_WEBHOOKS_SECRET"] = secret
    os.environ.update(env)
    try:
        return start_server(tmp_path / name, "--log", url, "--node", name, "--api-key", KEY)
    finally:
        for key in env:
            del os.environ[key]


def services(node: ServerProcess) -> list[str]:
    health = httpx.get(f"{node.url}/health", headers=HEADERS, timeout=5).json()
    return list(health["services"])


def wake(node: ServerProcess, session: str, callback: str) -> str:
    response = httpx.post(
        f"{node.url}/v1/agents/default/wake",
        json={"message": "hi", "session_key": session, "mode": "async", "callback_url": callback},
        headers=HEADERS,
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def test_the_outbox_sends_from_one_node_and_moves_when_it_dies(
    tmp_path: Path, receiver: Receiver
) -> None:
    with fresh_database() as url:
        nodes: list[ServerProcess] = []
        try:
            nodes.append(a := start_node(tmp_path, url, "a"))
            nodes.append(b := start_node(tmp_path, url, "b"))
            # a started first and took every service; b stands by.
            assert services(a) == ["loops", "webhooks"]
            assert services(b) == []
            metrics = httpx.get(f"{a.url}/metrics", headers=HEADERS, timeout=5).text
            assert 'cuelog_service_owner{node="a",service="webhooks"} 1.0' in metrics

            # Both live: each outcome is delivered once, whichever node took the wake.
            first = [wake(node, f"s{i}", receiver.url) for i, node in enumerate([a, b] * 3)]
            receiver.wait_for(first, 20)
            time.sleep(2 * RENEW + 0.5)  # time for a second sender, were there one
            delivered = receiver.by_run()
            for run in first:
                assert list(delivered[run].values()) == [1], delivered[run]
            rows = run_sql(url, "SELECT key, node FROM cuelog_leases WHERE key LIKE 'service:%'")
            assert sorted(rows) == [("service:loops", "a"), ("service:webhooks", "a")]

            # An attempt in flight at a's death is sent again by b, with the same delivery id.
            receiver.hold.set()
            held = wake(b, "held", receiver.url)
            receiver.wait_for([held], 20)
            [held_delivery] = receiver.by_run()[held]
            killed_at = time.monotonic()
            a.kill()
            deadline = killed_at + TTL + RENEW + 10
            while services(b) != ["loops", "webhooks"]:
                assert time.monotonic() < deadline, "b did not take the services over"
                time.sleep(0.05)
            takeover = time.monotonic() - killed_at
            receiver.hold.clear()
            receiver.released.set()
            deadline = time.monotonic() + 20
            while receiver.by_run()[held][held_delivery] < 2:
                assert time.monotonic() < deadline, "the cut-off attempt was not sent again"
                time.sleep(0.05)
            assert list(receiver.by_run()[held]) == [held_delivery]

            # Later runs' outcomes go out from b, once each.
            later = [wake(b, f"t{i}", receiver.url) for i in range(3)]
            receiver.wait_for(later, 20)
            time.sleep(2 * RENEW + 0.5)
            delivered = receiver.by_run()
            for run in later:
                assert list(delivered[run].values()) == [1], delivered[run]
            for run in first:
                assert sum(delivered[run].values()) == 1, delivered[run]
            print(f"\nservices moved to b {takeover:.2f} s after a was killed (TTL {TTL} s)")
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.kill()


CALC = '/tool calculator {"expr": "6*7"}'


def wait_status(node: ServerProcess, run_ids: list[str], status: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for run_id in run_ids:
        while True:
            got = httpx.get(f"{node.url}/v1/runs/{run_id}", headers=HEADERS, timeout=10)
            if got.status_code == 200 and got.json()["status"] == status:
                break
            assert time.monotonic() < deadline, f"{run_id}: {got.status_code} {got.text}"
            time.sleep(0.05)


def wake_status(node: ServerProcess) -> int:
    response = httpx.post(
        f"{node.url}/v1/agents/default/wake",
        json={"message": "hi", "mode": "async"},
        headers=HEADERS,
        timeout=10,
    )
    return response.status_code


def test_an_emergency_stop_on_one_node_stops_and_holds_runs_on_every_node(
    tmp_path: Path,
) -> None:
    """Runs waiting for approval on both nodes; a held stop sent to a cancels a's runs at once
    and b's as b follows the log, and both refuse new runs; a release sent to b lets both
    take runs again."""
    with fresh_database() as url:
        nodes: list[ServerProcess] = []
        try:
            nodes.append(a := start_node(tmp_path, url, "a"))
            nodes.append(b := start_node(tmp_path, url, "b"))
            created = httpx.post(
                f"{a.url}/v1/agents",
                json={"id": "careful", "tools": ["calculator"], "approval": "ask"},
                headers=HEADERS,
            )
            assert created.status_code == 201, created.text
            runs = {node.url: [] for node in nodes}  # type: dict[str, list[str]]
            for i in range(4):
                node = nodes[i % 2]
                response = httpx.post(
                    f"{node.url}/v1/agents/careful/wake",
                    json={"message": CALC, "mode": "async", "session_key": f"s{i}"},
                    headers=HEADERS,
                    timeout=10,
                )
                assert response.status_code == 202, response.text
                runs[node.url].append(response.json()["run_id"])
            for node in nodes:
                wait_status(node, runs[node.url], "waiting_approval", 20)

            stopped = httpx.post(
                f"{a.url}/v1/emergency-stop", json={"hold": True}, headers=HEADERS, timeout=10
            )
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["cancelled_runs"] == 2 and stopped.json()["stopped"] is True
            started = time.monotonic()
            wait_status(b, runs[b.url] + runs[a.url], "cancelled", 10)
            print(f"\nb's runs cancelled {time.monotonic() - started:.2f} s after a's stop")
            assert wake_status(a) == 503
            assert wake_status(b) == 503
            health = httpx.get(f"{b.url}/health", headers=HEADERS, timeout=5).json()
            assert health["emergency_stop"] is True

            released = httpx.post(f"{b.url}/v1/emergency-stop/release", headers=HEADERS)
            assert released.status_code == 200, released.text
            assert wake_status(b) == 202
            deadline = time.monotonic() + 10
            while (status := wake_status(a)) == 503:
                assert time.monotonic() < deadline, "a still holds new runs"
                time.sleep(0.05)
            assert status == 202
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.kill()


def test_a_run_queued_through_one_node_is_found_from_the_other(tmp_path: Path) -> None:
    """A run queued behind one waiting for approval, in a session a owns: b answers
    `GET /v1/runs/{id}` for it as queued (through the catalog and the session's owner), and
    once the first run is cancelled through b it starts and completes, seen from b too."""
    with fresh_database() as url:
        nodes: list[ServerProcess] = []
        try:
            nodes.append(a := start_node(tmp_path, url, "a"))
            nodes.append(b := start_node(tmp_path, url, "b"))
            created = httpx.post(
                f"{a.url}/v1/agents",
                json={"id": "careful", "tools": ["calculator"], "approval": "ask"},
                headers=HEADERS,
            )
            assert created.status_code == 201, created.text
            ids = []
            for message in (CALC, "after"):
                response = httpx.post(
                    f"{a.url}/v1/agents/careful/wake",
                    json={"message": message, "mode": "async", "session_key": "one"},
                    headers=HEADERS,
                    timeout=10,
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["run_id"])
            first, queued = ids
            wait_status(a, [first], "waiting_approval", 20)
            wait_status(a, [queued], "queued", 5)
            wait_status(b, [queued], "queued", 10)
            missing = httpx.get(f"{b.url}/v1/runs/run_nosuchrun000", headers=HEADERS)
            assert missing.status_code == 404

            cancelled = httpx.post(f"{b.url}/v1/runs/{first}/cancel", headers=HEADERS, timeout=10)
            assert cancelled.status_code == 200, cancelled.text
            wait_status(b, [first], "cancelled", 10)
            wait_status(b, [queued], "completed", 20)
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.kill()


AGENT_SECRET = "agent-secret-set-through-b-0123"
ROTATED_SECRET = "agent-secret-rotated-through-a-4567"


def delivered(hook: SignedReceiver, run_id: str, timeout: float = 20) -> Received:
    deadline = time.monotonic() + timeout
    while True:
        got = [r for r in hook.received if run_id.encode() in r.body]
        if got:
            return got[0]
        assert time.monotonic() < deadline, f"{run_id} was not delivered"
        time.sleep(0.05)


def test_a_webhook_secret_set_through_one_node_signs_deliveries_from_another(
    tmp_path: Path,
) -> None:
    """No server secret: an agent's secret set through b (whose data key goes to the table
    beside the log) signs the deliveries a sends; rotated through a, the old key is destroyed
    and, once a is killed, b sends signed with the new secret. No data key stays in a key file
    and the secrets are in no event."""
    with fresh_database() as url:
        nodes: list[ServerProcess] = []
        try:
            nodes.append(a := start_node(tmp_path, url, "a", secret=None))
            nodes.append(b := start_node(tmp_path, url, "b", secret=None))
            assert services(a) == ["loops", "webhooks"]
            created = httpx.post(
                f"{b.url}/v1/agents",
                json={"id": "signed", "webhook_secret": AGENT_SECRET},
                headers=HEADERS,
                timeout=10,
            )
            assert created.status_code == 201, created.text
            assert run_sql(url, "SELECT count(*) FROM cuelog_data_keys") == [(1,)]

            def signed_wake(node: ServerProcess, hook_url: str) -> str:
                # Through the node that did not set the secret: a, just after b set it.
                response = httpx.post(
                    f"{node.url}/v1/agents/signed/wake",
                    json={"message": "hi", "mode": "async", "callback_url": hook_url},
                    headers=HEADERS,
                    timeout=10,
                )
                assert response.status_code == 202, response.text
                return str(response.json()["run_id"])

            with signed_receiver(secret=AGENT_SECRET) as hook:
                got = delivered(hook, signed_wake(a, hook.url))
                assert got.signed and got.answered == 200
                assert got.headers["Cuelog-Signer"] == "agent:signed"

            patched = httpx.patch(
                f"{a.url}/v1/agents/signed",
                json={"webhook_secret": ROTATED_SECRET},
                headers=HEADERS,
                timeout=10,
            )
            assert patched.status_code == 200, patched.text
            assert patched.json()["has_webhook_secret"] is True
            assert run_sql(url, "SELECT count(*) FROM cuelog_data_keys") == [(1,)]
            a.kill()
            deadline = time.monotonic() + TTL + RENEW + 10
            while services(b) != ["loops", "webhooks"]:
                assert time.monotonic() < deadline, "b did not take the services over"
                time.sleep(0.05)
            with signed_receiver(secret=ROTATED_SECRET) as hook:
                got = delivered(hook, signed_wake(b, hook.url))
                assert got.signed and got.answered == 200
                assert not verify(AGENT_SECRET, got.headers, got.body)
            for name in ("a", "b"):
                key_file = tmp_path / name / "provider-keys.json"
                assert not key_file.exists() or json.loads(key_file.read_text()) == {}
            events = run_sql(url, "SELECT record FROM cuelog_events")
            for (record,) in events:
                assert isinstance(record, bytes)
                assert AGENT_SECRET.encode() not in record
                assert ROTATED_SECRET.encode() not in record
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.kill()


def until_found(node: ServerProcess, path: str, timeout: float = 10) -> dict[str, Any]:
    """GET `path` on `node` until it is there (another node recorded it a moment ago)."""
    deadline = time.monotonic() + timeout
    while True:
        got = httpx.get(f"{node.url}{path}", headers=HEADERS, timeout=10)
        if got.status_code == 200:
            return dict(got.json())
        assert got.status_code == 404 and time.monotonic() < deadline, got.text
        time.sleep(0.05)


def test_provider_and_mcp_secrets_set_through_one_node_open_on_another(tmp_path: Path) -> None:
    """A provider and an MCP server added through a, their secrets sealed under data keys in
    the table beside the log, are usable on b (their secrets open there); replaced through b,
    a takes the change up and the replaced keys are destroyed; deleted through a, b drops
    them and the table holds no key."""
    provider = {"id": "up", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-cluster-0123"}
    mcp = {
        "name": "remote",
        "url": "http://127.0.0.1:9/mcp",
        "headers": {"Authorization": "Bearer mcp-cluster-secret"},
        "enabled": False,
    }
    with fresh_database() as url:
        nodes: list[ServerProcess] = []
        try:
            nodes.append(a := start_node(tmp_path, url, "a"))
            nodes.append(b := start_node(tmp_path, url, "b"))
            for path, body in (("/v1/providers", provider), ("/v1/mcp/servers", mcp)):
                created = httpx.post(f"{a.url}{path}", json=body, headers=HEADERS, timeout=10)
                assert created.status_code == 201, created.text
            assert run_sql(url, "SELECT count(*) FROM cuelog_data_keys") == [(2,)]
            # At once through b: b looks in the log for a provider or server it does not know.
            agent = {"id": "uses-up", "provider": "up", "model": "m", "tools": ["remote.*"]}
            made = httpx.post(f"{b.url}/v1/agents", json=agent, headers=HEADERS, timeout=10)
            assert made.status_code == 201, made.text
            seen = until_found(b, "/v1/providers/up")
            assert seen["status"] == "ready" and seen["has_api_key"], seen
            server = until_found(b, "/v1/mcp/servers/remote")
            assert server["status"] == "disabled", server

            patched = httpx.patch(
                f"{b.url}/v1/providers/up",
                json={"default_model": "changed-through-b"},
                headers=HEADERS,
                timeout=10,
            )
            assert patched.status_code == 200, patched.text
            deadline = time.monotonic() + 10
            while until_found(a, "/v1/providers/up").get("default_model") != "changed-through-b":
                assert time.monotonic() < deadline, "a did not take b's change up"
                time.sleep(0.05)
            assert until_found(a, "/v1/providers/up")["status"] == "ready"
            assert run_sql(url, "SELECT count(*) FROM cuelog_data_keys") == [(2,)]

            for path in ("/v1/providers/up", "/v1/mcp/servers/remote"):
                gone = httpx.delete(f"{a.url}{path}", headers=HEADERS, timeout=10)
                assert gone.status_code in (200, 204), gone.text
                deadline = time.monotonic() + 10
                while httpx.get(f"{b.url}{path}", headers=HEADERS, timeout=10).status_code != 404:
                    assert time.monotonic() < deadline, f"b still has {path}"
                    time.sleep(0.05)
            assert run_sql(url, "SELECT count(*) FROM cuelog_data_keys") == [(0,)]
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.kill()
