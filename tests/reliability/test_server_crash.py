"""Crash loop under load: a real `cuelog serve` is SIGKILLed again and again while clients wake
agents with Idempotency-Keys and retry what was not acknowledged.

CUELOG_SERVER_KILLS sets the number of kills (20 by default; `make soak` runs 1,000).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support import CUELOG, start_server

KEY = "crash-loop-admin-key-0123456789"
KILLS = int(os.environ.get("CUELOG_SERVER_KILLS", "20"))
CLIENTS = 4
HEADERS = {"Authorization": f"Bearer {KEY}"}


class Clients:
    """Threads that wake the default agent with unique Idempotency-Keys and retry until acked."""

    def __init__(self) -> None:
        self.url = ""
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}  # idempotency key -> run id
        self.stop = threading.Event()
        self.retries = 0

    def run(self, client: int) -> None:
        number = 0
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                key = f"c{client}-{number}"
                body = {"message": f"hello {key}", "mode": "async"}
                while not self.stop.is_set():
                    url = self.url
                    try:
                        response = http.post(
                            f"{url}/v1/agents/default/wake",
                            json=body,
                            headers={**HEADERS, "Idempotency-Key": key},
                        )
                    except httpx.HTTPError:
                        self.retries += 1
                        time.sleep(0.02)
                        continue
                    assert response.status_code == 202, response.text
                    with self.lock:
                        self.acked[key] = response.json()["run_id"]
                    break
                number += 1


def test_acknowledged_wakes_survive_sigkill_exactly_once(tmp_path: Path) -> None:
    """After many SIGKILLs under load every acknowledged wake has exactly one run, retries of
    acknowledged keys return the same run, the chain verifies and no run is left open."""
    data = tmp_path / "data"
    clients = Clients()
    server = start_server(data, "--api-key", KEY)
    clients.url = server.url
    threads = [threading.Thread(target=clients.run, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    rng = random.Random(1234)
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 0.4))
            server.kill()
            server = start_server(data, "--api-key", KEY)
            clients.url = server.url
        time.sleep(0.3)
    finally:
        clients.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    try:
        acked = dict(clients.acked)
        assert len(acked) >= KILLS, "the clients made too little progress to prove anything"
        assert clients.retries > 0, "no request was ever cut off by a kill"
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as http:
            # A retry of an acknowledged request attaches to the same run.
            sample = rng.sample(sorted(acked), min(20, len(acked)))
            for key in sample:
                again = http.post(
                    "/v1/agents/default/wake",
                    json={"message": f"hello {key}", "mode": "async"},
                    headers={"Idempotency-Key": key},
                )
                assert again.json()["run_id"] == acked[key]
            # Every run ends (interrupted ones are closed as failed on recovery).
            deadline = time.monotonic() + 30
            for run_id in acked.values():
                while True:
                    status = http.get(f"/v1/runs/{run_id}").json().get("status")
                    if (
                        status in {"completed", "failed", "cancelled"}
                        or time.monotonic() > deadline
                    ):
                        break
                    time.sleep(0.05)
                assert status in {"completed", "failed", "cancelled"}, (run_id, status)
            accepted = _accepted_run_ids(http)
        counts = Counter(accepted)
        assert not [r for r, n in counts.items() if n > 1], "a run was accepted twice"
        assert set(acked.values()) <= set(counts), "an acknowledged run is missing"
    finally:
        assert server.terminate() == 0
    verify = subprocess.run(
        [CUELOG, "verify", str(data)], capture_output=True, text=True, timeout=120, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _accepted_run_ids(http: httpx.Client) -> list[str]:
    out: list[str] = []
    cursor = 0
    while True:
        page = http.get(
            "/v1/audit/events", params={"type": "MessageAccepted", "cursor": cursor, "limit": 1000}
        ).json()
        out.extend(event["data"]["run_id"] for event in page["data"])
        if page["next_cursor"] is None:
            return out
        cursor = page["next_cursor"]
