"""Crash loop around fire time: a real `cuelog serve` with a 1-second loop is SIGKILLed again
and again on the real clock; every slot fires at most once and every fire has exactly one run.

CUELOG_LOOP_KILLS sets the number of kills (8 by default).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.support import CUELOG, start_server

KEY = "loop-crash-admin-key-0123456789"
KILLS = int(os.environ.get("CUELOG_LOOP_KILLS", "8"))
HEADERS = {"Authorization": f"Bearer {KEY}"}


def _events(http: httpx.Client, prefix: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = http.get("/v1/events", params={"after": after, "limit": 1000, "prefix": prefix})
        body = page.json()
        out.extend(body["data"])
        if body["next_cursor"] is None:
            return out
        after = body["next_cursor"]


def test_sigkill_around_fire_time_gives_one_run_per_slot(tmp_path: Path) -> None:
    """After SIGKILLs at random points of a 1-second schedule: no slot has two fires, every fire
    has exactly one accepted message and one started run, no loop run lacks a fire, every run
    ends, and the chain verifies."""
    data = tmp_path / "data"
    server = start_server(data, "--api-key", KEY)
    body = {"id": "beat", "agent": "default", "message": "tick", "trigger": {"every": 1}}
    created = httpx.post(f"{server.url}/v1/loops", json=body, headers=HEADERS, timeout=10)
    assert created.status_code == 201, created.text
    rng = random.Random(2026)
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.7))
            server.kill()
            server = start_server(data, "--api-key", KEY)
        time.sleep(2.5)
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as http:
            assert http.post("/v1/loops/beat/toggle").json()["enabled"] is False
            fires = [e for e in _events(http, "loop:beat") if e["type"] == "LoopFired"]
            assert len(fires) >= KILLS, "the loop fired too little to prove anything"
            slots = Counter(e["data"]["scheduled_at"] for e in fires)
            assert not [s for s, n in slots.items() if n > 1], "a slot fired twice"
            fired = {e["data"]["run_id"] for e in fires}
            assert len(fired) == len(fires)
            deadline = time.monotonic() + 60
            for run_id in fired:
                while True:
                    status = http.get(f"/v1/runs/{run_id}").json().get("status")
                    done = status in {"completed", "failed", "cancelled"}
                    if done or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert done, (run_id, status)
            accepted = Counter(
                e["data"]["run_id"]
                for e in _events(http, "session:loop-beat")
                if e["type"] == "MessageAccepted"
            )
            assert set(accepted) == fired, "a fire has no run, or a run has no fire"
            assert set(accepted.values()) == {1}, "a fire's message was accepted twice"
            started = Counter(
                e["data"]["run_id"]
                for e in _events(http, "run:")
                if e["type"] == "RunStarted" and e["actor"] == "loop:beat"
            )
            assert set(started) == fired
    finally:
        assert server.terminate() == 0
    verify = subprocess.run(
        [CUELOG, "verify", str(data)], capture_output=True, text=True, timeout=120, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
