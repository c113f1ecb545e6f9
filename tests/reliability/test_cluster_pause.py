"""Two real `cuelog serve` nodes on one PostgreSQL log: node a is SIGSTOPped past its lease TTL,
node b takes its session and its run (waiting for approval) over, and once a is SIGCONTinued it
cannot append for them any more (requests it forwards to b go through); the run is approved
through b and finishes once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cuelog.runtime import decode_record
from tests.postgres import fresh_database, run_sql
from tests.support import CUELOG, ServerProcess, start_server

KEY = "cluster-pause-admin-key-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
ONCE = {"X-Cuelog-Forwarded-By": "test"}  # as if forwarded already: answered, not forwarded
TTL = 3.0
CONFIG = """
[agents.ask]
tools = ["calculator"]
approval = "ask"
"""


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as created:
        yield created


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check()` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition never held")


def events_of(url: str, stream: str) -> list[str]:
    rows = run_sql(url, "SELECT record FROM cuelog_events WHERE stream = %s ORDER BY seq", [stream])
    return [decode_record(row[0]).type for row in rows if isinstance(row[0], bytes)]


def node(
    tmp_path: Path, url: str, name: str, ttl: float = TTL, renew: float = 0.25
) -> ServerProcess:
    config = tmp_path / "cuelog.toml"
    config.write_text(CONFIG)
    os.environ["CUELOG_CLUSTER_LEASE_TTL"] = str(ttl)
    os.environ["CUELOG_CLUSTER_RENEW_INTERVAL"] = str(renew)
    try:
        return start_server(
            tmp_path / name,
            *("--log", url, "--node", name, "--api-key", KEY, "--config", str(config)),
        )
    finally:
        del os.environ["CUELOG_CLUSTER_LEASE_TTL"], os.environ["CUELOG_CLUSTER_RENEW_INTERVAL"]


def test_a_paused_node_loses_its_actors_and_cannot_append_for_them(
    tmp_path: Path, url: str
) -> None:
    """SIGSTOP past the lease TTL: the other node takes the session and the waiting run over;
    after SIGCONT the paused node's writes for them are refused (503 owned_elsewhere) and add
    nothing to the log; approving through the new owner finishes the run with one RunStarted;
    the chain verifies."""
    a = node(tmp_path, url, "a")
    b = node(tmp_path, url, "b")
    try:
        with httpx.Client(timeout=10, headers=HEADERS) as http:
            wake = http.post(
                f"{a.url}/v1/agents/ask/wake",
                json={"message": '/tool calculator {"expr": "6*7"}', "session_key": "s"}
                | {"mode": "async"},
            )
            assert wake.status_code == 202, wake.text
            run_id = wake.json()["run_id"]
            wait_until(
                lambda: http.get(f"{a.url}/v1/runs/{run_id}").json()["status"] == "waiting_approval"
            )
            forwarded = http.get(f"{b.url}/v1/sessions/s")
            assert forwarded.status_code == 200, forwarded.text  # b forwards it to a
            assert forwarded.json()["key"] == "s"
            refused = http.get(f"{b.url}/v1/sessions/s", headers=ONCE)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "owned_elsewhere"
            # An SSE stream asked of b is a's, relayed as it comes (the run is still open).
            with http.stream(
                "GET",
                f"{b.url}/v1/runs/{run_id}/events",
                headers={"Accept": "text/event-stream"},
            ) as sse:
                assert sse.status_code == 200
                assert sse.headers["content-type"].startswith("text/event-stream")
                seen = []
                for line in sse.iter_lines():
                    seen.append(line)
                    if line == "event: ApprovalRequested":
                        break
                assert "event: RunStarted" in seen
            health = http.get(f"{a.url}/health").json()
            assert health["node"] == "a" and health["leases"] >= 2

            a.proc.send_signal(signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                approvals = wait_until(
                    lambda: http.get(f"{b.url}/v1/approvals").json()["data"], timeout=TTL + 10
                )
                taken_after = time.monotonic() - paused_at
                assert http.get(f"{b.url}/v1/sessions/s").status_code == 200
                assert http.get(f"{b.url}/v1/runs/{run_id}").json()["status"] == (
                    "waiting_approval"
                )
                session_events = events_of(url, "session:s")
            finally:
                a.proc.send_signal(signal.SIGCONT)
            assert TTL - 0.5 < taken_after < TTL + 3, taken_after

            # a, not forwarding (as for a request already forwarded once), cannot write for s.
            late = http.post(
                f"{a.url}/v1/agents/ask/wake",
                json={"message": "after the pause", "session_key": "s", "mode": "async"},
                headers=ONCE,
            )
            assert late.status_code == 503, late.text
            assert late.json()["error"]["code"] == "owned_elsewhere"
            assert events_of(url, "session:s") == session_events
            # Forwarding, a sends it to b, the owner now.
            queued = http.post(
                f"{a.url}/v1/agents/ask/wake",
                json={"message": "queued behind", "session_key": "s", "mode": "async"},
            )
            assert queued.status_code == 202, queued.text
            assert queued.json()["status"] == "queued"

            [approval] = approvals
            decided = http.post(
                f"{b.url}/v1/approvals/{approval['id']}",
                json={"decision": "approve", "args_digest": approval["args_digest"]},
            )
            assert decided.status_code == 200, decided.text
            done = wait_until(
                lambda: (
                    (r := http.get(f"{b.url}/v1/runs/{run_id}").json())["status"] == "completed"
                    and r
                )
            )
            assert done["content"] == "Tool calculator returned: 42"
            then = queued.json()["run_id"]
            wait_until(
                lambda: http.get(f"{a.url}/v1/runs/{then}").json().get("status") == "completed"
            )
            types = events_of(url, f"run:{run_id}")
            assert types.count("RunStarted") == 1 and "RunFailed" not in types
            assert http.get(f"{b.url}/health").json()["node"] == "b"
            metrics = http.get(f"{a.url}/metrics").text
            assert 'cuelog_leases_held{node="a"}' in metrics
    finally:
        for server in (a, b):
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)
                server.terminate()
    verified = subprocess.run(
        [CUELOG, "verify", url], check=False, capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def test_a_message_fenced_by_a_lost_lease_goes_to_the_new_owner(tmp_path: Path, url: str) -> None:
    """a owns a session; b takes its lease (as after a pause) before a's renewal notices: a wake
    without an Idempotency-Key sent to a is fenced there (nothing of it written), and a sends it
    on to b, which records it once; a wake already forwarded once is answered 503 with
    Retry-After instead. Renewals are slow here, so only the fence can tell a."""
    a = node(tmp_path, url, "a", ttl=30, renew=10)
    b = node(tmp_path, url, "b", ttl=30, renew=10)
    try:
        with httpx.Client(timeout=10, headers=HEADERS) as http:

            def wake(text: str, headers: dict[str, str] | None = None) -> httpx.Response:
                body = {"message": text, "session_key": "moving", "mode": "async"}
                return http.post(f"{a.url}/v1/agents/default/wake", json=body, headers=headers)

            first = wake("first")
            assert first.status_code == 202, first.text
            wait_until(
                lambda: http.get(f"{a.url}/v1/sessions/moving").json()["current_run"] is None
            )
            assert run_sql(url, "SELECT node FROM cuelog_leases WHERE key = 'session:moving'") == [
                ("a",)
            ]
            run_sql(
                url,
                "UPDATE cuelog_leases SET node = 'b', epoch = epoch + 1 "
                "WHERE key = 'session:moving'",
            )
            before = events_of(url, "session:moving")
            moved = wake("second")
            assert moved.status_code == 202, moved.text
            assert metric(http.get(f"{a.url}/metrics").text, "cuelog_leases_fenced_total") >= 1
            after = events_of(url, "session:moving")
            assert after[: len(before)] == before
            assert after.count("MessageAccepted") == 2
            assert run_sql(url, "SELECT node FROM cuelog_leases WHERE key = 'session:moving'") == [
                ("b",)
            ]
            # Not forwarded again: the answer says where to retry.
            refused = wake("third", headers=ONCE)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "owned_elsewhere"
            assert events_of(url, "session:moving").count("MessageAccepted") == 2
    finally:
        for server in (a, b):
            if server.proc.poll() is None:
                server.terminate()
