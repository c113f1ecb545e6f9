"""SIGTERM while wakes are in flight and an SSE stream is open: a clean exit, a final `shutdown`
frame on the stream, every acknowledged wake in the log after a restart, and a restart that
carries on."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.support import CUELOG, start_server

KEY = "shutdown-admin-key-0123456789abcd"
HEADERS = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 4
GRACE = 3.0  # server.graceful_timeout: how long Hypercorn may drain before it cuts connections
TERMINAL = {"completed", "failed", "cancelled"}


class Wakers:
    """Threads waking the default agent (sync and async) until the server goes away."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, str]] = {}  # idempotency key -> (run id, mode)
        self.refused: list[int] = []

    def run(self, client: int) -> None:
        with httpx.Client(base_url=self.url, headers=HEADERS, timeout=30) as http:
            for number in range(100_000):
                key = f"w{client}-{number}"
                mode = "sync" if number % 2 else "async"
                try:
                    response = http.post(
                        "/v1/agents/default/wake",
                        json={"message": f"hello {key}", "mode": mode},
                        headers={"Idempotency-Key": key},
                    )
                except httpx.HTTPError:
                    return  # the server closed the connection: it has stopped
                if response.status_code in {200, 202}:
                    with self.lock:
                        self.acked[key] = (response.json()["run_id"], mode)
                else:
                    self.refused.append(response.status_code)


def read_sse(url: str, frames: list[str], done: threading.Event) -> None:
    """Follow GET /v1/events as SSE and keep every `event:` line until the stream ends."""
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(30, read=60)) as http,
            http.stream(
                "GET", f"{url}/v1/events", headers={**HEADERS, "Accept": "text/event-stream"}
            ) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event:"):
                    frames.append(line.removeprefix("event:").strip())
    finally:
        done.set()


def config(tmp_path: Path) -> str:
    path = tmp_path / "cuelog.toml"
    path.write_text(f"[server]\ngraceful_timeout = {GRACE}\n")
    return str(path)


def test_sigterm_under_load_exits_cleanly_and_the_restart_carries_on(tmp_path: Path) -> None:
    """SIGTERM under wake load exits 0, the open SSE stream ends with `event: shutdown`,
    every acknowledged wake's run is in the log after a restart, and new wakes and verify work."""
    data = tmp_path / "data"
    server = start_server(data, "--api-key", KEY, "--config", config(tmp_path))
    frames: list[str] = []
    stream_ended = threading.Event()
    reader = threading.Thread(target=read_sse, args=(server.url, frames, stream_ended), daemon=True)
    reader.start()
    wakers = Wakers(server.url)
    threads = [threading.Thread(target=wakers.run, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(wakers.acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(wakers.acked) >= 20, "the wakers made no progress"
    assert frames, "the SSE stream delivered nothing before the shutdown"
    started = time.monotonic()
    assert server.terminate(timeout=30) == 0, "".join(server.log_lines)
    stop_seconds = time.monotonic() - started
    assert stream_ended.wait(10), "the SSE stream did not end with the server"
    for thread in threads:
        thread.join(timeout=30)
    assert frames[-1] == "shutdown", frames[-5:]
    assert stop_seconds < GRACE + 5, stop_seconds
    assert set(wakers.refused) <= {503}, wakers.refused
    acked = dict(wakers.acked)

    server = start_server(data, "--api-key", KEY, "--config", config(tmp_path))
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http:
            deadline = time.monotonic() + 30
            for key, (run_id, mode) in acked.items():
                again = http.post(
                    "/v1/agents/default/wake",
                    json={"message": f"hello {key}", "mode": mode},
                    headers={"Idempotency-Key": key},
                )
                assert again.status_code in {200, 202}, again.text
                assert again.json()["run_id"] == run_id  # the same run, not a second one
                while True:
                    run = http.get(f"/v1/runs/{run_id}")
                    assert run.status_code == 200, (run_id, run.text)
                    if run.json()["status"] in TERMINAL or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert run.json()["status"] in TERMINAL, run.json()
            fresh = http.post("/v1/agents/default/wake", json={"message": "after the restart"})
            assert fresh.status_code == 200, fresh.text
            assert fresh.json()["content"] == "Echo: after the restart"
    finally:
        assert server.terminate() == 0
    verify = subprocess.run(
        [CUELOG, "verify", str(data)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sigterm_with_a_busy_keep_alive_client_stops_without_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    """A client that keeps sending wakes on one keep-alive connection does not hold a SIGTERMed
    server for the whole graceful timeout: nothing is in flight, so it stops at once."""
    path = tmp_path / "cuelog.toml"
    path.write_text("[server]\ngraceful_timeout = 6.0\n")
    server = start_server(tmp_path / "data", "--api-key", KEY, "--config", str(path))
    wakers = Wakers(server.url)
    thread = threading.Thread(target=wakers.run, args=(0,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while len(wakers.acked) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert server.terminate(timeout=30) == 0
    stop_seconds = time.monotonic() - started
    thread.join(timeout=30)
    assert stop_seconds < 3.0, f"the server took {stop_seconds:.1f} s to stop"
