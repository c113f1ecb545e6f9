"""A real `cuelog serve` with its read models kept by a projector process: the runs list and
usage answer fresh through it, `/metrics` says who keeps them, and a SIGKILLed server takes its
projector with it (no orphan holding the data dir), with nothing lost or counted twice when the
next server starts."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import exited, start_server

API_KEY = "projector-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hello projector"}]}


def metric(client: httpx.Client, name: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_server_with_a_projector_answers_fresh_and_a_sigkill_takes_both_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUELOG_LOG_PROJECTOR", "process")
    data = tmp_path / "data"
    server = start_server(data, "--api-key", API_KEY)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            wait_for(lambda: metric(client, "cuelog_projector_process") == 1.0)
            [projector] = children(server.proc.pid)
            tokens = 0
            for n in range(10):
                answer = client.post("/v1/chat/completions", json=CHAT)
                assert answer.status_code == 200, answer.text
                tokens += answer.json()["usage"]["total_tokens"]
                # Listed at once: the read waits for the projector, which is told to hurry.
                listed = client.get("/v1/runs", params={"limit": 100}).json()["data"]
                assert len(listed) == n + 1
            summary = client.get("/v1/usage/summary").json()
            assert (summary["runs"], summary["total_tokens"]) == (10, tokens)
            assert metric(client, "cuelog_projector_starts_total") == 1.0
            cpu = metric(client, "cuelog_projection_cpu_seconds_total")
            assert cpu is not None and cpu > 0
    finally:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=15)
    # The projector reads the end of its input and exits by itself, syncing its store.
    wait_for(lambda: exited(projector), timeout=10)
    assert not (data / "projections" / "unsynced").exists()

    monkeypatch.setenv("CUELOG_LOG_PROJECTOR", "inline")
    again = start_server(data, "--api-key", API_KEY)
    try:
        with httpx.Client(base_url=again.url, headers=AUTH, timeout=30) as client:
            summary = client.get("/v1/usage/summary").json()
            assert (summary["runs"], summary["total_tokens"]) == (10, tokens)
            assert len(client.get("/v1/runs", params={"limit": 100}).json()["data"]) == 10
            assert metric(client, "cuelog_projector_process") is None  # inline: no projector
            assert children(again.proc.pid) == []
    finally:
        assert again.terminate() == 0
    assert os.path.exists(data / "projections" / "data.mdb")
