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


def start_node(tmp_path: Path, url: str, name: str) -> ServerProcess:
    env = {
        "CUELOG_CLUSTER_LEASE_TTL": str(TTL),
        "CUELOG_CLUSTER_RENEW_INTERVAL": str(RENEW),
        "CUELOG_WEBHOOKS_SECRET": "cluster-services-webhook-secret",
        "CUELOG_WEBHOOKS_ALLOW_PRIVATE": "true",
        "CUELOG_WEBHOOKS_TIMEOUT": "60",
    }
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
